"""Start and stop a real Triton Inference Server (``tritonserver`` 2.51.0 from PyPI
``nvidia-pytriton``) serving ``tiny_llm``, a decoupled Python-backend model, for integration
tests.

Importable from the project's own test virtualenv: it needs only the standard library and
``requests``. The server comes from a separate, cached virtualenv built by
``ensure_venv.sh``. Each server gets its own model repository and backend folder under its
work folder: ``tiny_llm.py`` as the model, and links (not copies: the stub finds libcudart
through an ``$ORIGIN``-relative RPATH) to the wheel's Python backend and stub.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tests.support.server_process import OnServerProcess, ServerProcess, built_venv

HERE = Path(__file__).resolve().parent
ENSURE_VENV = HERE / "ensure_venv.sh"
MODEL = HERE / "tiny_llm.py"
MODEL_NAME = "tiny_llm"

POLL_PERIOD_S = 0.1
STOP_GRACE_S = 30.0
"""Triton waits for in-flight requests (its ``exit_timeout``, 30 s by default) on SIGTERM."""
LOG_TAIL_LINES = 60

CONFIG = """\
name: "tiny_llm"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true }
]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
"""One CPU instance of a decoupled model: concurrent requests wait in Triton's queue."""


def ensure_venv() -> Path:
    """Build (once) the nvidia-pytriton virtualenv and return its path."""
    return built_venv(ENSURE_VENV)


def site_packages(venv: Path) -> Path:
    (found,) = sorted((venv / "lib").glob("python3.*/site-packages"))
    return found


class TritonServer(OnServerProcess):
    """``tritonserver`` on 127.0.0.1 (HTTP, gRPC and metrics on the given ports), serving
    ``tiny_llm`` from a fresh model repository under ``workdir``.

    Use as a context manager, which starts it on entry and stops it on exit, or call
    ``start()`` and ``stop()``. ``extra_args`` are added to the command line (the metrics
    options, say).
    """

    def __init__(self, workdir: Path, http_port: int, grpc_port: int, metrics_port: int,
                 extra_args: Sequence[str] = (), *, venv: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.extra_args = list(extra_args)
        self.venv = venv
        self.log_path = self.workdir / f"triton-{http_port}.log"
        self._process = ServerProcess("Triton", self.log_path, f"{self.url}/v2/health/ready",
                                      poll_period_s=POLL_PERIOD_S, stop_grace_s=STOP_GRACE_S,
                                      log_tail_lines=LOG_TAIL_LINES)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _tritonserver(self) -> Path:
        if self.venv is None:
            raise RuntimeError("venv must be known before building the command")
        return site_packages(self.venv) / "pytriton" / "tritonserver"

    def prepare(self) -> tuple[Path, Path]:
        """Write the model repository and the backend folder; return both."""
        if self.venv is None:
            raise RuntimeError("venv must be known before preparing the repository")
        bundled = self._tritonserver()
        minor = site_packages(self.venv).parent.name.removeprefix("python")
        repo = self.workdir / "triton-repo"
        backends = self.workdir / "triton-backends"
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(backends, ignore_errors=True)
        (repo / MODEL_NAME / "1").mkdir(parents=True)
        (repo / MODEL_NAME / "config.pbtxt").write_text(CONFIG)
        shutil.copyfile(MODEL, repo / MODEL_NAME / "1" / "model.py")
        python = backends / "python"
        python.mkdir(parents=True)
        for source in (bundled / "backends" / "python" / "libtriton_python.so",
                       bundled / "backends" / "python" / "triton_python_backend_utils.py",
                       bundled / "python_backend_stubs" / minor / "triton_python_backend_stub"):
            (python / source.name).symlink_to(source)
        return repo, backends

    def command(self, repo: Path, backends: Path) -> list[str]:
        bundled = self._tritonserver()
        return [str(bundled / "bin" / "tritonserver"), f"--model-repository={repo}",
                f"--backend-directory={backends}", f"--cache-directory={bundled / 'caches'}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", *self.extra_args]

    def start(self, timeout: float = 60.0) -> None:
        """Launch the server and wait until ``/v2/health/ready`` answers 200, then its metrics
        port too (seen: refused for a moment after the HTTP port said ready)."""
        if self._process.running:
            raise RuntimeError("server already started")
        if self.venv is None:
            self.venv = ensure_venv()
        self.workdir.mkdir(parents=True, exist_ok=True)
        repo, backends = self.prepare()
        self._process.start(self.command(repo, backends), cwd=self.workdir,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=timeout)
        self._process.wait_answers(self.metrics_url, timeout)
