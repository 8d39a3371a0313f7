"""Benchmark payloads built from a recorded real vLLM exposition."""

from __future__ import annotations

import http.server
import re
import socketserver
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs

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
        # Per part: its family, and the sample's name (None for HELP and TYPE lines).
        self.owners: list[tuple[str, str | None]] = []
        self._selections: dict[frozenset[str], list[int]] = {}
        family = ""
        for line in four_engine_exposition().splitlines():
            name, _, value = line.rpartition(" ")
            if line.startswith("#"):
                family = line.split(" ")[2]
                self.parts.append(line + "\n")
                self.owners.append((family, None))
                continue
            metric = name.split("{", 1)[0]
            if not line.startswith("vllm:"):
                self.parts.append(line + "\n")
                self.owners.append((family, metric))
                continue
            self.parts.append(name + " ")
            self.owners += [(family, metric)] * 2
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

    def _selection(self, names: frozenset[str]) -> list[int]:
        """The parts prometheus_client writes for ``name[]`` = ``names``: those samples, and
        the HELP and TYPE lines of the families they belong to."""
        chosen = self._selections.get(names)
        if chosen is None:
            families = {f for f, sample in self.owners if sample in names}
            chosen = self._selections[names] = [
                i for i, (f, sample) in enumerate(self.owners)
                if sample in names or (sample is None and f in families)]
        return chosen

    def next(self, names: frozenset[str] | None = None) -> bytes:
        """The next answer: the whole exposition, or only the samples ``names``."""
        with self.lock:
            self.requests += 1
            k = self.requests
            parts = self.parts
            for i, base, integral in self.growing:
                grown = base * (1 + 0.01 * k)
                parts[i] = f"{round(grown):.1f}\n" if integral else f"{grown!r}\n"
            for j, (i, scale) in enumerate(self.moving):
                parts[i] = f"{(k + j) % 7 * scale!r}\n"
            if names is not None:
                parts = [parts[i] for i in self._selection(names)]
            return "".join(parts).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # headers, then body: neither waits for an ACK
    protocol_version = "HTTP/1.1"
    payload: LivePayload
    filtering: bool

    def do_GET(self) -> None:
        # As vLLM serves it: /metrics ignores parameters; the app under /metrics/ filters.
        path, _, query = self.path.partition("?")
        if path == "/metrics":
            body = self.payload.next()
        elif path == "/metrics/" and self.filtering:
            body = self.payload.next(frozenset(parse_qs(query).get("name[]", [])))
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve(count: int, filtering: bool = True) -> None:
    """Serve the live 4-engine payload on ``count`` ports; print them; run until killed.

    With ``filtering``, ``/metrics/`` answers ``name[]`` as vLLM's does; without, it is not
    found, as on an endpoint that cannot filter."""
    ports = []
    for _ in range(count):
        handler = type("Handler", (_Handler,), {"payload": LivePayload(),
                                                "filtering": filtering})
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports.append(server.server_address[1])
    print(" ".join(map(str, ports)), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 4, "--no-filter" not in sys.argv)
