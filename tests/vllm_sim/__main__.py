"""Command line: serve a scenario until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .dialects import DIALECTS
from .scenario import load_scenario
from .server import SimServer


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve, and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.vllm_sim", description=__doc__)
    parser.add_argument("--scenario", required=True, help="scenario JSON file")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--dialect", default=None, choices=sorted(DIALECTS),
                        help="another engine's exposition and API (default: vLLM's)")
    parser.add_argument("--first-token-delay", type=float, default=0.0,
                        help="seconds from a streaming request to its first token")
    parser.add_argument("--token-delay", type=float, default=0.0,
                        help="seconds between a stream's later tokens")
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with SimServer(scenario, host=args.host, port=args.port, dialect=args.dialect,
                   first_token_delay=args.first_token_delay,
                   token_delay=args.token_delay) as server:
        print(f"listening on {server.port}", flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
