"""deploy/install.sh into scratch roots: files, modes, owners and accounts; idempotence; the
config never overwritten; --uninstall; and the unit's ExecStart starting the daemon as the
service user."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.support.harness import ROOT, free_port, wait_for
from tests.support.promtool import required

SCRIPT = ROOT / "deploy" / "install.sh"
NAME = "inference-node-exporter"
UNIT = f"etc/systemd/system/{NAME}.service"
WANTS = f"etc/systemd/system/multi-user.target.wants/{NAME}.service"
CONFIG = f"etc/{NAME}/config.toml"
DEFAULTS = f"etc/default/{NAME}"
VENV = f"opt/{NAME}/venv"
SERVICE_PYTHON = Path("/usr/bin/python3")
"""The service user must be able to run the virtualenv's interpreter (not one under /root)."""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")


@pytest.fixture(scope="module")
def service_python() -> Path:
    probe = subprocess.run([str(SERVICE_PYTHON), "-c", "import ensurepip, venv, sys;"
                            " sys.exit(sys.version_info < (3, 11))"],
                           capture_output=True, timeout=60, check=False)
    assert probe.returncode == 0, \
        f"{SERVICE_PYTHON} with venv, 3.11+, is needed (Debian: python3-venv; make deps)"
    return SERVICE_PYTHON


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's wheel, its dependencies and setuptools, so installs need no index."""
    base = tmp_path_factory.mktemp("wheelhouse")
    source = base / "src"
    source.mkdir()
    tar = subprocess.run(["tar", "-C", str(ROOT), "--exclude=__pycache__", "-cf", "-",
                          "pyproject.toml", "README.md", "exporter"],
                         capture_output=True, check=True, timeout=60)
    subprocess.run(["tar", "-C", str(source), "-xf", "-"], input=tar.stdout, check=True,
                   timeout=60)
    wheels = base / "wheels"
    for args in (["wheel", "-w", str(wheels), str(source)],
                 ["download", "--no-deps", "-d", str(wheels), "setuptools>=77"]):
        done = subprocess.run([sys.executable, "-m", "pip", "--quiet", *args],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    return wheels


def our_wheel(wheels: Path) -> Path:
    return next(wheels.glob("inference_node_exporter-*.whl"))


@pytest.fixture
def scratch() -> Iterator[Callable[[], Path]]:
    """Scratch roots under /tmp that other users may traverse (the daemon runs as one)."""
    made: list[Path] = []

    def make() -> Path:
        root = Path(tempfile.mkdtemp(prefix="ine-root-", dir="/tmp"))
        root.chmod(0o755)
        made.append(root)
        return root

    yield make
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


def seed_accounts(root: Path) -> None:
    """A small system's account files: root, an existing user, and the video group."""
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                "ops:x:1000:1000:ops:/home/ops:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nvideo:x:44:ops\nops:x:1000:\n")
    for name, text in (("shadow", "root:*:19000:0:99999:7:::\nops:*:19000:0:99999:7:::\n"),
                       ("gshadow", "root:*::\nvideo:*::ops\nops:!::\n")):
        (etc / name).write_text(text)
        (etc / name).chmod(0o640)


def install(root: Path, wheels: Path, python: Path, *args: str) -> str:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
    done = subprocess.run(["bash", str(SCRIPT), "--root", str(root), "--python", str(python),
                           *args], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def accounts(root: Path, name: str) -> list[list[str]]:
    """The lines of ``etc/<name>`` split into fields."""
    return [line.split(":") for line in (root / "etc" / name).read_text().splitlines()]


def entry(root: Path, name: str, key: str) -> list[str]:
    found = [fields for fields in accounts(root, name) if fields[0] == key]
    assert len(found) == 1, f"{key} in etc/{name}: {found}"
    return found[0]


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: its kind, mode, owner, mtime, and content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = None
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode),
                                                stat.S_IMODE(st.st_mode), st.st_uid,
                                                st.st_gid, st.st_mtime_ns, what)
    return out


