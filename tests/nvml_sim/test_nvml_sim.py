"""Tests of the simulated NVML, driven through the real pynvml bindings.

Every pynvml call runs in a fresh interpreter: pynvml binds to whichever
``libnvidia-ml.so.1`` it loads first and keeps it, so loading the simulator into the
pytest process would leak into other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import ROOT

from . import (
    CATEGORIES,
    SONAME,
    SOURCE,
    Gpu,
    MigDevice,
    Process,
    Scenario,
    build,
    env,
    header_dir,
    write_scenario,
)

FUNCTIONS = [
    "nvmlInit_v2", "nvmlInitWithFlags", "nvmlShutdown", "nvmlErrorString",
    "nvmlSystemGetDriverVersion", "nvmlSystemGetNVMLVersion", "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2", "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetIndex",
    "nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetTemperature", "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows", "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkWidth",
    "nvmlDeviceGetFieldValues", "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", "nvmlDeviceGetVirtualizationMode",
    "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetSupportedEventTypes",
    "nvmlEventSetCreate", "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2",
    "nvmlEventSetFree", "nvmlSimCallCount", "nvmlSimReset",
]

# Runs before each snippet. `code(f, *args)` is the nvmlReturn_t of a pynvml call (0 when
# it succeeds); `raw` is the library through plain ctypes; `count()` the sim call count.
PRELUDE = '''
import ctypes, json, os, sys, threading, time
from pathlib import Path
import pynvml as N
from tests.nvml_sim import *
SCENARIO = Path(os.environ["NVML_SIM_SCENARIO"])
LIB_DIR = Path(os.environ["NVML_SIM_TEST_LIB_DIR"])
if os.environ.get("NVML_SIM_TEST_IN_PROCESS"):
    SIM = load_in_process(LIB_DIR)
raw = ctypes.CDLL("libnvidia-ml.so.1")
raw.nvmlSimCallCount.restype = ctypes.c_ulonglong
def count():
    return raw.nvmlSimCallCount()
def code(fn, *args):
    try:
        fn(*args)
    except N.NVMLError as exc:
        return exc.value
    return 0
def addr(handle):
    return ctypes.cast(handle, ctypes.c_void_p).value
result = None
'''
MARK = "NVML_SIM_RESULT="


@pytest.fixture(scope="session")
def lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("nvml_sim"))


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    return tmp_path / "scenario.txt"


def run_py(lib_dir: Path, scenario: Path, body: str, *, in_process: bool = False,
           extra_env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    """Run ``body`` in a new interpreter with the simulator; return its ``result``."""
    environ = env(lib_dir, scenario)
    if in_process:
        environ = dict(os.environ, NVML_SIM_SCENARIO=str(scenario), NVML_SIM_TEST_IN_PROCESS="1")
        environ.pop("LD_LIBRARY_PATH", None)
    environ["NVML_SIM_TEST_LIB_DIR"] = str(lib_dir)
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(extra_env or {})
    script = PRELUDE + textwrap.dedent(body) + f"\nprint({MARK!r} + json.dumps(result))\n"
    proc = subprocess.run([sys.executable, "-c", script], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1][len(MARK):])


H100 = Gpu(
    name="NVIDIA H100 80GB HBM3", uuid="GPU-0b1f2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
    pci="00000000:18:00.0", mem_total=85_520_809_984, mem_used=79_000_000_000,
    mem_reserved=500_000_000, util=87, mem_util=64, power_mw=612_000,
    energy_mj=123_456_789, temp=67, sm_clock=1980, mem_clock=2619, video_clock=1755,
    clocks_event=0x4, ecc_corrected=3, ecc_uncorrected=1, ecc_corrected_agg=30,
    remapped_corr=2, remapped_unc=1, remap_pending=True, remap_failure=False,
    pcie_tx_kbps=1200, pcie_rx_kbps=3400, pcie_gen=4, pcie_width=8, pcie_max_gen=5,
    pcie_max_width=16, nvlink_tx_kib=1000, nvlink_rx_kib=2000, virt=1,
)


# --------------------------------------------------------------------------------------
# Build


def test_build_is_cached_and_rebuilds_when_stale(tmp_path: Path) -> None:
    start = time.monotonic()
    out = build(tmp_path) / SONAME
    first = time.monotonic() - start
    assert out.is_file()
    stamp = out.stat().st_mtime_ns
    assert build(tmp_path) == tmp_path
    assert out.stat().st_mtime_ns == stamp  # cached
    old = SOURCE.stat().st_mtime_ns - 1_000_000_000
    os.utime(out, ns=(old, old))
    build(tmp_path)
    assert out.stat().st_mtime_ns > stamp  # stale: rebuilt
    assert first < 30
    assert (header_dir() / "nvml.h").is_file()
    if shutil.which("readelf"):
        dyn = subprocess.run(["readelf", "-d", str(out)], capture_output=True, text=True,
                             check=True).stdout
        assert f"Library soname: [{SONAME}]" in dyn


def test_exports_every_function(lib_dir: Path) -> None:
    body = f"""
    lib = ctypes.CDLL(str(LIB_DIR / {SONAME!r}))
    result = [name for name in {FUNCTIONS!r} if not hasattr(lib, name)]
    """
    assert run_py(lib_dir, Path("/nonexistent"), body) == []


# --------------------------------------------------------------------------------------
# Initialization and system queries


def test_system_queries_and_init_refcount(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, driver="555.42.06", cuda=12050, devices=[Gpu(), Gpu(), Gpu()])
    result = run_py(lib_dir, scenario, """
    n = ctypes.c_uint()
    before = raw.nvmlDeviceGetCount_v2(ctypes.byref(n))
    N.nvmlInit()
    out = dict(before=before, driver=N.nvmlSystemGetDriverVersion(),
               nvml=N.nvmlSystemGetNVMLVersion(), cuda=N.nvmlSystemGetCudaDriverVersion(),
               cuda2=N.nvmlSystemGetCudaDriverVersion_v2(), count=N.nvmlDeviceGetCount())
    buf = ctypes.create_string_buffer(4)
    out["small"] = raw.nvmlSystemGetDriverVersion(buf, 4)
    N.nvmlInitWithFlags(0)
    N.nvmlShutdown()
    out["still"] = N.nvmlDeviceGetCount()
    N.nvmlShutdown()
    out["after"] = code(N.nvmlDeviceGetCount)
    out["again"] = code(N.nvmlShutdown)
    out["v2"] = raw.nvmlInit_v2()
    out["count_v2"] = N.nvmlDeviceGetCount()
    result = out
    """)
    assert result == {
        "before": 1, "driver": "555.42.06", "nvml": "12.555.42.06", "cuda": 12050,
        "cuda2": 12050, "count": 3, "small": 7, "still": 3, "after": 1, "again": 1,
        "v2": 0, "count_v2": 3,
    }


def test_nvml_version_line(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, nvml_version="12.550.54.15-custom", devices=[Gpu()])
    result = run_py(lib_dir, scenario, "N.nvmlInit(); result = N.nvmlSystemGetNVMLVersion()")
    assert result == "12.550.54.15-custom"


def test_init_error_then_recovery(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, init_error=9, devices=[Gpu()])
    result = run_py(lib_dir, scenario, """
    first = code(N.nvmlInit)
    try:
        N.nvmlInit()
    except N.NVMLError_DriverNotLoaded as exc:
        text = str(exc)
    write_scenario(SCENARIO, init_error=0, devices=[Gpu(), Gpu()])
    result = [first, text, code(N.nvmlInit), N.nvmlDeviceGetCount()]
    """)
    assert result == [9, "Driver Not Loaded", 0, 2]


def test_missing_or_unset_scenario_means_no_driver(lib_dir: Path, tmp_path: Path) -> None:
    result = run_py(lib_dir, tmp_path / "absent.txt", """
    missing = code(N.nvmlInit)
    del os.environ["NVML_SIM_SCENARIO"]
    result = [missing, code(N.nvmlInit)]
    """)
    assert result == [9, 9]


def test_parse_error_is_reported(lib_dir: Path, scenario: Path) -> None:
    scenario.write_text("driver 1.2.3\ngpu 0 bogus=1\n")
    environ = env(lib_dir, scenario)
    environ["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", "import pynvml as N\ntry:\n N.nvmlInit()\n"
         "except N.NVMLError as e:\n print(e.value)"],
        env=environ, capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "999"
    assert "line 2: unknown gpu key 'bogus'" in proc.stderr


@pytest.mark.parametrize("text, message", [
    ("gpu 1\n", "gpu 0 missing"),
    ("gpu 0\ngpu 0\n", "defined twice"),
    ("gpu 0\nlost 2\n", "gpu 2 is used but has no gpu line"),
    ("gpu 0 util=101\n", "bad value '101' for util"),
    ('gpu 0 name="open\n', "unterminated quote"),
    ("gpu 0\nunsupported 0 nope\n", "unknown category 'nope'"),
    ("gpu 0\nstall system nope 5\n", "unknown system category"),
    ("gpu 0\nmig 0 7 gi=1\n", "slot >= max_mig"),
    ("gpu 0\nproc 0/2 pid=1\n", "mig 0 2 is used but has no mig line"),
    ("gpu 0 pci=zz\n", "bad pci"),
    ("frobnicate 1\n", "unknown keyword 'frobnicate'"),
])
def test_parse_errors(lib_dir: Path, scenario: Path, text: str, message: str) -> None:
    scenario.write_text(text)
    environ = env(lib_dir, scenario)
    proc = subprocess.run(
        [sys.executable, "-c", "import pynvml as N\ntry:\n N.nvmlInit()\n"
         "except N.NVMLError as e:\n print(e.value)"],
        env=environ, capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "999"
    assert message in proc.stderr


def test_error_strings(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu()])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()  # pynvml resolves symbols only once it has loaded the library
    result = [N.nvmlErrorString(c) for c in (0, 1, 2, 3, 7, 9, 10, 15, 25, 999, 12345)]
    """)
    assert result == ["Success", "Uninitialized", "Invalid Argument", "Not Supported",
                      "Insufficient Size", "Driver Not Loaded", "Timeout", "GPU is lost",
                      "Argument version mismatch", "Unknown Error", "Unknown Error"]


