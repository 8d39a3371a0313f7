"""A simulated NVML (``libnvidia-ml.so.1``) driven by a scenario file, for tests.

The C library in ``nvml_sim.c`` implements part of the NVML C API against NVIDIA's own
``nvml.h`` (PyPI package ``nvidia-nvml-dev``), so the real ``pynvml`` bindings can be
exercised without a GPU. Its devices, values and faults come from the text file named by
``NVML_SIM_SCENARIO``, which it re-reads whenever the file changes. See ``README.md``.

Typical use::

    lib_dir = build(tmp_dir)
    write_scenario(path, devices=[Gpu(util=87), Gpu(lost=True)])
    subprocess.run([...], env=env(lib_dir, path))
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = [
    "CATEGORIES",
    "SONAME",
    "SOURCE",
    "SYSTEM_STALLS",
    "Gpu",
    "MigDevice",
    "Process",
    "Scenario",
    "build",
    "call_count",
    "env",
    "h100",
    "header_dir",
    "load_in_process",
    "reset",
    "write_scenario",
]

SONAME = "libnvidia-ml.so.1"
SOURCE = Path(__file__).with_name("nvml_sim.c")

#: Names accepted by ``unsupported`` and per-GPU ``stall`` lines.
CATEGORIES = frozenset({
    "name", "uuid", "index", "pci", "memory", "util", "mem_util", "power", "energy", "temp",
    "clocks", "clocks_event", "ecc", "remap", "pcie", "pcie_link", "nvlink", "mig", "virt",
    "processes", "events", "retired", "all",
})
#: Names accepted by ``stall system ...`` lines.
SYSTEM_STALLS = frozenset({"init", "shutdown", "system", "count", "handle"})

_HEADER_PACKAGE = "nvidia-nvml-dev==13.5.37"


def header_dir() -> Path:
    """The directory holding ``nvml.h`` from the ``nvidia-nvml-dev`` package."""
    spec = importlib.util.find_spec("nvidia")
    for location in (spec.submodule_search_locations or []) if spec else []:
        include = Path(location) / "cu13" / "include"
        if (include / "nvml.h").is_file():
            return include
    raise FileNotFoundError(f"nvml.h not found: install {_HEADER_PACKAGE}")


def build(dest: Path) -> Path:
    """Compile the library into ``dest`` (created if needed) and return ``dest``.

    Skips the compiler when ``dest/libnvidia-ml.so.1`` is newer than both the C source and
    ``nvml.h``. The compiler is ``$CC`` or ``cc``; warnings are errors. The result is
    written under a temporary name and renamed, so concurrent builds are safe.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / SONAME
    include = header_dir()
    newest = max(SOURCE.stat().st_mtime_ns, (include / "nvml.h").stat().st_mtime_ns)
    if out.exists() and out.stat().st_mtime_ns > newest:
        return dest
    tmp = dest / f".{SONAME}.{os.getpid()}.tmp"
    cmd = [
        os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-pthread",
        f"-I{include}", f"-Wl,-soname,{SONAME}", "-o", str(tmp), str(SOURCE),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"building {SONAME} failed:\n{' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, out)
    return dest


def env(lib_dir: Path, scenario_path: Path,
        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess that should load the simulator.

    A copy of ``base`` (default ``os.environ``) with ``lib_dir`` first on
    ``LD_LIBRARY_PATH`` and ``NVML_SIM_SCENARIO`` set. ``LD_LIBRARY_PATH`` is read when a
    process starts, so this only works for new processes.
    """
    out = dict(os.environ if base is None else base)
    old = out.get("LD_LIBRARY_PATH", "")
    out["LD_LIBRARY_PATH"] = f"{lib_dir}:{old}" if old else str(lib_dir)
    out["NVML_SIM_SCENARIO"] = str(scenario_path)
    return out


def load_in_process(lib_dir: Path) -> ctypes.CDLL:
    """Load the simulator into this process so that pynvml picks it up.

    pynvml loads NVML with ``CDLL("libnvidia-ml.so.1")``; the dynamic loader answers a
    bare name with an already loaded object whose ``DT_SONAME`` matches, so after this
    call pynvml binds to the simulator. That binding lasts for the life of the process
    (pynvml caches the library, and nothing unloads it): use a dedicated process. Set
    ``os.environ["NVML_SIM_SCENARIO"]`` before calls; the library reads it on every call.

    Raises RuntimeError when another ``libnvidia-ml.so.1`` is already loaded.
    """
    lib = ctypes.CDLL(str(lib_dir / SONAME), mode=ctypes.RTLD_GLOBAL)
    if ctypes.CDLL(SONAME)._handle != lib._handle:
        raise RuntimeError(f"another {SONAME} is already loaded in this process")
    lib.nvmlSimCallCount.restype = ctypes.c_ulonglong
    lib.nvmlSimCallCount.argtypes = []
    lib.nvmlSimReset.restype = None
    lib.nvmlSimReset.argtypes = []
    return lib


def call_count(lib: ctypes.CDLL | None = None) -> int:
    """NVML API calls the simulator loaded in this process has answered so far."""
    fn = (lib if lib is not None else ctypes.CDLL(SONAME)).nvmlSimCallCount
    fn.restype = ctypes.c_ulonglong
    return int(fn())


def reset(lib: ctypes.CDLL | None = None) -> None:
    """Drop the in-process simulator's init reference count and event sets."""
    (lib if lib is not None else ctypes.CDLL(SONAME)).nvmlSimReset()


# --------------------------------------------------------------------------------------
# Scenario files


def _quote(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ValueError(f"scenario strings cannot hold quotes or newlines: {value!r}")
    return f'"{value}"'


def _check_categories(names: Collection[str], allowed: Collection[str], what: str) -> None:
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)} (known: {sorted(allowed)})")


@dataclass
class Process:
    """A compute process; ``used=None`` reports NVML_VALUE_NOT_AVAILABLE."""

    pid: int
    used: int | None = 0


@dataclass
class MigDevice:
    """A MIG device in ``slot`` (0..max_mig-1) of its GPU; visible while MIG mode is on."""

    slot: int
    gi: int | None = None  # GPU instance id; default: the slot
    ci: int = 0
    uuid: str | None = None  # default: derived from GPU index and slot
    name: str | None = None  # default: "<GPU name> MIG"
    mem_total: int = 0
    mem_used: int = 0
    mem_reserved: int = 0
    processes: Sequence[Process] = ()


@dataclass
class Gpu:
    """One GPU; its index is its position in the scenario's device list.

    Numeric fields carry the units of the NVML call that reports them (mW, mJ, MHz,
    KB/s, KiB, bytes). ``None`` leaves the library's default. ``unsupported`` and the keys
    of ``stalls`` are names from CATEGORIES; ``stalls`` values are milliseconds.
    ``xids`` are pending XID codes, each delivered once per event set.
    """

    name: str | None = None  # default "NVIDIA H100 80GB HBM3"
    uuid: str | None = None  # default GPU-00000000-0000-0000-0000-<index, 12 digits>
    pci: str | None = None  # "DDDDDDDD:BB:DD.F"; default 00000000:<index+1>:00.0
    pci_device_id: int | None = None  # default 0x233010DE
    pci_subsystem_id: int | None = None  # default 0x16C110DE
    mem_total: int = 85_520_809_984
    mem_used: int = 0
    mem_reserved: int = 0
    util: int = 0
    mem_util: int = 0
    power_mw: int = 0
    energy_mj: int = 0
    temp: int = 0
    sm_clock: int = 0
    mem_clock: int = 0
    video_clock: int = 0
    clocks_event: int = 0
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    ecc_corrected_agg: int | None = None  # default: the volatile count
    ecc_uncorrected_agg: int | None = None
    remapped_corr: int = 0
    remapped_unc: int = 0
    remap_pending: bool = False
    remap_failure: bool = False
    pcie_tx_kbps: int = 0
    pcie_rx_kbps: int = 0
    pcie_gen: int = 0
    pcie_width: int = 0
    pcie_max_gen: int | None = None  # default: pcie_gen (the link runs at its maximum)
    pcie_max_width: int | None = None  # default: pcie_width
    nvlink_tx_kib: int = 0
    nvlink_rx_kib: int = 0
    retired_sbe: int = 0  # pages retired after multiple single-bit errors (pre-Ampere GPUs)
    retired_dbe: int = 0  # pages retired after a double-bit error
    retired_pending: bool = False
    mig: bool = False
    mig_pending: bool | None = None  # default: same as mig
    max_mig: int = 7
    virt: int = 0  # nvmlGpuVirtualizationMode_t
    mig_devices: Sequence[MigDevice] = ()
    processes: Sequence[Process] = ()
    unsupported: Collection[str] = ()
    lost: bool = False
    stalls: Mapping[str, int] = field(default_factory=dict)
    xids: Sequence[int] = ()

    _STRINGS = ("name", "uuid", "pci")
    _NUMBERS = (
        "pci_device_id", "pci_subsystem_id", "mem_total", "mem_used", "mem_reserved", "util",
        "mem_util", "power_mw", "energy_mj", "temp", "sm_clock", "mem_clock", "video_clock",
        "clocks_event", "ecc_corrected", "ecc_uncorrected", "ecc_corrected_agg",
        "ecc_uncorrected_agg", "remapped_corr", "remapped_unc", "remap_pending",
        "remap_failure", "pcie_tx_kbps", "pcie_rx_kbps", "pcie_gen", "pcie_width",
        "pcie_max_gen", "pcie_max_width", "nvlink_tx_kib", "nvlink_rx_kib", "mig",
        "mig_pending", "max_mig", "virt", "retired_sbe", "retired_dbe", "retired_pending",
    )

    def lines(self, index: int) -> list[str]:
        """The scenario lines describing this GPU as GPU ``index``."""
        _check_categories(self.unsupported, CATEGORIES, "categories")
        _check_categories(self.stalls, CATEGORIES, "stall categories")
        parts = [f"gpu {index}"]
        for key in self._STRINGS:
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={_quote(value)}")
        for key in self._NUMBERS:
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={int(value)}")
        out = [" ".join(parts)]
        for mig in self.mig_devices:
            mparts = [f"mig {index} {mig.slot}", f"gi={mig.slot if mig.gi is None else mig.gi}",
                      f"ci={mig.ci}"]
            if mig.uuid is not None:
                mparts.append(f"uuid={_quote(mig.uuid)}")
            if mig.name is not None:
                mparts.append(f"name={_quote(mig.name)}")
            mparts += [f"mem_total={mig.mem_total}", f"mem_used={mig.mem_used}",
                       f"mem_reserved={mig.mem_reserved}"]
            out.append(" ".join(mparts))
        procs = [(str(index), p) for p in self.processes]
        procs += [(f"{index}/{m.slot}", p) for m in self.mig_devices for p in m.processes]
        for where, p in procs:
            used = "na" if p.used is None else str(p.used)
            out.append(f"proc {where} pid={p.pid} used={used}")
        if self.unsupported:
            out.append(f"unsupported {index} {','.join(sorted(self.unsupported))}")
        if self.lost:
            out.append(f"lost {index}")
        out += [f"stall {index} {cat} {ms}" for cat, ms in self.stalls.items()]
        out += [f"xid {index} {code}" for code in self.xids]
        return out


@dataclass
class Scenario:
    """A whole scenario; ``write`` replaces the file atomically.

    ``nvml_version`` defaults to ``"<cuda // 1000>.<driver>"``. ``init_error`` nonzero
    makes nvmlInit return that nvmlReturn_t. ``system_stalls`` maps names from
    SYSTEM_STALLS to milliseconds. ``extra`` lines are appended verbatim.
    """

    gpus: Sequence[Gpu] = ()
    driver: str = "550.54.15"
    cuda: int = 12040
    nvml_version: str | None = None
    init_error: int = 0
    system_stalls: Mapping[str, int] = field(default_factory=dict)
    extra: Sequence[str] = ()

    def render(self) -> str:
        _check_categories(self.system_stalls, SYSTEM_STALLS, "system stall categories")
        out = [f"driver {_quote(self.driver)}", f"cuda {self.cuda}",
               f"init_error {self.init_error}"]
        if self.nvml_version is not None:
            out.append(f"nvml_version {_quote(self.nvml_version)}")
        out += [f"stall system {cat} {ms}" for cat, ms in self.system_stalls.items()]
        for index, gpu in enumerate(self.gpus):
            out += gpu.lines(index)
        out += list(self.extra)
        return "\n".join(out) + "\n"

    def write(self, path: Path) -> Path:
        """Write atomically (temporary file, then rename) so readers never see half."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.render())
        os.replace(tmp, path)
        return path


def h100(index: int, **changes: object) -> Gpu:
    """A busy H100 80GB as GPU ``index`` of a node, values distinct per index; ``changes``
    override fields (``lost=True``, ``processes=[...]``...)."""
    gpu = Gpu(uuid=f"GPU-4f1c2a7e-0000-4000-8000-00000000000{index}",
              pci=f"00000000:{0x18 + index:02X}:00.0",
              mem_total=85_520_809_984, mem_used=79_000_000_000 + index, util=80 + index,
              mem_util=60 + index, power_mw=600_000 + index * 1000,
              energy_mj=10_000_000 * (index + 1), temp=60 + index, sm_clock=1980,
              mem_clock=2619, clocks_event=0, ecc_corrected=index, ecc_uncorrected=0,
              pcie_tx_kbps=1000, pcie_rx_kbps=2000, pcie_gen=5, pcie_width=16,
              pcie_max_gen=5, pcie_max_width=16, nvlink_tx_kib=4096, nvlink_rx_kib=8192)
    return replace(gpu, **changes)  # type: ignore[arg-type]


def write_scenario(path: Path, *, devices: Sequence[Gpu] = (), driver: str = "550.54.15",
                   cuda: int = 12040, nvml_version: str | None = None, init_error: int = 0,
                   system_stalls: Mapping[str, int] | None = None,
                   extra: Sequence[str] = ()) -> Path:
    """Shorthand for ``Scenario(...).write(path)``."""
    return Scenario(gpus=devices, driver=driver, cuda=cuda, nvml_version=nvml_version,
                    init_error=init_error, system_stalls=dict(system_stalls or {}),
                    extra=extra).write(path)
