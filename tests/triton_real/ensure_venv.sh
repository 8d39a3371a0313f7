#!/usr/bin/env bash
# Build (once) the virtualenv holding nvidia-pytriton, whose wheel bundles a real tritonserver
# (2.51.0) and its Python backend, for the real Triton integration test, and print its path.
# The venv lives in a cache keyed on the pinned version, so later runs (and CI on the same
# machine) reuse it.
set -euo pipefail
PYTRITON_VERSION=0.7.0
TRITONSERVER_VERSION=2.51.0
# shellcheck source-path=SCRIPTDIR source=../support/cached_venv.sh
. "$(dirname "$0")/../support/cached_venv.sh"
cached_venv "pytriton-${PYTRITON_VERSION}"
"$venv/bin/pip" install -q --disable-pip-version-check "nvidia-pytriton==${PYTRITON_VERSION}" >&2
"$venv/bin/python" - "$PYTRITON_VERSION" "$TRITONSERVER_VERSION" >&2 <<'PY'
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy  # noqa: F401  (the model imports it from this venv)
import pytriton

assert version("nvidia-pytriton") == sys.argv[1], version("nvidia-pytriton")
root = Path(pytriton.__file__).parent / "tritonserver"
minor = f"{sys.version_info.major}.{sys.version_info.minor}"
for part in ("bin/tritonserver", "backends/python/libtriton_python.so",
             "backends/python/triton_python_backend_utils.py",
             f"python_backend_stubs/{minor}/triton_python_backend_stub"):
    assert (root / part).is_file(), root / part
out = subprocess.run([str(root / "bin/tritonserver"), "--help"], capture_output=True, text=True)
assert "--metrics-port" in out.stdout + out.stderr, out.stderr[-2000:]
PY
venv_complete