# --------------------------------------------------------------------------------------
# Devices


def test_identity_and_handles(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[H100, Gpu(name="NVIDIA A100-SXM4-40GB")])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    h0, h1 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
    pci = N.nvmlDeviceGetPciInfo(h0)
    buf = ctypes.create_string_buffer(8)
    result = dict(
        names=[N.nvmlDeviceGetName(h0), N.nvmlDeviceGetName(h1)],
        uuids=[N.nvmlDeviceGetUUID(h0), N.nvmlDeviceGetUUID(h1)],
        indices=[N.nvmlDeviceGetIndex(h0), N.nvmlDeviceGetIndex(h1)],
        pci=[pci.busId, pci.busIdLegacy, pci.domain, pci.bus, pci.device,
             pci.pciDeviceId, pci.pciSubSystemId],
        pci1=N.nvmlDeviceGetPciInfo_v3(h1).busId,
        same=addr(N.nvmlDeviceGetHandleByUUID(N.nvmlDeviceGetUUID(h1))) == addr(h1),
        stable=addr(N.nvmlDeviceGetHandleByIndex(0)) == addr(h0),
        notnull=addr(h0) is not None,
        bad_uuid=code(N.nvmlDeviceGetHandleByUUID, b"GPU-nope"),
        bad_index=code(N.nvmlDeviceGetHandleByIndex, 2),
        bad_handle=code(N.nvmlDeviceGetName, ctypes.cast(ctypes.c_void_p(8), N.c_nvmlDevice_t)),
        small=raw.nvmlDeviceGetName(h0, buf, 8),
    )
    """)
    assert result == {
        "names": ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"],
        "uuids": ["GPU-0b1f2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
                  "GPU-00000000-0000-0000-0000-000000000001"],
        "indices": [0, 1],
        "pci": ["00000000:18:00.0", "0000:18:00.0", 0, 0x18, 0, 0x233010DE, 0x16C110DE],
        "pci1": "00000000:02:00.0",
        "same": True, "stable": True, "notnull": True,
        "bad_uuid": 6, "bad_index": 2, "bad_handle": 2, "small": 7,
    }


def test_telemetry_values(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[H100])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    m1 = N.nvmlDeviceGetMemoryInfo(h)
    m2 = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
    u = N.nvmlDeviceGetUtilizationRates(h)
    bad = N.c_nvmlMemory_v2_t(); bad.version = 1
    ecc = [N.nvmlDeviceGetTotalEccErrors(h, e, c) for e in (0, 1) for c in (0, 1)]
    result = dict(
        mem1=[m1.total, m1.free, m1.used],
        mem2=[m2.version, m2.total, m2.reserved, m2.free, m2.used],
        version_mismatch=raw.nvmlDeviceGetMemoryInfo_v2(h, ctypes.byref(bad)),
        util=[u.gpu, u.memory],
        power=N.nvmlDeviceGetPowerUsage(h),
        energy=N.nvmlDeviceGetTotalEnergyConsumption(h),
        temp=N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU),
        bad_sensor=code(N.nvmlDeviceGetTemperature, h, 7),
        clocks=[N.nvmlDeviceGetClockInfo(h, t) for t in (N.NVML_CLOCK_GRAPHICS, N.NVML_CLOCK_SM,
                                                         N.NVML_CLOCK_MEM, N.NVML_CLOCK_VIDEO)],
        bad_clock=code(N.nvmlDeviceGetClockInfo, h, 9),
        reasons=[N.nvmlDeviceGetCurrentClocksEventReasons(h),
                 N.nvmlDeviceGetCurrentClocksThrottleReasons(h)],
        ecc=ecc,
        bad_ecc=code(N.nvmlDeviceGetTotalEccErrors, h, 2, 0),
        remap=list(N.nvmlDeviceGetRemappedRows(h)),
        pcie=[N.nvmlDeviceGetPcieThroughput(h, N.NVML_PCIE_UTIL_TX_BYTES),
              N.nvmlDeviceGetPcieThroughput(h, N.NVML_PCIE_UTIL_RX_BYTES)],
        bad_pcie=code(N.nvmlDeviceGetPcieThroughput, h, 5),
        link=[N.nvmlDeviceGetCurrPcieLinkGeneration(h), N.nvmlDeviceGetCurrPcieLinkWidth(h)],
        link_max=[N.nvmlDeviceGetMaxPcieLinkGeneration(h), N.nvmlDeviceGetMaxPcieLinkWidth(h)],
        virt=N.nvmlDeviceGetVirtualizationMode(h),
    )
    """)
    assert result == {
        "mem1": [85_520_809_984, 6_520_809_984, 79_000_000_000],
        "mem2": [0x02000028, 85_520_809_984, 500_000_000, 6_520_809_984, 78_500_000_000],
        "version_mismatch": 25,
        "util": [87, 64], "power": 612_000, "energy": 123_456_789, "temp": 67,
        "bad_sensor": 2, "clocks": [1980, 1980, 2619, 1755], "bad_clock": 2,
        "reasons": [4, 4], "ecc": [3, 30, 1, 1], "bad_ecc": 2, "remap": [2, 1, 1, 0],
        "pcie": [1200, 3400], "bad_pcie": 2, "link": [4, 8], "link_max": [5, 16], "virt": 1,
    }


