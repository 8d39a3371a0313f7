"""Start and drive a real vLLM server (CPU build) for integration tests.

Importable from the project's own test virtualenv: it needs only the standard library
and ``requests``. vLLM itself runs in a separate, cached virtualenv built by
``ensure_venv.sh``; the tiny model it serves is built by ``make_model.py`` with that
virtualenv's python and cached next to it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.support.server_process import OnServerProcess, ServerProcess, built_venv, cache_root

HERE = Path(__file__).resolve().parent
ENSURE_VENV = HERE / "ensure_venv.sh"
MAKE_MODEL = HERE / "make_model.py"

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

POLL_PERIOD_S = 0.25
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 60


def ensure_vllm_venv() -> Path:
    """Build (once) the vLLM CPU virtualenv and return its path."""
    return built_venv(ENSURE_VENV)


def _make_model_hash() -> str:
    return hashlib.sha256(MAKE_MODEL.read_bytes()).hexdigest()[:16]


def ensure_model(venv: Path, flavour: str = "") -> Path:
    """Build (once) the tiny model with ``make_model.py`` and ``venv``'s python and return
    its folder.

    The folder's name carries a hash of ``make_model.py``, so editing the script yields
    a fresh model, and ``flavour`` (another engine's venv, with other library versions,
    builds its own). The build goes to a temporary folder that is renamed into place, so
    a crashed or concurrent build never leaves a half-written model behind.
    """
    root = cache_root()
    target = root / "-".join(filter(None, ("tiny-llama", flavour, _make_model_hash())))
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        env = dict(os.environ)
        env.update(OFFLINE_ENV)
        subprocess.run(
            [str(venv / "bin" / "python"), str(MAKE_MODEL), str(tmp)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if not (tmp / "config.json").is_file():
            raise RuntimeError(f"{MAKE_MODEL} wrote no config.json into {tmp}")
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process won the race; its model is identical.
            if not (target / "config.json").is_file():
                raise
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{MAKE_MODEL} failed ({exc.returncode}):\n{exc.stderr}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class VllmServer(OnServerProcess):
    """A vLLM OpenAI-compatible server on the CPU, serving the tiny model; its exit code on
    SIGTERM is not checked.

    Use as a context manager (``with VllmServer(tmp_path, free_port()) as srv:``), which
    starts it on entry and stops it on exit, or call ``start()`` and ``stop()``.
    """

    exit_code_checked = False

    def __init__(
        self,
        workdir: Path,
        port: int,
        model_name: str = "tiny-llama",
        extra_args: Sequence[str] = (),
        *,
        venv: Path | None = None,
        model_dir: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.model_name = model_name
        self.extra_args = list(extra_args)
        self.venv = venv
        self.model_dir = model_dir
        self.log_path = self.workdir / "vllm.log"
        self._tmpdir = Path(tempfile.mkdtemp(prefix="ine-vllm-"))
        # SIGTERM to the whole group: the engine worker must follow the API server.
        self._process = ServerProcess("vLLM", self.log_path, f"{self.url}/health",
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
        return [
            str(self.venv / "bin" / "python"),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.model_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            "256",
            "--max-num-seqs",
            "16",
            "--dtype",
            "bfloat16",
            "--enforce-eager",
            *self.extra_args,
        ]

    def env_overrides(self) -> dict[str, str]:
        """The variables set for the server on top of the caller's environment."""
        return {
            **OFFLINE_ENV,
            **{
                "VLLM_TARGET_DEVICE": "cpu",
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "VLLM_CACHE_ROOT": str(self.workdir / "vllm-cache"),
                "HF_HOME": str(self.workdir / "hf-home"),
                # vLLM puts ZeroMQ ipc:// sockets under TMPDIR, and a socket path may not
                # exceed 107 bytes: a pytest tmp_path is too deep, so use a short folder.
                "TMPDIR": str(self._tmpdir),
                "PYTHONUNBUFFERED": "1",
            },
        }

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env_overrides()}

    def start(self, timeout: float = 240) -> None:
        """Launch the server and wait until ``/health`` answers 200."""
        if self._process.running:
            raise RuntimeError("server already started")
        if self.venv is None:
            self.venv = ensure_vllm_venv()
        if self.model_dir is None:
            self.model_dir = ensure_model(self.venv)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("vllm-cache", "hf-home"):
            (self.workdir / sub).mkdir(exist_ok=True)
        try:
            self._process.start(self.command(), cwd=self.workdir, env=self.environment(),
                                timeout=timeout)
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise

    def cleanup(self) -> None:
        shutil.rmtree(self._tmpdir, ignore_errors=True)


def complete(
    base_url: str,
    model: str,
    prompt: str,
    max_tokens: int = 16,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """POST /v1/completions; ``ignore_eos`` makes it generate exactly ``max_tokens``."""
    resp = requests.post(
        f"{base_url.rstrip('/')}/v1/completions",
        json={
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        },
        timeout=timeout,
    )
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def run_load(
    base_url: str,
    model: str,
    n_requests: int,
    max_tokens: int,
    concurrency: int,
    timeout: float = 600.0,
) -> list[dict[str, Any]]:
    """Send ``n_requests`` completions, ``concurrency`` at a time; raise if any fails.

    A reply whose usage does not show exactly ``max_tokens`` completion tokens counts as
    a failure, since tests rely on the token counters being predictable.
    """

    def one(i: int) -> dict[str, Any]:
        body = complete(
            base_url,
            model,
            f"Request {i}: the quick brown fox jumps over the lazy dog.",
            max_tokens=max_tokens,
            timeout=timeout,
        )
        usage = body.get("usage") or {}
        got = usage.get("completion_tokens")
        if got != max_tokens:
            raise RuntimeError(f"request {i}: {got} completion tokens, expected {max_tokens}")
        return body

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(one, i) for i in range(n_requests)]
        # result() re-raises the first failure; the pool waits for the rest on exit.
        return [f.result() for f in futures]
