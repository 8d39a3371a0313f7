"""Benchmark payloads built from a recorded real vLLM exposition."""

from __future__ import annotations

import http.server
import re
import socketserver
import sys
import threading
from pathlib import Path

FIXTURE = Path(__file__).parents[1] / "fixtures" / "vllm" / "v0.32.0-cpu-after-load.txt"
LABEL_SETS = (("tiny-llama", "0"), ("tiny-llama", "1"), ("llama-3-70b", "0"),
              ("llama-3-70b", "1"))


def four_engine_exposition() -> str:
    """The real capture with every vLLM series repeated for 4 (model, engine) label sets."""
    out: list[str] = []
    family: list[str] = []

    def flush() -> None:
        samples = [line for line in family if not line.startswith("#")]
        meta = [line for line in family if line.startswith("#")]
        out.extend(meta)
        if samples and samples[0].startswith("vllm:") and 'model_name="tiny-llama"' in samples[0]:
            for model, engine in LABEL_SETS:
                for line in samples:
                    line = line.replace('model_name="tiny-llama"', f'model_name="{model}"')
                    out.append(re.sub(r'engine="0"', f'engine="{engine}"', line))
        else:
            out.extend(samples)
        family.clear()

    for line in FIXTURE.read_text().splitlines():
        if line.startswith("# HELP") and family:
            flush()
        family.append(line)
    flush()
    return "\n".join(out) + "\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve(count: int) -> None:
    """Serve the 4-engine payload on ``count`` ports; print them; run until killed."""
    _Handler.body = four_engine_exposition().encode()
    ports = []
    for _ in range(count):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports.append(server.server_address[1])
    print(" ".join(map(str, ports)), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