def test_pcie_link_maximum_defaults_to_the_current_link(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(pcie_gen=3, pcie_width=4), Gpu(),
                                      Gpu(pcie_gen=5, pcie_width=8, pcie_max_width=16)])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    hs = [N.nvmlDeviceGetHandleByIndex(i) for i in range(3)]
    result = [[N.nvmlDeviceGetMaxPcieLinkGeneration(h), N.nvmlDeviceGetMaxPcieLinkWidth(h)]
              for h in hs]
    """)
    assert result == [[3, 4], [0, 0], [5, 16]]
    assert "pcie_max" not in Scenario(gpus=[Gpu(pcie_gen=3)]).render()


def test_field_values(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[H100, Gpu(nvlink_tx_kib=5, unsupported={"nvlink"})])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    ALL = 0xFFFFFFFF
    ids = [(N.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, ALL),
           (N.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, ALL),
           (N.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 0),
           N.NVML_FI_DEV_ECC_CURRENT]
    out = []
    for i in (0, 1):
        vals = N.nvmlDeviceGetFieldValues(N.nvmlDeviceGetHandleByIndex(i), ids)
        out.append([[v.nvmlReturn, v.valueType if v.nvmlReturn == 0 else None,
                     v.value.ullVal if v.nvmlReturn == 0 else None, v.timestamp > 0]
                    for v in vals])
    result = out
    """)
    ull = 3  # NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    assert result == [
        [[0, ull, 1000, True], [0, ull, 2000, True], [3, None, None, True],
         [3, None, None, True]],
        [[3, None, None, True]] * 4,
    ]


