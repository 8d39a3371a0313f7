#!/usr/bin/env bash
# Build (once) the virtualenv holding nvidia-pytriton, whose wheel bundles a real tritonserver
# (2.51.0) and its Python backend, for the real Triton integration test, and print its path.
# The venv lives in a cache keyed on the pinned version, so later runs (and CI on the same
# machine) reuse it.
set -euo pipefail
PYTRITON_VERSION=0.7.0
TRITONSERVER_VERSION=2.51.0
cache_root="${INE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-node-exporter}"
venv="$cache_root/pytriton-${PYTRITON_VERSION}"
marker="$venv/.complete"
if [ -x "$venv/bin/python" ] && [ -f "$marker" ]; then
  echo "$venv"
  exit 0
fi
mkdir -p "$cache_root"
# One build at a time; a build that waited for another finds its venv complete.
exec 9>"$cache_root/.pytriton-${PYTRITON_VERSION}.lock"
flock 9
if [ -x "$venv/bin/python" ] && [ -f "$marker" ]; then
  echo "$venv"
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
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
# Written last: a venv without it is rebuilt.
touch "$marker"
echo "$venv"
