"""Command line: flags, their environment twins, and the entry point."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from exporter import __version__, engines, logs
from exporter.config import Config, apply, check, collector_names, read_file
from exporter.endpoints import DEFAULT_PORT
from exporter.engines.adapter import Adapter
from exporter.fetch import redact
from exporter.settings import ConfigError, format_duration, show
from exporter.webconfig import WebConfig
from exporter.webconfig import load as load_web_config

__all__ = ["ENV_PREFIX", "Flag", "Loaded", "flags", "load", "main"]

Loaded = tuple[Config, WebConfig | None]
"""The daemon's settings and its web configuration file, read and checked."""

ENV_PREFIX = "INFERENCE_NODE_EXPORTER_"
EXIT_CONFIG = 2


@dataclass(frozen=True, slots=True)
class Flag:
    """A command-line flag, the setting it sets and its help."""

    flag: str
    setting: str
    help: str
    metavar: str = "VALUE"
    repeat: bool = False
    switch: bool = False
    """An on/off flag: ``--x`` and ``--no-x``, ``true`` or ``false`` in the environment."""

    @property
    def usage(self) -> str:
        """How the flag is written (the README's flag table)."""
        if self.switch:
            return f"--[no-]{self.flag.removeprefix('--')}"
        return f"{self.flag} {self.metavar}"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").replace(".", "_").replace("-", "_").upper()

    @property
    def dest(self) -> str:
        return self.setting.replace(".", "__")


def engine_flags(a: Adapter) -> tuple[Flag, ...]:
    """The flags of one engine adapter."""
    default = f" Default {a.default_url}." if a.polled_by_default else " Default: none."
    return (
        Flag(f"--{a.kind}.endpoint", f"{a.kind}.endpoints",
             f"{a.title} metrics URL to poll; repeat for several servers (environment:"
             " comma-separated). NAME=URL sets the endpoint label; a URL without a path gets"
             f" {a.metrics_path}.{default}", "[NAME=]URL", repeat=True),
        Flag(f"--{a.kind}.max-engines-per-endpoint", f"{a.kind}.max_engines_per_endpoint",
             "Most (model, data-parallel rank) label sets kept per endpoint; more are dropped"
             " and counted (default 64).", "N"),
    )


def flags() -> tuple[Flag, ...]:
    """Every flag: the web ones, each registered engine's, then the rest."""
    return (*_WEB_FLAGS, *(f for a in engines.adapters() for f in engine_flags(a)),
            *_FLAGS)