# A call per getter, by category; {h} is a GPU handle.
GETTERS = {
    "name": "N.nvmlDeviceGetName(h)",
    "uuid": "N.nvmlDeviceGetUUID(h)",
    "index": "N.nvmlDeviceGetIndex(h)",
    "pci": "N.nvmlDeviceGetPciInfo(h)",
    "memory": "N.nvmlDeviceGetMemoryInfo(h)",
    "memory_v2": "N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)",
    "util": "N.nvmlDeviceGetUtilizationRates(h)",
    "power": "N.nvmlDeviceGetPowerUsage(h)",
    "energy": "N.nvmlDeviceGetTotalEnergyConsumption(h)",
    "temp": "N.nvmlDeviceGetTemperature(h, 0)",
    "clocks": "N.nvmlDeviceGetClockInfo(h, 1)",
    "clocks_event": "N.nvmlDeviceGetCurrentClocksEventReasons(h)",
    "clocks_throttle": "N.nvmlDeviceGetCurrentClocksThrottleReasons(h)",
    "ecc": "N.nvmlDeviceGetTotalEccErrors(h, 0, 0)",
    "remap": "N.nvmlDeviceGetRemappedRows(h)",
    "pcie": "N.nvmlDeviceGetPcieThroughput(h, 0)",
    "pcie_gen": "N.nvmlDeviceGetCurrPcieLinkGeneration(h)",
    "pcie_width": "N.nvmlDeviceGetCurrPcieLinkWidth(h)",
    "pcie_max_gen": "N.nvmlDeviceGetMaxPcieLinkGeneration(h)",
    "pcie_max_width": "N.nvmlDeviceGetMaxPcieLinkWidth(h)",
    "fields": "N.nvmlDeviceGetFieldValues(h, [(138, 0xFFFFFFFF)])",
    "mig": "N.nvmlDeviceGetMigMode(h)",
    "mig_max": "N.nvmlDeviceGetMaxMigDeviceCount(h)",
    "mig_handle": "N.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)",
    "is_mig": "N.nvmlDeviceIsMigDeviceHandle(h)",
    "virt": "N.nvmlDeviceGetVirtualizationMode(h)",
    "processes": "N.nvmlDeviceGetComputeRunningProcesses(h)",
    "events": "N.nvmlDeviceGetSupportedEventTypes(h)",
    "register": "N.nvmlDeviceRegisterEvents(h, N.nvmlEventTypeXidCriticalError, es)",
}

# What GETTERS return on a device whose every category is `unsupported`.
ALL_UNSUPPORTED = {
    **{name: 3 for name in GETTERS},
    "fields": 0,  # the call succeeds; each field says NOT_SUPPORTED
    "mig_max": 0,  # "returns zero if MIG is not supported"
    "is_mig": 0,  # not a category
}


def _codes(handles: str) -> str:
    calls = ", ".join(f"{name!r}: code(lambda h: {expr}, h)" for name, expr in GETTERS.items())
    return f"""
    N.nvmlInit()
    es = N.nvmlEventSetCreate()
    result = [{{{calls}}} for h in {handles}]
    """


def test_unsupported_every_category(lib_dir: Path, scenario: Path) -> None:
    cats = CATEGORIES - {"all"}
    write_scenario(scenario, devices=[Gpu(unsupported=cats, mig=True, mig_devices=[
        MigDevice(0)]), Gpu(unsupported={"all"}), Gpu(mig=True, mig_devices=[MigDevice(0)])])
    result = run_py(lib_dir, scenario, _codes(
        "[N.nvmlDeviceGetHandleByIndex(i) for i in range(3)]"))
    assert result[0] == ALL_UNSUPPORTED
    assert result[1] == ALL_UNSUPPORTED
    assert result[2] == dict.fromkeys(GETTERS, 0)


@pytest.mark.parametrize("category, getters", [
    ("power", ["power"]), ("energy", ["energy"]), ("ecc", ["ecc"]), ("remap", ["remap"]),
    ("pcie", ["pcie"]), ("pcie_link", ["pcie_gen", "pcie_width", "pcie_max_gen", "pcie_max_width"]),
    ("mig", ["mig", "mig_handle"]),
    ("virt", ["virt"]), ("clocks_event", ["clocks_event", "clocks_throttle"]),
    ("temp", ["temp"]), ("util", ["util"]), ("mem_util", ["util"]),
    ("memory", ["memory", "memory_v2"]), ("processes", ["processes"]),
    ("events", ["events", "register"]), ("clocks", ["clocks"]), ("pci", ["pci"]),
    ("nvlink", []),
])
def test_unsupported_single_category(lib_dir: Path, scenario: Path, category: str,
                                     getters: list[str]) -> None:
    write_scenario(scenario, devices=[Gpu(unsupported={category}, mig=True,
                                          mig_devices=[MigDevice(0)])])
    [codes] = run_py(lib_dir, scenario, _codes("[N.nvmlDeviceGetHandleByIndex(0)]"))
    assert {k for k, v in codes.items() if v} == set(getters)