def attrs(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid


def test_install_lays_down_files_and_account_idempotently(
        scratch: Callable[[], Path], wheelhouse: Path, service_python: Path) -> None:
    root = scratch()
    seed_accounts(root)
    started = time.monotonic()
    out = install(root, wheelhouse, service_python, "--wheel", str(our_wheel(wheelhouse)))
    took = time.monotonic() - started
    assert "skipped systemctl daemon-reload" in out
    assert took < 60, f"install took {took:.1f} s"

    user = entry(root, "passwd", NAME)
    uid, gid = int(user[2]), int(user[3])
    assert 0 < uid < 1000 and user[5:] == [f"/var/lib/{NAME}", "/usr/sbin/nologin"]
    assert entry(root, "group", NAME)[2] == str(gid)
    assert entry(root, "shadow", NAME)[1] in ("!", "*", "!*")  # no password: no login
    assert entry(root, "group", "video")[3].split(",") == ["ops", NAME]
    assert entry(root, "gshadow", "video")[3].split(",") == ["ops", NAME]
    assert not (root / "var" / "lib" / NAME).exists()  # systemd's StateDirectory= makes it

    assert attrs(root / UNIT) == ("0o644", 0, 0)
    assert (root / UNIT).read_text() == (ROOT / "systemd" / f"{NAME}.service").read_text()
    assert attrs(root / "etc" / NAME) == ("0o750", 0, gid)
    assert attrs(root / CONFIG) == ("0o640", 0, gid)
    assert (root / CONFIG).read_text() == (ROOT / "deploy" / "config.toml").read_text()
    assert attrs(root / DEFAULTS) == ("0o644", 0, 0)
    assert 'ARGS=""' in (root / DEFAULTS).read_text().splitlines()
    assert attrs(root / VENV / "bin" / NAME) == ("0o755", 0, 0)
    if shutil.which("systemctl"):
        assert os.readlink(root / WANTS) == f"/{UNIT}"
    if shutil.which("systemd-analyze"):
        # The installed unit checks out, its commands mapped to where they were installed.
        mapped = scratch() / f"{NAME}.service"
        mapped.write_text((root / UNIT).read_text().replace(f"/opt/{NAME}/",
                                                            f"{root}/opt/{NAME}/"))
        verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(mapped)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert verify.returncode == 0 and not verify.stdout + verify.stderr, \
            verify.stdout + verify.stderr

    # A second run changes nothing at all.
    before = snapshot(root)
    out = install(root, wheelhouse, service_python, "--wheel", str(our_wheel(wheelhouse)))
    assert "nothing to change" in out
    assert snapshot(root) == before

    # An edited config survives a run, untouched.
    with (root / CONFIG).open("a") as fh:
        fh.write("# edited by the operator\n")
    before = snapshot(root)
    out = install(root, wheelhouse, service_python, "--wheel", str(our_wheel(wheelhouse)))
    assert "kept" in out and "nothing to change" in out
    assert snapshot(root) == before
    assert (root / CONFIG).read_text().endswith("# edited by the operator\n")

    run_exec_start_as_service_user(root, uid, gid)


def run_exec_start_as_service_user(root: Path, uid: int, gid: int) -> None:
    """The unit's ExecStart, with $ARGS from /etc/default, paths mapped into ``root``."""
    port = free_port()
    (root / DEFAULTS).write_text(f'ARGS="--web.listen-address=127.0.0.1:{port}"\n')
    environment = {}
    for line in (root / DEFAULTS).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            environment[key] = " ".join(shlex.split(value))
    exec_start = next(line.split("=", 1)[1] for line in (root / UNIT).read_text().splitlines()
                      if line.startswith("ExecStart="))
    argv: list[str] = []
    for word in exec_start.split():
        if word == "$ARGS":
            argv += environment["ARGS"].split()  # systemd splits an unquoted $VAR on spaces
        elif word.startswith("/"):
            argv.append(f"{root}{word}")
        elif word.startswith("--") and "=/" in word:
            flag, _, path = word.partition("=")
            argv.append(f"{flag}={root}{path}")
        else:
            argv.append(word)
    # The script names its interpreter by its path on the target: map that too.
    shebang = Path(argv[0]).read_text().splitlines()[0]
    assert shebang == f"#!/{VENV}/bin/python"
    command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
               f"{root}{shebang[2:]}", *argv]
    log = root / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=out,
                                env={"PATH": "/usr/bin:/bin", **environment})
    try:
        def answers() -> bool:
            assert proc.poll() is None, log.read_text()
            return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).ok

        wait_for("the daemon started from ExecStart to answer /metrics", answers, timeout=30)
        status = dict(line.split(":\t", 1) for line in
                      Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ":\t" in line)
        assert status["Uid"].split() == [str(uid)] * 4
        assert status["Gid"].split() == [str(gid)] * 4
        assert status["Groups"].strip() == ""
        assert "inference_node_exporter_build_info" in \
            requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(5)
        took = time.monotonic() - started
        assert code == 0 and took < 2.0, f"exit {code} after {took:.2f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Not on a terminal (the journal under systemd): JSON lines.
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "started" in events and events[-1] == "stopped"


def test_install_from_source_then_uninstall_keeps_the_config(
        scratch: Callable[[], Path], wheelhouse: Path, service_python: Path) -> None:
    root = scratch()  # no account files: the script seeds minimal ones
    source = wheelhouse.parent / "src"
    out = install(root, wheelhouse, service_python, "--source", str(source))
    assert "installed the package" in out
    assert entry(root, "passwd", "root")[2] == "0"
    gid = int(entry(root, "passwd", NAME)[3])
    assert attrs(root / CONFIG) == ("0o640", 0, gid)
    assert (root / VENV / "bin" / NAME).exists()
    assert "nothing to change" in install(root, wheelhouse, service_python,
                                          "--source", str(source))
    (root / "var" / "lib" / NAME).mkdir(parents=True)  # as systemd would have made it
    config = (root / CONFIG).read_text()

    for _ in range(2):  # a second --uninstall finds nothing left to do
        install(root, wheelhouse, service_python, "--uninstall")
        for gone in (UNIT, WANTS, f"opt/{NAME}", f"var/lib/{NAME}"):
            assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
        for name in ("passwd", "group", "shadow", "gshadow"):
            assert not [f for f in accounts(root, name) if f[0] == NAME or NAME in f[-1]], name
        assert (root / CONFIG).read_text() == config
        assert attrs(root / CONFIG) == ("0o640", 0, 0)  # no group id left dangling
        assert (root / DEFAULTS).exists()

    # Installed again, the kept config is used and readable by the new group.
    install(root, wheelhouse, service_python, "--wheel", str(our_wheel(wheelhouse)))
    gid = int(entry(root, "passwd", NAME)[3])
    assert (root / CONFIG).read_text() == config
    assert attrs(root / CONFIG) == ("0o640", 0, gid)


def test_install_script_usage() -> None:
    shown = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                           timeout=30, check=False)
    assert shown.returncode == 0 and "--uninstall" in shown.stdout
    wrong = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True,
                           timeout=30, check=False)
    assert wrong.returncode == 2


def test_install_script_passes_shellcheck() -> None:
    done = subprocess.run([required("shellcheck", "shellcheck"), str(SCRIPT)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