_WEB_FLAGS: tuple[Flag, ...] = (
    Flag("--web.listen-address", "web.listen_address",
         f"Address to serve /metrics, /healthz and / on (default 0.0.0.0:{DEFAULT_PORT}).",
         "HOST:PORT"),
    Flag("--web.config.file", "web.config_file",
         "Web configuration file (YAML, Prometheus exporter-toolkit format): TLS, client"
         " certificates and basic auth for every endpoint; re-read on SIGHUP (default: none,"
         " plain HTTP).", "PATH"),
)
_FLAGS: tuple[Flag, ...] = (
    Flag("--poll.interval", "poll.interval",
         "How often every source is polled (default 5s).", "DURATION"),
    Flag("--poll.timeout", "poll.timeout",
         "Deadline of one poll, connection to last byte; at most the interval (default 3s).",
         "DURATION"),
    Flag("--poll.stale-after", "poll.stale_after",
         "How long a down source's last gauges, counters and histograms are still served;"
         " its rates and percentiles never are (default 1m).", "DURATION"),
    Flag("--poll.max-backoff", "poll.max_backoff",
         "Longest wait between polls of a source that keeps timing out or sending oversized"
         " answers (other failures are retried every interval); shorter than"
         " --poll.stale-after (default 30s).", "DURATION"),
    Flag("--poll.max-response-bytes", "poll.max_response_bytes",
         "Largest upstream response read; larger ones fail the poll (default 16777216).", "N"),
    Flag("--derive.windows", "derive.windows",
         "Sliding windows for rates and latency quantiles, comma-separated (default 1m,5m).",
         "DURATIONS"),
    Flag("--derive.quantiles", "derive.quantiles",
         "Latency quantiles to compute, comma-separated (default 0.5,0.95,0.99).", "QUANTILES"),
    Flag("--gpu.expected-count", "gpu.expected_count",
         "GPUs this node should have; exported so that a GPU fallen off the bus is"
         " alertable (default: not set).", "N"),
    Flag("--dcgm.url", "dcgm.url",
         "A local dcgm-exporter's metrics URL, for DCGM's profiling fields (DRAM, SM and"
         " tensor activity); default: not read.", "URL"),
    Flag("--engines.discover", "engines.discover",
         "Find the inference engines running on this node (their processes and listening"
         " ports), check that each answers with its engine's metrics, and poll it until its"
         " process exits; configured endpoints win (default on).", switch=True),
    Flag("--engines.discover-interval", "engines.discover_interval",
         "How often the node is searched for engines (default 30s).", "DURATION"),
    Flag("--engines.max-discovered", "engines.max_discovered",
         "Most engine endpoints discovery polls; more are logged and counted (default 16).",
         "N"),
    Flag("--path.procfs", "path.procfs",
         "Where procfs is mounted, for the host collector and the engines' processes'"
         " allowed CPUs (default /proc).", "PATH"),
    Flag("--path.sysfs", "path.sysfs",
         "Where sysfs is mounted, for the host collector and the GPUs' NUMA nodes (default"
         " /sys).", "PATH"),
    Flag("--cost.gpu-hourly-price", "cost.gpu_hourly_price",
         "Price of one GPU-hour, in --cost.currency, of every GPU that has no entry of its"
         " own in the config file's [cost] gpu_hourly_prices table (by NVML's GPU name);"
         " exported as inference_node_gpu_hourly_cost (default: none, no cost series).",
         "PRICE"),
    Flag("--cost.currency", "cost.currency",
         "ISO 4217 code of the prices: three upper-case letters (default USD).", "CODE"),
    Flag("--canary.endpoint", "canary.endpoints",
         "Probe this engine endpoint (by its name) with a fixed small streaming request, to"
         " measure the platform's latency apart from the workload's; repeat for several"
         " (environment: comma-separated). NAME=URL gives the engine's API URL (default: the"
         " metrics URL's scheme, host and port). Default: none.", "NAME[=URL]", repeat=True),
    Flag("--canary.interval", "canary.interval",
         "Time between two probes of an endpoint (default 10s).", "DURATION"),
    Flag("--canary.timeout", "canary.timeout",
         "Deadline of one probe, connection to last token; at most the interval (default"
         " 8s).", "DURATION"),
    Flag("--canary.prompt-tokens", "canary.prompt_tokens",
         "Length of the probe's fixed prompt, in words of about one token (default 32).", "N"),
    Flag("--canary.max-tokens", "canary.max_tokens",
         "Tokens each probe asks for, with ignore_eos where the engine takes it (default"
         " 16, at most 256).", "N"),
    Flag("--log.level", "log.level", "debug, info, warning or error (default info).", "LEVEL"),
    Flag("--log.format", "log.format",
         "json, logfmt, or auto: logfmt on a terminal, JSON otherwise (default auto).",
         "FORMAT"),
)


class _Help(argparse.HelpFormatter):
    """Wraps help at spaces only: an environment variable's name stays whole, to be copied."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False,
                             break_on_hyphens=False)


def parser() -> argparse.ArgumentParser:
    """The argument parser; every flag's help names its environment variable."""
    p = argparse.ArgumentParser(
        prog="inference-node-exporter",
        formatter_class=_Help,
        description="Prometheus exporter for LLM inference nodes: polls the inference"
        f" engines' /metrics ({', '.join(a.title for a in engines.adapters())}) and serves"
        " queue depth, KV-cache use, tokens/s and windowed latency quantiles under stable"
        " names. Settings come from defaults, then --config.file, then environment"
        " variables, then flags.",
    )
    p.add_argument("--config.file", dest="config_file", metavar="PATH",
                   help=f"TOML configuration file (env {ENV_PREFIX}CONFIG_FILE). Optional.")
    p.add_argument("--config.check", dest="config_check", action="store_true",
                   help="Validate the configuration, print it, and exit.")
    for f in flags():
        if f.switch:
            p.add_argument(f.flag, dest=f.dest, action=argparse.BooleanOptionalAction,
                           default=None, help=f"{f.help} [env {f.env}=true|false]")
            continue
        p.add_argument(f.flag, dest=f.dest, metavar=f.metavar,
                       action="append" if f.repeat else "store",
                       help=f"{f.help} [env {f.env}]")
    for name in collector_names():
        p.add_argument(f"--collector.{name}", dest=f"collector__{name}",
                       action=argparse.BooleanOptionalAction, default=None,
                       help=f"Enable the {name} collector (default on)"
                       f" [env {ENV_PREFIX}COLLECTOR_{name.upper()}=true|false].")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def load(args: argparse.Namespace, environ: Mapping[str, str]) -> Loaded:
    """Build the configuration from the file, the environment and the flags, then read the
    web configuration file it names."""
    cfg = load_config(args, environ)
    return cfg, _web_config(cfg.web_config_file)