def test_lost_gpu(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(mig=True, mig_devices=[MigDevice(0)]),
                                      Gpu(lost=True, mig=True, mig_devices=[MigDevice(0)])])
    result = run_py(lib_dir, scenario, _codes(
        "[N.nvmlDeviceGetHandleByIndex(i) for i in range(2)]") + """
    h = N.nvmlDeviceGetHandleByIndex(1)
    result.append(dict(count=N.nvmlDeviceGetCount(),
                       by_uuid=addr(N.nvmlDeviceGetHandleByUUID(
                           b"GPU-00000000-0000-0000-0000-000000000001")) == addr(h),
                       gi=code(N.nvmlDeviceGetGpuInstanceId, h),
                       parent=code(N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, h)))
    """)
    assert result[0] == dict.fromkeys(GETTERS, 0)
    assert result[1] == dict.fromkeys(GETTERS, 15)
    assert result[2] == {"count": 2, "by_uuid": True, "gi": 15, "parent": 15}


def test_mig_devices(lib_dir: Path, scenario: Path) -> None:
    parent = Gpu(mig=True, mig_pending=False, max_mig=4, mig_devices=[
        MigDevice(0, gi=1, ci=0, uuid="MIG-aaaa", name="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
                  mem_total=40_000, mem_used=1_000),
        MigDevice(2, gi=5, ci=1, mem_total=10_000, mem_used=2_500, mem_reserved=500),
    ])
    write_scenario(scenario, devices=[parent, Gpu()])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    h, plain = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
    m0 = N.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
    m2 = N.nvmlDeviceGetMigDeviceHandleByIndex(h, 2)
    mem = N.nvmlDeviceGetMemoryInfo(m2)
    mem2 = N.nvmlDeviceGetMemoryInfo(m2, version=N.nvmlMemory_v2)
    result = dict(
        mode=N.nvmlDeviceGetMigMode(h), plain_mode=N.nvmlDeviceGetMigMode(plain),
        max=N.nvmlDeviceGetMaxMigDeviceCount(h), plain_max=N.nvmlDeviceGetMaxMigDeviceCount(plain),
        empty=code(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 1),
        beyond=code(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 4),
        plain_handle=code(N.nvmlDeviceGetMigDeviceHandleByIndex, plain, 0),
        is_mig=[N.nvmlDeviceIsMigDeviceHandle(x).value for x in (h, m0, m2)],
        ids=[[N.nvmlDeviceGetGpuInstanceId(x), N.nvmlDeviceGetComputeInstanceId(x)]
             for x in (m0, m2)],
        gi_of_gpu=code(N.nvmlDeviceGetGpuInstanceId, h),
        ci_of_gpu=code(N.nvmlDeviceGetComputeInstanceId, h),
        parent=addr(N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m2)) == addr(h),
        parent_of_gpu=code(N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, h),
        names=[N.nvmlDeviceGetName(m0), N.nvmlDeviceGetName(m2)],
        uuids=[N.nvmlDeviceGetUUID(m0), N.nvmlDeviceGetUUID(m2)],
        index=[N.nvmlDeviceGetIndex(m0), N.nvmlDeviceGetIndex(m2)],
        by_uuid=addr(N.nvmlDeviceGetHandleByUUID(b"MIG-aaaa")) == addr(m0),
        mem=[mem.total, mem.free, mem.used], mem2=[mem2.reserved, mem2.used],
        mig_of_mig=[code(N.nvmlDeviceGetMigMode, m0), code(N.nvmlDeviceGetMaxMigDeviceCount, m0),
                    code(N.nvmlDeviceGetMigDeviceHandleByIndex, m0, 0)],
        not_on_mig=[code(N.nvmlDeviceGetUtilizationRates, m0), code(N.nvmlDeviceGetPowerUsage, m0),
                    code(N.nvmlDeviceGetPciInfo, m0), code(N.nvmlDeviceGetSupportedEventTypes, m0)],
    )
    write_scenario(SCENARIO, devices=[Gpu(mig=False, mig_devices=[MigDevice(0)]), Gpu()])
    result["after_disable"] = [code(N.nvmlDeviceGetName, m0),
                               code(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 0),
                               N.nvmlDeviceGetMaxMigDeviceCount(h)]
    """)
    assert result == {
        "mode": [1, 0], "plain_mode": [0, 0], "max": 4, "plain_max": 0,
        "empty": 6, "beyond": 2, "plain_handle": 2,
        "is_mig": [0, 1, 1], "ids": [[1, 0], [5, 1]],
        "gi_of_gpu": 2, "ci_of_gpu": 2, "parent": True, "parent_of_gpu": 2,
        "names": ["NVIDIA H100 80GB HBM3 MIG 3g.40gb", "NVIDIA H100 80GB HBM3 MIG"],
        "uuids": ["MIG-aaaa", "MIG-00000000-0000-0000-0000-000000000002"],
        "index": [0, 2], "by_uuid": True,
        "mem": [10_000, 7_500, 2_500], "mem2": [500, 2_000],
        "mig_of_mig": [2, 2, 2], "not_on_mig": [3, 3, 3, 3],
        "after_disable": [2, 2, 0],
    }


def test_processes(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[
        Gpu(processes=[Process(4242, 40_000_000_000), Process(77, None)]),
        Gpu(mig=True, processes=[Process(1, 5)],
            mig_devices=[MigDevice(3, gi=2, ci=1, processes=[Process(9, 100)])]),
        Gpu(),
    ])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    hs = [N.nvmlDeviceGetHandleByIndex(i) for i in range(3)]
    mig = N.nvmlDeviceGetMigDeviceHandleByIndex(hs[1], 3)
    def procs(h):
        return [[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId]
                for p in N.nvmlDeviceGetComputeRunningProcesses(h)]
    n = ctypes.c_uint(0)
    first = raw.nvmlDeviceGetComputeRunningProcesses_v3(hs[0], ctypes.byref(n), None)
    none_n = ctypes.c_uint(0)
    none = raw.nvmlDeviceGetComputeRunningProcesses_v3(hs[2], ctypes.byref(none_n), None)
    c0 = count()
    p0 = procs(hs[0])
    calls = count() - c0
    result = dict(gpu0=p0, gpu1=procs(hs[1]), mig=procs(mig), gpu2=procs(hs[2]),
                  first=[first, n.value], none=[none, none_n.value], calls=calls,
                  null_count=raw.nvmlDeviceGetComputeRunningProcesses_v3(hs[0], None, None))
    """)
    na = 0xFFFFFFFF
    assert result == {
        "gpu0": [[4242, 40_000_000_000, na, na], [77, None, na, na]],
        "gpu1": [[1, 5, na, na], [9, 100, 2, 1]],
        "mig": [[9, 100, 2, 1]],
        "gpu2": [],
        "first": [7, 2], "none": [0, 0], "calls": 2, "null_count": 2,
    }


