"""Start and stop a real llama.cpp server (xllamacpp, tiny local GGUF) for integration tests.

Importable from the project's own test virtualenv: it needs only the standard library and
``requests``. The server runs in a separate, cached virtualenv built by ``ensure_venv.sh``;
the model it serves is written by ``make_model.py`` with that virtualenv's python and
cached next to it; ``xllamacpp_serve.py`` is the program it runs (its file name says
``xllamacpp``, one of the words by which the daemon tells a llama.cpp process).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import requests

HERE = Path(__file__).resolve().parent
ENSURE_VENV = HERE / "ensure_venv.sh"
MAKE_MODEL = HERE / "make_model.py"
SERVE = HERE / "xllamacpp_serve.py"

POLL_PERIOD_S = 0.05
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 40


def cache_root() -> Path:
    """The cache folder shared with ``ensure_venv.sh``."""
    explicit = os.environ.get("INE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "inference-node-exporter"


def ensure_venv() -> Path:
    """Build (once) the xllamacpp virtualenv and return its path."""
    proc = subprocess.run(["bash", str(ENSURE_VENV)], check=True, stdout=subprocess.PIPE,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{ENSURE_VENV} printed no path")
    venv = Path(lines[-1].strip())
    if not (venv / "bin" / "python").exists():
        raise RuntimeError(f"{ENSURE_VENV} printed {venv}, which holds no bin/python")
    return venv


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


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class LlamaCppServer:
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
        self.ready_after_s: float | None = None
        self.exit_code: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    def command(self) -> list[str]:
        if self.venv is None or self.model is None:
            raise RuntimeError("venv and model must be known before building the command")
        return [str(self.venv / "bin" / "python"), str(SERVE), "--model", str(self.model),
                "--port", str(self.port), "--alias", self.alias,
                "--n-parallel", str(self.n_parallel), "--n-ctx", str(self.n_ctx),
                "--threads", "1", "--threads-http", "2"]

    def log_tail(self) -> str:
        return f"log tail ({self.log_path}):\n{_tail(self.log_path)}"

    def start(self, timeout: float = 60.0) -> None:
        """Launch the server and wait until ``/health`` answers 200."""
        if self._proc is not None:
            raise RuntimeError("server already started")
        if self.venv is None:
            self.venv = ensure_venv()
        if self.model is None:
            self.model = ensure_model(self.venv)
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(self.command(), cwd=self.workdir,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                          stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_healthy(started + timeout)
        except BaseException:
            self.stop(check=False)
            raise
        self.ready_after_s = time.monotonic() - started

    def _wait_healthy(self, deadline: float) -> None:
        assert self._proc is not None
        health = f"{self.url}/health"
        with requests.Session() as session:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise RuntimeError(f"llama.cpp exited with code {code} before becoming"
                                       f" healthy; {self.log_tail()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"llama.cpp not healthy on {health} in time;"
                                       f" {self.log_tail()}")
                with contextlib.suppress(requests.RequestException):
                    # 503 while the model loads, 200 once it serves.
                    if session.get(health, timeout=min(2.0, remaining)).status_code == 200:
                        return
                # Waiting on the process is the poll period and notices an exit at once.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=min(POLL_PERIOD_S, remaining))

    def stop(self, check: bool = True) -> int | None:
        """SIGTERM the server, wait up to 15 s for it to exit, else SIGKILL it; reap it.

        Returns its exit code (None if it was never started). With ``check``, raise if it
        had to be killed or exited non-zero, with the log's tail.
        """
        proc = self._proc
        if proc is None:
            return self.exit_code
        killed = False
        try:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                killed = True
                # start_new_session made it a group leader: take whatever it started too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        finally:
            self.exit_code = proc.wait()
            self._proc = None
        if check and killed:
            raise RuntimeError(f"llama.cpp did not exit within {STOP_GRACE_S:g} s of SIGTERM"
                               f" and was killed; {self.log_tail()}")
        if check and self.exit_code != 0:
            raise RuntimeError(f"llama.cpp exited with code {self.exit_code} on SIGTERM;"
                               f" {self.log_tail()}")
        return self.exit_code

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A failure already on its way out is the one to report.
        self.stop(check=exc is None)
