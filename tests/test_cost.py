"""GPU prices: the ``[cost]`` settings and their errors, and each GPU's hourly cost series
from the real daemon with the real nvidia-ml-py bindings against the simulated NVML."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from exporter.cli import ENV_PREFIX, load_config, main, parser
from exporter.config import Config, ConfigError
from exporter.cost import MAX_MODELS, Pricing
from tests.nvml_sim import MigDevice, Scenario, build, env, h100
from tests.support.harness import Daemon, Series, pick, wait_for

COST = "inference_node_gpu_hourly_cost"
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
FAST = ["--poll.interval", "200ms", "--poll.timeout", "200ms", "--poll.max-backoff", "400ms",
        "--no-collector.vllm", "--no-collector.host"]


def cfg(tmp_path: Path, file: str | None = None, argv: tuple[str, ...] = (),
        environ: dict[str, str] | None = None) -> Config:
    if file is not None:
        (tmp_path / "c.toml").write_text(file)
        argv = ("--config.file", str(tmp_path / "c.toml"), *argv)
    return load_config(parser().parse_args(list(argv)), environ or {})


# -- the settings -------------------------------------------------------------------------------

def test_no_price_by_default() -> None:
    pricing = Config().pricing
    assert not pricing.priced and pricing.of(H100) is None and pricing.currency == "USD"


def test_the_model_table_is_matched_exactly_then_falls_back_to_the_single_figure(
        tmp_path: Path) -> None:
    c = cfg(tmp_path, f'[cost]\ncurrency = "EUR"\ngpu_hourly_price = 1.5\n'
                      f'[cost.gpu_hourly_prices]\n"{H100}" = 2.49\n"{A100}" = 1\n')
    p = c.pricing
    assert p == Pricing(1.5, {H100: 2.49, A100: 1.0}, "EUR")
    assert p.of(H100) == 2.49 and p.of(A100) == 1.0
    # Exact names only: any other spelling gets the single figure.
    assert p.of(H100.lower()) == 1.5 and p.of("NVIDIA H100") == 1.5 and p.of("") == 1.5
    # Without the single figure, a GPU not in the table has no price.
    p = cfg(tmp_path, f'[cost]\ngpu_hourly_prices = {{"{H100}" = 2.49}}\n').pricing
    assert p.of(H100) == 2.49 and p.of(A100) is None
    # The environment and flags override the file's single figure and currency.
    p = cfg(tmp_path, '[cost]\ngpu_hourly_price = 1.5\n', ("--cost.gpu-hourly-price", "3"),
            {ENV_PREFIX + "COST_CURRENCY": "JPY"}).pricing
    assert (p.gpu_hourly_price, p.currency) == (3.0, "JPY")
    assert "EUR per GPU-hour" in Pricing(1.5, {H100: 2.0}, "EUR").describe()


@pytest.mark.parametrize(("argv", "file", "message"), [
    (("--cost.currency", "usd"), None, "cost.currency: expected an ISO 4217 currency code"),
    (("--cost.currency", "EURO"), None, "ISO 4217"),
    ((), '[cost]\ncurrency = 978\n', "ISO 4217"),
    (("--cost.gpu-hourly-price", "cheap"), None, "expected a price such as 2.49"),
    (("--cost.gpu-hourly-price", "0"), None, "a price must be a finite number above 0"),
    (("--cost.gpu-hourly-price", "-2"), None, "above 0"),
    (("--cost.gpu-hourly-price", "nan"), None, "above 0"),
    (("--cost.gpu-hourly-price", "inf"), None, "above 0"),
    (("--cost.gpu-hourly-price", "2000000"), None, "must be at most 1e+06"),
    ((), "[cost]\ngpu_hourly_price = true\n", "expected a price"),
    ((), '[cost]\ngpu_hourly_prices = "2.49"\n', "expected a table"),
    ((), '[cost.gpu_hourly_prices]\n"" = 2\n', "is not a GPU name"),
    ((), '[cost.gpu_hourly_prices]\n" NVIDIA H100" = 2\n', "is not a GPU name"),
    ((), f'[cost.gpu_hourly_prices]\n"{H100}" = -1\n', f"cost.gpu_hourly_prices.'{H100}'"),
    ((), f'[cost.gpu_hourly_prices]\n"{H100}" = {{ a = 1 }}\n', "expected a price"),
    ((), "[cost]\nprice = 2\n", "unknown setting 'cost.price'"),
])
def test_an_invalid_price_or_currency_is_one_clear_message(
        tmp_path: Path, argv: tuple[str, ...], file: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^[^\n]*$") as info:
        cfg(tmp_path, file, argv)
    assert message in str(info.value)


def test_too_many_models_and_the_table_in_the_environment_are_refused(tmp_path: Path) -> None:
    rows = "".join(f'"GPU {i}" = 1\n' for i in range(MAX_MODELS + 1))
    with pytest.raises(ConfigError, match=f"at most {MAX_MODELS} GPU models"):
        cfg(tmp_path, "[cost.gpu_hourly_prices]\n" + rows)
    # The table is file only: a flat variable cannot hold names with spaces and prices.
    with pytest.raises(ConfigError, match="unknown variable"):
        cfg(tmp_path, environ={ENV_PREFIX + "COST_GPU_HOURLY_PRICES": "x=1"})


def test_a_bad_price_stops_the_start_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cost.gpu-hourly-price", "-1"], {}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cost.gpu_hourly_price" in err[0], err
    assert main(["--config.check", "--cost.gpu-hourly-price", "2.5"], {}) == 0
    assert "GPU prices: USD per GPU-hour: any other GPU 2.5" in capsys.readouterr().out


# -- the series, through the simulated NVML -----------------------------------------------------

@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("nvml-sim"))


def start(tmp_path: Path, lib_dir: Path, scenario: Scenario, toml: str | None,
          *args: str) -> Daemon:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = scenario.write(tmp_path / "scenario.txt")
    extra: list[str] = []
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
        extra = ["--config.file", str(tmp_path / "c.toml")]
    return Daemon(tmp_path, [*FAST, *extra, *args], env=env(lib_dir, path)).start()


def gpu_up(d: Daemon) -> Series | None:
    s = d.series()
    return s if pick(s, "inference_node_exporter_collector_up", collector="gpu") == [1.0] \
        else None


def serve(tmp_path: Path, lib_dir: Path, scenario: Scenario, toml: str | None,
          *args: str) -> Series:
    """The series of the daemon once the GPU collector is up."""
    with start(tmp_path, lib_dir, scenario, toml, *args) as d:
        return wait_for("the gpu collector up", lambda: gpu_up(d))


def uuid(index: int) -> str:
    return f"GPU-4f1c2a7e-0000-4000-8000-00000000000{index}"


def test_each_gpu_is_priced_by_its_name_then_the_single_figure(tmp_path: Path,
                                                                lib_dir: Path) -> None:
    scenario = Scenario(gpus=[h100(0), replace(h100(1), name=A100),
                              replace(h100(2), name="NVIDIA L4"), h100(3)])
    toml = (f'[cost]\ncurrency = "EUR"\ngpu_hourly_price = 0.8\n'
            f'[cost.gpu_hourly_prices]\n"{H100}" = 2.49\n"{A100}" = 1.29\n')
    with start(tmp_path, lib_dir, scenario, toml) as d:
        s = wait_for("the gpu collector up", lambda: gpu_up(d))
        assert pick(s, COST, gpu="0", uuid=uuid(0), currency="EUR") == [2.49]
        assert pick(s, COST, gpu="1", uuid=uuid(1), currency="EUR") == [1.29]
        assert pick(s, COST, gpu="2", uuid=uuid(2), currency="EUR") == [0.8]  # not in the table
        assert len(pick(s, COST)) == 4
        # A GPU fallen off the bus is still paid for.
        gpus = list(scenario.gpus)
        gpus[3] = replace(gpus[3], lost=True)
        replace(scenario, gpus=gpus).write(tmp_path / "scenario.txt")
        s = wait_for("GPU 3 lost", lambda: (x := d.series()) and pick(
            x, "inference_node_gpu_lost", gpu="3") == [1.0] and x)
        assert pick(s, COST, gpu="3", uuid=uuid(3), currency="EUR") == [2.49]


def test_no_price_means_no_series(tmp_path: Path, lib_dir: Path) -> None:
    gpus = [h100(0), replace(h100(1), name=A100)]
    s = serve(tmp_path, lib_dir, Scenario(gpus=gpus), None)
    assert pick(s, COST) == [] and pick(s, "inference_node_gpus") == [2.0]
    # A table without the single figure prices only the GPUs it names.
    s = serve(tmp_path / "table", lib_dir, Scenario(gpus=gpus),
              f'[cost.gpu_hourly_prices]\n"{A100}" = 1.29\n')
    assert pick(s, COST, gpu="0") == []
    assert pick(s, COST, gpu="1", uuid=uuid(1), currency="USD") == [1.29]


def test_a_mig_gpu_is_priced_whole(tmp_path: Path, lib_dir: Path) -> None:
    gpu = replace(h100(0), mig=True, mig_devices=[
        MigDevice(slot=0, gi=1, mem_total=40_000_000_000, mem_used=1),
        MigDevice(slot=1, gi=2, mem_total=40_000_000_000, mem_used=2)])
    s = serve(tmp_path, lib_dir, Scenario(gpus=[gpu]), None, "--cost.gpu-hourly-price", "3.5",
              "--cost.currency", "USD")
    assert pick(s, "inference_node_gpu_memory_used_bytes", gpu="0", gpu_instance="2") == [2.0]
    assert [(dict(labels), v) for (n, labels), v in s.items() if n == COST] == [
        ({"gpu": "0", "uuid": uuid(0), "currency": "USD"}, 3.5)]