# --------------------------------------------------------------------------------------
# Events


def test_xid_events(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(), Gpu(), Gpu(xids=[79, 48]), Gpu(mig=True, mig_devices=[
        MigDevice(0)]), Gpu(lost=True)])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    hs = [N.nvmlDeviceGetHandleByIndex(i) for i in range(5)]
    es, other = N.nvmlEventSetCreate(), N.nvmlEventSetCreate()
    supported = N.nvmlDeviceGetSupportedEventTypes(hs[2])
    for h in hs[:3]:
        N.nvmlDeviceRegisterEvents(h, N.nvmlEventTypeXidCriticalError, es)
    N.nvmlDeviceRegisterEvents(hs[2], N.nvmlEventTypeXidCriticalError, other)
    got = []
    for _ in range(2):
        d = N.nvmlEventSetWait(es, 1000)
        got.append([N.nvmlDeviceGetIndex(d.device), d.eventType, d.eventData,
                    d.gpuInstanceId, d.computeInstanceId])
    t = time.monotonic()
    timeout = code(N.nvmlEventSetWait, es, 300)
    waited = time.monotonic() - t
    zero = code(N.nvmlEventSetWait, es, 0)
    other_got = [N.nvmlEventSetWait(other, 0).eventData, N.nvmlEventSetWait(other, 0).eventData]
    # the same code again needs another identical line
    write_scenario(SCENARIO, devices=[Gpu(), Gpu(), Gpu(xids=[79, 48, 79]), Gpu(),
                                      Gpu(lost=True)])
    again = N.nvmlEventSetWait(es, 1000).eventData
    after = code(N.nvmlEventSetWait, es, 0)
    result = dict(
        supported=supported, got=got, timeout=timeout, waited=waited, zero=zero,
        other=other_got, again=again, after=after,
        unsupported_type=code(N.nvmlDeviceRegisterEvents, hs[0], 1 << 40, es),
        lost=code(N.nvmlDeviceRegisterEvents, hs[4], N.nvmlEventTypeXidCriticalError, es),
        free=code(N.nvmlEventSetFree, es),
        freed_wait=code(N.nvmlEventSetWait, es, 0),
        freed_free=code(N.nvmlEventSetFree, es),
        freed_register=code(N.nvmlDeviceRegisterEvents, hs[0], 8, es),
    )
    """)
    waited = result.pop("waited")
    assert 0.28 <= waited < 2.0
    assert result == {
        "supported": 0x1F,
        "got": [[2, 8, 79, 0xFFFFFFFF, 0xFFFFFFFF], [2, 8, 48, 0xFFFFFFFF, 0xFFFFFFFF]],
        "timeout": 10, "zero": 10, "other": [79, 48], "again": 79, "after": 10,
        "unsupported_type": 3, "lost": 15, "free": 0, "freed_wait": 2, "freed_free": 2,
        "freed_register": 2,
    }


def test_xid_added_while_waiting(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(), Gpu()])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    es = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(1), N.nvmlEventTypeXidCriticalError, es)
    def later():
        time.sleep(0.3)
        write_scenario(SCENARIO, devices=[Gpu(xids=[31]), Gpu(xids=[13])])
    threading.Thread(target=later).start()
    t = time.monotonic()
    d = N.nvmlEventSetWait(es, 10000)
    result = [N.nvmlDeviceGetIndex(d.device), d.eventData, time.monotonic() - t,
              code(N.nvmlEventSetWait, es, 50)]
    """)
    index, xid, waited, then = result
    assert (index, xid, then) == (1, 13, 10)
    assert 0.25 <= waited < 3.0


