#!/usr/bin/env bash
# Build (once) the virtualenv holding xllamacpp, llama.cpp's own HTTP server embedded in a
# Python module, for the real llama.cpp integration test, and print its path. The venv lives
# in a cache keyed on the pinned version, so later runs (and CI on the same machine) reuse it.
set -euo pipefail
XLLAMACPP_VERSION=2026.10.11549
GGUF_VERSION=0.19.0
NUMPY_VERSION=2.4.6
cache_root="${INE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-node-exporter}"
venv="$cache_root/xllamacpp-${XLLAMACPP_VERSION}"
marker="$venv/.complete"
if [ -x "$venv/bin/python" ] && [ -f "$marker" ]; then
  echo "$venv"
  exit 0
fi
mkdir -p "$cache_root"
# One build at a time; a build that waited for another finds its venv complete.
exec 9>"$cache_root/.xllamacpp-${XLLAMACPP_VERSION}.lock"
flock 9
if [ -x "$venv/bin/python" ] && [ -f "$marker" ]; then
  echo "$venv"
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
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
# Written last: a venv without it is rebuilt.
touch "$marker"
echo "$venv"