def _web_config(path: str | None) -> WebConfig | None:
    """The web config file (TLS, basic auth), read and checked; None when not set."""
    if not path:
        return None
    try:
        return load_web_config(Path(path))
    except ConfigError:
        raise
    except Exception as exc:  # whatever the web config's reader missed
        raise ConfigError(f"web config file {show(path)}: cannot use it: {exc}") from None


def load_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Build the configuration from the file, the environment and the flags."""
    cfg = Config()
    origins = ["defaults"]
    config_file = args.config_file or environ.get(ENV_PREFIX + "CONFIG_FILE")
    if config_file:
        cfg = apply(cfg, read_file(Path(config_file)), f"config file {config_file}")
        origins.append(config_file)
    known = {f.env: f for f in flags()}
    known_collectors = {f"{ENV_PREFIX}COLLECTOR_{n.upper()}": n for n in collector_names()}
    env_settings: dict[str, object] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG_FILE":
            continue
        if key in known:
            env_settings[known[key].setting] = value
        elif key in known_collectors:
            env_settings[f"collectors.{known_collectors[key]}"] = value
        else:
            raise ConfigError(f"environment: unknown variable {key}")
    if env_settings:
        cfg = apply(cfg, env_settings, "environment")
        origins.append("environment")
    flag_settings: dict[str, object] = {}
    for f in flags():
        value = getattr(args, f.dest)
        if value is not None:
            flag_settings[f.setting] = value
    for name in collector_names():
        value = getattr(args, f"collector__{name}")
        if value is not None:
            flag_settings[f"collectors.{name}"] = value
    if flag_settings:
        cfg = apply(cfg, flag_settings, "flags")
        origins.append("flags")
    return check(replace(cfg, source=" + ".join(origins)))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``inference-node-exporter`` command (``report`` runs the variance
    report instead of the daemon)."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["report"]:
        from exporter.report.cli import main as report

        return report(given[1:])
    args = parser().parse_args(given)
    env = dict(os.environ if environ is None else environ)
    try:
        cfg, web = load(args, env)
    except Exception as exc:  # a ConfigError; anything else is treated as one, with no traceback
        message = str(exc) if isinstance(exc, ConfigError) else (
            f"unexpected {type(exc).__name__} while loading it: {exc}")
        print(f"inference-node-exporter: configuration error: {ConfigError(message)}",
              file=sys.stderr)
        return EXIT_CONFIG
    if args.config_check:
        print(_describe(cfg, web))
        return 0
    logs.configure(cfg.log_level, cfg.log_format)
    from exporter.daemon import Daemon

    try:
        daemon = Daemon(cfg, lambda: load(args, env), web=web)
    except OSError as exc:
        print(f"inference-node-exporter: cannot listen on {cfg.listen_address}:"
              f" {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. a TLS setting the ssl module refuses
        print(f"inference-node-exporter: cannot start: {ConfigError(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    return daemon.run()


def _describe(cfg: Config, web: WebConfig | None) -> str:
    lines = [
        f"configuration OK (from {cfg.source})",
        f"listen address: {cfg.listen_address}",
        "web: " + (web.describe() if web is not None
                   else "plain HTTP, no authentication"),
        f"collectors: {', '.join(sorted(cfg.collectors))}",
        f"poll: interval {format_duration(cfg.poll_interval)}, timeout"
        f" {format_duration(cfg.poll_timeout)}, stale after {format_duration(cfg.stale_after)}",
        f"windows: {', '.join(format_duration(w) for w in cfg.windows)};"
        f" quantiles: {', '.join(f'{q:g}' for q in cfg.quantiles)}",
        "engine discovery: " + (f"on, every {format_duration(cfg.discover_interval)}, at most"
                                f" {cfg.max_discovered} endpoints" if cfg.discover else "off"),
        f"GPU prices: {cfg.pricing.describe()}",
    ]
    lines += [f"{kind} endpoint {e.name}: {redact(e.url)}"
              for kind, engine in cfg.engines.items() for e in engine.endpoints]
    return "\n".join(lines)
