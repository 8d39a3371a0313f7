#!/usr/bin/env bash
# Build (once) the virtualenv holding xllamacpp, llama.cpp's own HTTP server embedded in a
# Python module, for the real llama.cpp integration test, and print its path. The venv lives
# in a cache keyed on the pinned version, so later runs (and CI on the same machine) reuse it.
set -euo pipefail
XLLAMACPP_VERSION=2026.10.11549
GGUF_VERSION=0.19.0
NUMPY_VERSION=2.4.6
# shellcheck source-path=SCRIPTDIR source=../support/cached_venv.sh
. "$(dirname "$0")/../support/cached_venv.sh"
cached_venv "xllamacpp-${XLLAMACPP_VERSION}"
"$venv/bin/pip" install -q --disable-pip-version-check \
  "xllamacpp==${XLLAMACPP_VERSION}" "gguf==${GGUF_VERSION}" "numpy==${NUMPY_VERSION}" >&2
"$venv/bin/python" - "$XLLAMACPP_VERSION" "$GGUF_VERSION" >&2 <<'PY'
import sys
from importlib.metadata import version

import gguf  # noqa: F401
import numpy  # noqa: F401
import xllamacpp  # noqa: F401

for name, want in (("xllamacpp", sys.argv[1]), ("gguf", sys.argv[2])):
    assert version(name) == want, (name, version(name), want)
PY
venv_complete
