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


class LivePayload:
    """The 4-engine payload as a busy engine serves it: each request sees counters grown.

    Every counter, bucket, sum and count of the vLLM families grows by about 1% of its
    recorded value per request (buckets stay cumulative), and the queue gauges move, so the
    daemon parses new numbers and derives non-zero window deltas at every poll, as it would
    from an engine under load. ``_created`` stamps and the rest stay as recorded.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.growing: list[tuple[int, float, bool]] = []  # (index in parts, base, integral)
        self.moving: list[tuple[int, float]] = []  # (index in parts, scale)
        for line in four_engine_exposition().splitlines():
            name, _, value = line.rpartition(" ")
            if line.startswith("#") or not line.startswith("vllm:"):
                self.parts.append(line + "\n")
                continue
            metric = name.split("{", 1)[0]
            self.parts.append(name + " ")
            if metric.endswith(("_total", "_bucket", "_count", "_sum")):
                base = float(value)
                self.growing.append((len(self.parts), base, base == int(base)))
            elif metric.startswith("vllm:num_requests"):
                self.moving.append((len(self.parts), 1.0))
            elif metric.startswith("vllm:kv_cache_usage"):
                self.moving.append((len(self.parts), 0.1))
            self.parts.append(value + "\n")
        self.requests = 0
        self.lock = threading.Lock()

    def next(self) -> bytes:
        with self.lock:
            self.requests += 1
            k = self.requests
            parts = self.parts
            for i, base, integral in self.growing:
                grown = base * (1 + 0.01 * k)
                parts[i] = f"{round(grown):.1f}\n" if integral else f"{grown!r}\n"
            for j, (i, scale) in enumerate(self.moving):
                parts[i] = f"{(k + j) % 7 * scale!r}\n"
            return "".join(parts).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    payload: LivePayload

    def do_GET(self) -> None:
        body = self.payload.next()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve(count: int) -> None:
    """Serve the live 4-engine payload on ``count`` ports; print them; run until killed."""
    ports = []
    for _ in range(count):
        handler = type("Handler", (_Handler,), {"payload": LivePayload()})
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports.append(server.server_address[1])
    print(" ".join(map(str, ports)), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
