"""Command line: ``external-server [-c|--config PATH | PATH] [--tls|--no-tls] [--ca F] [--cert F]
[--key F] [--http-port N]`` (docs/protocol.md §6.8, §6.9; docs/design.md "Configuration and CLI").

Exit codes: 0 clean stop (also Ctrl-C), 1 bad arguments, missing/invalid config or a
startup failure. Every user error is one message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn, cast

from .config import (
    ConfigError,
    ConfigFileNotFoundError,
    ServerConfig,
    TlsDefaults,
    TlsFiles,
    check_secret_references,
    load_config,
    redacted_summary,
)
from .logging_setup import setup_logging

DEFAULT_CONFIG_PATH = Path("./config/config.json")
APP_MODULE = "external_server.app"
PROG = "external-server"
# Wording of the reference's TLS argument error (docs/protocol.md §6.8).
TLS_PARAMETERS = {
    "ca": "ca certificate (--ca)",
    "cert": "PEM encoded client certificate (--cert)",
    "key": "private key to PEM encoded client certificate (--key)",
}

log = logging.getLogger("external_server.cli")


class CliError(Exception):
    """Bad command line; the message is printed as is and the exit code is 1."""


@dataclass(frozen=True, slots=True)
class CliOptions:
    """Parsed command line. ``ca/cert/key`` mean something only when ``tls`` is set."""

    config_path: Path = DEFAULT_CONFIG_PATH
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    http_port: int | None = None  # None: the server's default (8080); 0 picks a free port
    http_host: str = "0.0.0.0"  # all interfaces: Kubernetes probes reach the pod IP


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.format_usage()}{self.prog}: error: {message}")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {value}")
    return value


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Fleet Protocol External Server")
    parser.add_argument("config", nargs="?", type=Path, help=f"config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("-c", "--config", dest="config_option", type=Path, metavar="PATH", help="config file")
    parser.add_argument(
        "--tls", action=argparse.BooleanOptionalAction, default=False, help="mutual TLS to the broker"
    )
    parser.add_argument("--ca", type=Path, help="CA certificate file (with --tls)")
    parser.add_argument("--cert", type=Path, help="PEM client certificate (with --tls)")
    parser.add_argument("--key", type=Path, help="PEM private key of the client certificate (with --tls)")
    parser.add_argument(
        "--http-port",
        type=_port,
        help="port of the /healthz /readyz /status /metrics endpoint (default 8080, 0 = any)",
    )
    parser.add_argument(
        "--http-host", default="0.0.0.0", help="address the HTTP endpoint binds (default 0.0.0.0)"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> CliOptions:
    """Parse without side effects (``--help`` aside); CliError on bad usage."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.config is not None and args.config_option is not None:
        raise CliError(
            "Invalid arguments. Give the config file either as PATH or with -c/--config, not both."
        )
    config_path = args.config_option or args.config or DEFAULT_CONFIG_PATH
    return CliOptions(
        config_path=config_path,
        tls=args.tls,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        http_port=args.http_port,
        http_host=args.http_host,
    )


def resolve_tls(options: CliOptions, defaults: TlsDefaults | None = None) -> TlsFiles | None:
    """The TLS files to use: CLI paths, else the config file's (§10 item 11); None without --tls.

    CliError lists every missing parameter at once, or every file that does not exist.
    """
    if not options.tls:
        return None
    defaults = defaults or TlsDefaults()
    ca, cert, key = options.ca or defaults.ca, options.cert or defaults.cert, options.key or defaults.key
    chosen = {"ca": ca, "cert": cert, "key": key}
    if ca is None or cert is None or key is None:
        missing = [TLS_PARAMETERS[name] for name, path in chosen.items() if path is None]
        raise CliError(f"Invalid arguments. TLS requires additional parameters: {', '.join(missing)}")
    absent = [
        f"{TLS_PARAMETERS[name]}: {path}" for name, path in chosen.items() if path and not path.is_file()
    ]
    if absent:
        raise CliError(f"Invalid arguments. TLS file not found: {', '.join(absent)}")
    return TlsFiles(ca=ca, cert=cert, key=key)


def _prepare(options: CliOptions) -> tuple[ServerConfig, CliOptions]:
    """Load and check everything that can be checked before the server is built."""
    config = load_config(options.config_path)
    check_secret_references(config)
    tls = resolve_tls(options, config.broker.tls_defaults)
    config = config.model_copy(update={"broker": config.broker.model_copy(update={"tls": tls})})
    if tls is None:
        options = replace(options, ca=None, cert=None, key=None)
    else:
        options = replace(options, ca=tls.ca, cert=tls.cert, key=tls.key)
    return config, options


RunFunction = Callable[[ServerConfig, CliOptions], int | None]


def _load_app() -> RunFunction:
    """The composition root, imported only once the config is valid (a bad file fails fast)."""
    module = importlib.import_module(APP_MODULE)
    return cast(RunFunction, module.run)


def _run(argv: Sequence[str] | None) -> int:
    try:
        options = parse_args(argv)
    except CliError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        config, options = _prepare(options)
    except ConfigFileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"Invalid config: {exc}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        setup_logging(config.logging)
    except OSError as exc:
        print(f"Invalid config: logging.file.path: cannot open the log file: {exc}", file=sys.stderr)
        return 1
    for warning in config.load_warnings:
        log.warning("Config: %s", warning)
    summary = redacted_summary(config)
    log.info("Loaded config: %s", json.dumps(summary))
    return _load_app()(config, options) or 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``external-server`` and ``python -m external_server``."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        return 0
