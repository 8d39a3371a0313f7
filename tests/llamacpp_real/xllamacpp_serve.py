"""Serve a GGUF model with llama.cpp's own HTTP server, embedded in the xllamacpp module.

Run with the python of the xllamacpp virtualenv:

    <venv>/bin/python tests/llamacpp_real/xllamacpp_serve.py --model M.gguf --port N

It listens on 127.0.0.1 only, with ``/metrics`` and ``/slots`` on, and runs until SIGTERM
or SIGINT; then it lets the server's main loop finish and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from types import FrameType

import xllamacpp as xlc


def arguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the GGUF file")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--alias", default="", help="the model's name in /v1/models")
    p.add_argument("--n-parallel", type=int, default=4, help="slots: requests run at once")
    p.add_argument("--n-ctx", type=int, default=2048, help="context, in tokens, over all slots")
    p.add_argument("--threads", type=int, default=1, help="threads to decode and to batch")
    p.add_argument("--threads-http", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = arguments(argv)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        print(f"signal {signum}: stopping", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    p = xlc.CommonParams()
    p.model.path = args.model
    if args.alias:
        # A set of names in llama.cpp: a bare string would be taken as a set of characters.
        p.model_alias = {args.alias}
    p.hostnames = ["127.0.0.1"]
    p.port = args.port
    p.endpoint_metrics = True
    p.endpoint_slots = True
    p.n_parallel = args.n_parallel
    p.n_ctx = args.n_ctx
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.n_threads_http = args.threads_http
    p.warmup = False

    started = time.monotonic()
    server = xlc.Server(p)  # returns once listening; serves while the object lives
    print(f"listening on 127.0.0.1:{args.port} after {time.monotonic() - started:.3f} s",
          file=sys.stderr, flush=True)
    stop.wait()
    started = time.monotonic()
    del server  # waits for the server's main loop to end
    print(f"stopped after {time.monotonic() - started:.3f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
