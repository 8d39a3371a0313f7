"""A stand-in engine process, for the discovery and golden tests: serves a file as
``/metrics`` (and a model list, and more files at paths of their own) on ``--port`` (0: any
free one), then prints ``listening PORT``; its other arguments are there to look like an
engine's command line (``llama-server``, ``sglang.launch_server``...).

    python tests/support/fake_engine.py llama-server --port 0 --body FILE [--model NAME]
        [--route /info=FILE ...]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--body", type=Path, required=True)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--route", action="append", default=[], metavar="PATH=FILE")
    args, _ = p.parse_known_args()
    models = json.dumps({"object": "list", "data": [{"id": args.model}]}).encode()
    routes = {"/metrics": args.body.read_bytes(), "/v1/models": models}
    for route in args.route:
        path, _, file = route.partition("=")
        routes[path] = Path(file).read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