def test_mig_handle_cannot_register_events(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(mig=True, mig_devices=[MigDevice(0)])])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    m = N.nvmlDeviceGetMigDeviceHandleByIndex(N.nvmlDeviceGetHandleByIndex(0), 0)
    es = N.nvmlEventSetCreate()
    result = code(N.nvmlDeviceRegisterEvents, m, 8, es)
    """)
    assert result == 3


# --------------------------------------------------------------------------------------
# Reloading, stalls, threads, call counting


def test_values_change_between_polls(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(util=10)])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    seen = []
    for u in range(10, 100, 7):  # same-length values: only the contents change
        write_scenario(SCENARIO, devices=[Gpu(util=u)])
        seen.append(N.nvmlDeviceGetUtilizationRates(h).gpu)
    # rewritten in place within one clock tick: still seen (fresh files are re-read)
    inplace = []
    for u in (11, 22, 33):
        SCENARIO.write_text(Scenario(gpus=[Gpu(util=u)]).render())
        inplace.append(N.nvmlDeviceGetUtilizationRates(h).gpu)
    write_scenario(SCENARIO, devices=[Gpu(), Gpu(), Gpu()])
    grown = N.nvmlDeviceGetCount()
    write_scenario(SCENARIO, devices=[Gpu(util=1)])
    gone = code(N.nvmlDeviceGetName, N.nvmlDeviceGetHandleByIndex(0)), \\
        N.nvmlDeviceGetCount()
    SCENARIO.unlink()
    kept = N.nvmlDeviceGetUtilizationRates(h).gpu
    result = dict(seen=seen, inplace=inplace, grown=grown, gone=list(gone), kept=kept)
    """)
    assert result == {
        "seen": list(range(10, 100, 7)), "inplace": [11, 22, 33], "grown": 3,
        "gone": [0, 1], "kept": 1,
    }


def test_removed_gpu_handle_is_invalid(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(), Gpu()])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    h1 = N.nvmlDeviceGetHandleByIndex(1)
    write_scenario(SCENARIO, devices=[Gpu()])
    result = code(N.nvmlDeviceGetName, h1)
    """)
    assert result == 2


def test_stall_does_not_block_other_calls(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(), Gpu(mem_used=7, stalls={"memory": 1500})])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    h0, h1 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
    out = {}
    def stalled():
        t = time.monotonic()
        out["used"] = N.nvmlDeviceGetMemoryInfo(h1).used
        out["stalled"] = time.monotonic() - t
    th = threading.Thread(target=stalled)
    th.start()
    time.sleep(0.2)
    t = time.monotonic()
    for _ in range(20):
        N.nvmlDeviceGetMemoryInfo(h0)
        N.nvmlDeviceGetUtilizationRates(h1)  # another category on the stalled GPU
    out["others"] = time.monotonic() - t
    th.join()
    result = out
    """)
    assert result["used"] == 7
    assert 1.4 <= result["stalled"] < 5
    assert result["others"] < 0.5


def test_stall_ends_when_removed(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(stalls={"all": 60_000})])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    def later():
        time.sleep(0.4)
        write_scenario(SCENARIO, devices=[Gpu(temp=55)])
    threading.Thread(target=later).start()
    t = time.monotonic()
    temp = N.nvmlDeviceGetTemperature(h, 0)
    result = [temp, time.monotonic() - t]
    """)
    temp, waited = result
    assert temp == 55
    assert 0.35 <= waited < 5


def test_system_stalls(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu()], system_stalls={"init": 400, "count": 300})
    result = run_py(lib_dir, scenario, """
    t = time.monotonic(); N.nvmlInit(); init = time.monotonic() - t
    t = time.monotonic(); N.nvmlDeviceGetCount(); cnt = time.monotonic() - t
    t = time.monotonic(); N.nvmlSystemGetDriverVersion(); drv = time.monotonic() - t
    result = [init, cnt, drv]
    """)
    init, cnt, drv = result
    assert init >= 0.38 and cnt >= 0.28 and drv < 0.2


def test_stall_then_lost(lib_dir: Path, scenario: Path) -> None:
    """A call stalled on a GPU that falls off the bus meanwhile returns GPU_IS_LOST."""
    write_scenario(scenario, devices=[Gpu(stalls={"power": 800})])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    def later():
        time.sleep(0.2)
        write_scenario(SCENARIO, devices=[Gpu(stalls={"power": 800}, lost=True)])
    threading.Thread(target=later).start()
    result = code(N.nvmlDeviceGetPowerUsage, h)
    """)
    assert result == 15


def test_call_count(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(), Gpu()])
    result = run_py(lib_dir, scenario, """
    c0 = count()
    N.nvmlInit()                                  # 1
    h = N.nvmlDeviceGetHandleByIndex(0)           # 2
    N.nvmlDeviceGetName(h)                        # 3
    code(N.nvmlDeviceGetHandleByIndex, 5)         # 4: failed calls count too
    N.nvmlDeviceGetComputeRunningProcesses(h)     # 5: no processes, one call
    str(N.NVMLError(15))                          # nvmlErrorString is not counted
    N.nvmlShutdown()                              # 6
    code(N.nvmlDeviceGetCount)                    # 7: uninitialized still counts
    result = count() - c0
    """)
    assert result == 7


