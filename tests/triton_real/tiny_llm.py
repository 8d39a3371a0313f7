"""``tiny_llm``: a decoupled (streaming) Triton Python-backend model standing in for an LLM.

Run by Triton's Python backend stub (never imported by the tests): each request streams
``max_tokens`` (default 8) one-word responses ``tok<i>``, 10 ms apart, then the final flag;
a negative ``max_tokens`` is answered with an error response. ``tests/triton_real/server.py``
copies it into the model repository as ``tiny_llm/1/model.py``.

The stub runs on the system's libpython and does not see the test's virtualenv, and it
imports ``triton_python_backend_utils`` (which imports numpy) after this module: the
virtualenv's site-packages goes on ``sys.path`` first thing. It is found from the stub's own
executable, a link into that virtualenv (``site-packages/pytriton/tritonserver/
python_backend_stubs/3.X/triton_python_backend_stub``).
"""

import os
import sys
import time
from pathlib import Path

SITE_PACKAGES = str(Path(os.path.realpath("/proc/self/exe")).parents[4])
if SITE_PACKAGES not in sys.path:
    sys.path.insert(0, SITE_PACKAGES)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

TOKEN_GAP_S = 0.01
DEFAULT_TOKENS = 8


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            given = pb_utils.get_input_tensor_by_name(request, "max_tokens")
            n = DEFAULT_TOKENS if given is None else int(given.as_numpy().reshape(-1)[0])
            if n < 0:
                error = pb_utils.TritonError(f"max_tokens must not be negative, not {n}")
                sender.send(pb_utils.InferenceResponse(error=error),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            for i in range(n):
                time.sleep(TOKEN_GAP_S)  # the model's "decode step"
                word = np.array([f"tok{i}".encode()], dtype=np.object_)
                sender.send(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("text_output", word)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        # A decoupled model answers through its response senders only.
        return None
