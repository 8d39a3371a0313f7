"""Start and stop a real SGLang server (0.5.23, its CPU engine, a tiny local model) for
integration tests.

Importable from the project's own test virtualenv: it needs only the standard library and
``requests``. The server runs in a separate, cached virtualenv built by ``ensure_venv.sh``,
with ``sglshim`` (a plain-torch stand-in for SGLang's CPU kernel package, which no registry
ships) on its ``PYTHONPATH``. It serves the tiny Llama of the vLLM test, built once with
that virtualenv's libraries.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tests.support.server_process import OnServerProcess, ServerProcess, built_venv
from tests.vllm_real.server import OFFLINE_ENV, ensure_model

HERE = Path(__file__).resolve().parent
ENSURE_VENV = HERE / "ensure_venv.sh"
SHIM = HERE / "sglshim"

POLL_PERIOD_S = 0.25
STOP_GRACE_S = 30.0
"""Seen: the launcher and its scheduler and detokenizer gone 7 s after SIGTERM."""
LOG_TAIL_LINES = 60


def ensure_venv() -> Path:
    """Build (once) the SGLang virtualenv and return its path."""
    return built_venv(ENSURE_VENV)


class SGLangServer(OnServerProcess):
    """``sglang.launch_server`` on 127.0.0.1 with ``--enable-metrics``, the CPU engine and
    the tiny model served as ``model_name``.

    ``max_running`` requests run at once and ``max_total_tokens`` is the KV pool's size: more
    requests than either allows wait in SGLang's queue. Use as a context manager, which
    starts it on entry and stops it on exit, or call ``start()`` and ``stop()``.
    """

    exit_code_checked = False
    """Seen: on SIGTERM the scheduler and detokenizer exit, the launcher takes that for a
    child's failure and kills its own process tree, itself included (code -9)."""

    def __init__(self, workdir: Path, port: int, *, model_name: str = "tiny-llama",
                 max_running: int = 4, max_total_tokens: int = 4096,
                 venv: Path | None = None, model_dir: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.model_name = model_name
        self.max_running = max_running
        self.max_total_tokens = max_total_tokens
        self.venv = venv
        self.model_dir = model_dir
        self.log_path = self.workdir / f"sglang-{port}.log"
        # ZeroMQ ipc:// socket paths may not exceed 107 bytes: a pytest tmp_path is too deep.
        self._tmpdir = Path(tempfile.mkdtemp(prefix="ine-sglang-"))
        # SIGTERM to the whole group: the scheduler and detokenizer follow the launcher.
        self._process = ServerProcess("SGLang", self.log_path, f"{self.url}/health",
                                      poll_period_s=POLL_PERIOD_S, stop_grace_s=STOP_GRACE_S,
                                      log_tail_lines=LOG_TAIL_LINES, term_group=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def command(self) -> list[str]:
        if self.venv is None or self.model_dir is None:
            raise RuntimeError("venv and model_dir must be known before building the command")
        return [str(self.venv / "bin" / "python"), "-m", "sglang.launch_server",
                "--model-path", str(self.model_dir), "--served-model-name", self.model_name,
                "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
                # The CPU default (intel_amx) needs SGLang's real CPU kernels.
                "--attention-backend", "torch_native", "--sampling-backend", "pytorch",
                "--grammar-backend", "none", "--dtype", "bfloat16", "--context-length", "256",
                "--max-running-requests", str(self.max_running),
                "--max-total-tokens", str(self.max_total_tokens),
                "--cuda-graph-backend-decode", "disabled",
                "--cuda-graph-backend-prefill", "disabled",
                "--skip-server-warmup", "--enable-metrics", "--log-level", "info"]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **OFFLINE_ENV,
                "SGLANG_USE_CPU_ENGINE": "1", "OMP_NUM_THREADS": "1",
                "HF_HOME": str(self.workdir / "hf-home"), "TMPDIR": str(self._tmpdir),
                "PYTHONPATH": str(SHIM), "PYTHONUNBUFFERED": "1"}

    def start(self, timeout: float = 180.0) -> None:
        """Launch the server and wait until ``/health`` answers 200 (20 to 50 s seen)."""
        if self._process.running:
            raise RuntimeError("server already started")
        if self.venv is None:
            self.venv = ensure_venv()
        if self.model_dir is None:
            self.model_dir = ensure_model(self.venv, flavour="sglang")
        (self.workdir / "hf-home").mkdir(parents=True, exist_ok=True)
        self._process.start(self.command(), cwd=self.workdir, env=self.environment(),
                            timeout=timeout)

    def cleanup(self) -> None:
        shutil.rmtree(self._tmpdir, ignore_errors=True)