def test_threads_while_rewriting(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, devices=[Gpu(util=1), Gpu(util=1)])
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    hs = [N.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
    errors, seen, done = [], set(), []
    stop = threading.Event()
    c0 = count()
    def work():
        n = 0
        try:
            while not stop.is_set() or n < 300:
                h = hs[n % 2]
                seen.add(N.nvmlDeviceGetUtilizationRates(h).gpu)
                N.nvmlDeviceGetMemoryInfo(h)
                N.nvmlDeviceGetName(h)
                n += 1
        except Exception as exc:
            errors.append(repr(exc))
        done.append(n)
    ths = [threading.Thread(target=work) for _ in range(8)]
    for th in ths:
        th.start()
    for u in range(2, 40):
        write_scenario(SCENARIO, devices=[Gpu(util=u), Gpu(util=u)])
        time.sleep(0.002)
    stop.set()
    for th in ths:
        th.join()
    result = dict(errors=errors, calls=count() - c0, expected=3 * sum(done),
                  distinct=len(seen))
    """)
    assert result["errors"] == []
    assert result["calls"] == result["expected"]
    assert result["distinct"] > 1


# --------------------------------------------------------------------------------------
# In-process loading


def test_load_in_process_binds_pynvml(lib_dir: Path, scenario: Path) -> None:
    write_scenario(scenario, driver="999.1.2", devices=[Gpu(name="In Process GPU")])
    result = run_py(lib_dir, scenario, """
    assert "LD_LIBRARY_PATH" not in os.environ
    N.nvmlInit()
    c0 = call_count(SIM)
    name = N.nvmlDeviceGetName(N.nvmlDeviceGetHandleByIndex(0))
    calls = call_count() - c0
    driver = N.nvmlSystemGetDriverVersion()
    same = N.nvmlLib._handle == SIM._handle
    # another scenario, chosen through the environment of this same process
    other = LIB_DIR.parent / "other_scenario.txt"
    write_scenario(other, driver="1.0", devices=[Gpu(), Gpu(), Gpu()])
    os.environ["NVML_SIM_SCENARIO"] = str(other)
    count3 = N.nvmlDeviceGetCount()
    reset(SIM)
    after_reset = code(N.nvmlDeviceGetCount)
    result = [name, driver, calls, same, count3, after_reset]
    """, in_process=True)
    assert result == ["In Process GPU", "999.1.2", 2, True, 3, 1]


def test_without_the_library_pynvml_fails(lib_dir: Path, scenario: Path) -> None:
    """Sanity check of the harness: nothing else answers as the simulator would."""
    write_scenario(scenario, driver="999.1.2", devices=[Gpu()])
    environ = dict(os.environ, NVML_SIM_SCENARIO=str(scenario), PYTHONPATH=str(ROOT))
    environ.pop("LD_LIBRARY_PATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", "import pynvml as N\ntry:\n N.nvmlInit()\n"
         " print(N.nvmlSystemGetDriverVersion())\nexcept N.NVMLError as e:\n print(e.value)"],
        env=environ, capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() != "999.1.2"


# --------------------------------------------------------------------------------------
# Scenario writer


def test_render_format(tmp_path: Path) -> None:
    text = Scenario(
        gpus=[Gpu(name="NVIDIA H100 80GB HBM3", util=5, mig=True, unsupported={"power", "ecc"},
                  stalls={"memory": 3000}, xids=[79],
                  processes=[Process(1, None)],
                  mig_devices=[MigDevice(1, gi=3, processes=[Process(2, 10)])]),
              Gpu(lost=True)],
        driver="550.54.15", cuda=12040, init_error=0, system_stalls={"init": 5},
        extra=["# trailing comment"],
    ).render()
    lines = text.splitlines()
    assert lines[:4] == ['driver "550.54.15"', "cuda 12040", "init_error 0",
                         "stall system init 5"]
    gpu0 = lines[4]
    assert gpu0.startswith('gpu 0 name="NVIDIA H100 80GB HBM3" ')
    assert " util=5 " in gpu0 and " mig=1 " in gpu0 and "uuid=" not in gpu0
    assert lines[5:11] == [
        "mig 0 1 gi=3 ci=0 mem_total=0 mem_used=0 mem_reserved=0",
        "proc 0 pid=1 used=na",
        "proc 0/1 pid=2 used=10",
        "unsupported 0 ecc,power",
        "stall 0 memory 3000",
        "xid 0 79",
    ]
    assert lines[11].startswith("gpu 1 ")
    assert lines[12:] == ["lost 1", "# trailing comment"]
    path = write_scenario(tmp_path / "s.txt", devices=[Gpu()])
    assert path.read_text() == Scenario(gpus=[Gpu()]).render()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("bad", [
    Scenario(gpus=[Gpu(unsupported={"powr"})]),
    Scenario(gpus=[Gpu(stalls={"nope": 1})]),
    Scenario(system_stalls={"memory": 1}),
    Scenario(gpus=[Gpu(name='say "hi"')]),
])
def test_render_rejects(bad: Scenario) -> None:
    with pytest.raises(ValueError):
        bad.render()


def test_hand_written_scenario(lib_dir: Path, scenario: Path) -> None:
    """The line format as a person writes it: comments, quoting, hex, defaults."""
    scenario.write_text(textwrap.dedent("""\
        # two GPUs
        driver 550.54.15
        cuda 12040            # as nvmlSystemGetCudaDriverVersion returns it
        init_error 0
        gpu 0 name="NVIDIA H100 80GB HBM3" clocks_event=0x0000000000000004 pci=0000:3b:00.0
        gpu 1 name="name # with hash" mig=1
        mig 1 1 gi=1 ci=0 uuid=MIG-x mem_total=100 mem_used=50
        proc 1/1 pid=4242 used=40
        unsupported 0 power,energy ecc
    """))
    result = run_py(lib_dir, scenario, """
    N.nvmlInit()
    h0, h1 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
    m = N.nvmlDeviceGetMigDeviceHandleByIndex(h1, 1)
    result = [N.nvmlDeviceGetName(h0), N.nvmlDeviceGetName(h1),
              N.nvmlDeviceGetCurrentClocksEventReasons(h0),
              N.nvmlDeviceGetPciInfo(h0).busId,
              [code(N.nvmlDeviceGetPowerUsage, h0), code(N.nvmlDeviceGetTotalEnergyConsumption, h0),
               code(N.nvmlDeviceGetTotalEccErrors, h0, 0, 0)],
              [p.pid for p in N.nvmlDeviceGetComputeRunningProcesses(m)],
              N.nvmlDeviceGetMemoryInfo(h0).total]
    """)
    assert result == ["NVIDIA H100 80GB HBM3", "name # with hash", 4, "00000000:3B:00.0",
                      [3, 3, 3], [4242], 85_520_809_984]
