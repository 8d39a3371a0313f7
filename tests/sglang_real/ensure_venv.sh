#!/usr/bin/env bash
# Build (once) the virtualenv holding SGLang for its CPU engine, for the real-SGLang
# integration test, and print its path. The venv lives in a cache keyed on the pinned
# versions, so later runs (and CI on the same machine) reuse it.
#
# sglang is installed without its dependencies: they pull CUDA-only packages (flashinfer,
# flash-attn, sglang-kernel, deep-gemm ...) that the CPU engine never imports. The list
# below is what its HTTP server, scheduler and detokenizer import at startup. torch and
# torchvision are the pair pip takes from this machine's disk (a CUDA build that runs on
# the CPU); PyPI's torchvision fails beside the CPU-only torch wheel.
set -euo pipefail
SGLANG_VERSION=0.5.23
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
# shellcheck source-path=SCRIPTDIR source=../support/cached_venv.sh
. "$(dirname "$0")/../support/cached_venv.sh"
cached_venv "sglang-${SGLANG_VERSION}-torch-${TORCH_VERSION}"
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >&2
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps "sglang==${SGLANG_VERSION}" >&2
"$venv/bin/pip" install -q --disable-pip-version-check \
  "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
  aiohttp anthropic blobfile==3.0.0 build compressed-tensors==0.18.0 distro easydict einops \
  fastapi gguf interegular llguidance mistral_common msgspec ninja numpy nvidia-ml-py \
  openai==2.8.0 openai-harmony==0.0.4 orjson packaging partial_json_parser pillow \
  prometheus-client psutil py-spy pybase64 pydantic "python-dateutil<3" python-multipart \
  pyzmq regex requests scipy sentencepiece==0.2.1 setproctitle smg-grpc-servicer tiktoken \
  tokenizers==0.23.2 tqdm transformers==5.19.0 uvicorn uvloop watchfiles xgrammar==0.2.7 \
  xxhash zstandard apache-tvm-ffi==0.1.11 ipython dill soundfile==0.13.1 >&2
"$venv/bin/python" - "$SGLANG_VERSION" "$TORCH_VERSION" >&2 <<'PY'
import sys
from importlib.metadata import version

import sglang  # noqa: F401
import torch  # noqa: F401
import torchvision.transforms  # noqa: F401

for name, want in (("sglang", sys.argv[1]), ("torch", sys.argv[2])):
    got = version(name).split("+")[0]
    assert got == want, (name, got, want)
PY
venv_complete
