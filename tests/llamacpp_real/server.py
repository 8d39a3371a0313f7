"""Start and stop a real llama.cpp server (xllamacpp, tiny local GGUF) for integration tests.

Importable from the project's own test virtualenv: it needs only the standard library and
``requests``. The server runs in a separate, cached virtualenv built by ``ensure_venv.sh``;
the model it serves is written by ``make_model.py`` with that virtualenv's python and
cached next to it; ``xllamacpp_serve.py`` is the program it runs (its file name says
``xllamacpp``, one of the words by which the daemon tells a llama.cpp process).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from tests.support.server_process import OnServerProcess, ServerProcess, built_venv, cache_root

HERE = Path(__file__).resolve().parent
ENSURE_VENV = HERE / "ensure_venv.sh"
MAKE_MODEL = HERE / "make_model.py"
SERVE = HERE / "xllamacpp_serve.py"

POLL_PERIOD_S = 0.05
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 40


def ensure_venv() -> Path:
    """Build (once) the xllamacpp virtualenv and return its path."""
    return built_venv(ENSURE_VENV)


def ensure_model(venv: Path) -> Path:
    """Write (once) the tiny GGUF with ``make_model.py`` and return its path.

    The file's name carries a hash of ``make_model.py``, so editing the script yields a
    fresh model. It is written to a temporary name and renamed into place, so a crashed
    or concurrent build never leaves a half-written model behind.
    """
    root = cache_root()
    digest = hashlib.sha256(MAKE_MODEL.read_bytes()).hexdigest()[:16]
    target = root / f"tiny-llama-{digest}.gguf"
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=root)
    os.close(fd)
    tmp = Path(name)
    try:
        proc = subprocess.run([str(venv / "bin" / "python"), str(MAKE_MODEL), str(tmp)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or tmp.stat().st_size == 0:
            raise RuntimeError(f"{MAKE_MODEL} failed ({proc.returncode}):\n{proc.stderr}")
        tmp.chmod(0o644)  # mkstemp's 0600 would keep the cache to this user
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


class LlamaCppServer(OnServerProcess):
    """llama.cpp's HTTP server on 127.0.0.1, serving the tiny model, ``/metrics`` on.

    Use as a context manager (``with LlamaCppServer(tmp_path, free_port()) as srv:``),
    which starts it on entry and stops it on exit, or call ``start()`` and ``stop()``.
    ``alias`` is the model's name in ``/v1/models`` (without one, the model file's path).
    """

    def __init__(self, workdir: Path, port: int, *, alias: str = "", n_parallel: int = 4,
                 n_ctx: int = 2048, venv: Path | None = None, model: Path | None = None
                 ) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.alias = alias
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx
        self.venv = venv
        self.model = model
        self.log_path = self.workdir / f"llamacpp-{port}.log"
        self._process = ServerProcess("llama.cpp", self.log_path, f"{self.url}/health",
                                      poll_period_s=POLL_PERIOD_S, stop_grace_s=STOP_GRACE_S,
                                      log_tail_lines=LOG_TAIL_LINES)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def command(self) -> list[str]:
        if self.venv is None or self.model is None:
            raise RuntimeError("venv and model must be known before building the command")
        return [str(self.venv / "bin" / "python"), str(SERVE), "--model", str(self.model),
                "--port", str(self.port), "--alias", self.alias,
                "--n-parallel", str(self.n_parallel), "--n-ctx", str(self.n_ctx),
                "--threads", "1", "--threads-http", "2"]

    def start(self, timeout: float = 60.0) -> None:
        """Launch the server and wait until ``/health`` answers 200."""
        if self._process.running:
            raise RuntimeError("server already started")
        if self.venv is None:
            self.venv = ensure_venv()
        if self.model is None:
            self.model = ensure_model(self.venv)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process.start(self.command(), cwd=self.workdir,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=timeout)
