"""``fleet-simulator``: play N cars x M devices (the gateway side) against an MQTT broker.

Exit codes: 0 = done (also after Ctrl-C / SIGTERM); 1 = a bounded run ended with
a car that never completed a connect sequence, or the TLS files are unusable;
2 = bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ..transport import BrokerAddress
from ..transport.tls import client_tls_context
from .config import DEFAULT_DEVICE_TYPE, DEFAULT_MODULE, DEFAULT_ROLE_PREFIX, GatewayTimings
from .fleet import Fleet, FleetConfig, car_names
from .live import LiveProgress
from .summary import FleetSummary

DEFAULT_BROKER = "127.0.0.1:1883"
DEFAULT_COMPANY = "bringauto"
_INTERRUPT_DRAIN_S = 2.0
_VERBOSE_CAR_LIMIT = 10


def parse_broker(text: str) -> BrokerAddress:
    """``host:port``, ``[v6]:port`` or ``host`` (port 1883)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or "1883"
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, "1883"
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid broker port in {text!r}") from None
    if not host or not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"invalid broker address {text!r} (expected host:port)")
    return BrokerAddress(host, port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-simulator",
        description="Simulate Module Gateways (the car side of the Fleet Protocol) against an MQTT broker.",
    )
    parser.add_argument("--broker", type=parse_broker, default=parse_broker(DEFAULT_BROKER), help="host:port")
    parser.add_argument("--company", default=DEFAULT_COMPANY)
    cars = parser.add_mutually_exclusive_group()
    cars.add_argument("--cars", help="comma-separated car names (default: car_0)")
    cars.add_argument("--car-count", type=int, help="number of cars named <car-prefix>0..N-1")
    parser.add_argument("--car-prefix", default="car_")
    parser.add_argument("--devices", type=int, default=1, help="devices per car (roles <role-prefix>0..M-1)")
    parser.add_argument("--module", type=int, default=DEFAULT_MODULE)
    parser.add_argument("--device-type", type=int, default=DEFAULT_DEVICE_TYPE)
    parser.add_argument("--role-prefix", default=DEFAULT_ROLE_PREFIX)
    parser.add_argument("--rate", type=float, default=1.0, help="statuses per second per car (open loop)")
    parser.add_argument("--closed-loop", action="store_true", help="next status right after each response")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run; 0 = until Ctrl-C")
    parser.add_argument("--statuses", type=int, help="stop each car after this many statuses")
    parser.add_argument("--status-size", type=int, default=0, help="pad status data to this many bytes")
    parser.add_argument("--cars-per-connection", type=int, default=1, help="share MQTT connections")
    parser.add_argument(
        "--stagger", type=float, default=0.0, help="spread car starts over S seconds (0 = storm)"
    )
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="per read in the connect sequence")
    parser.add_argument("--status-timeout", type=float, default=30.0, help="status response timeout")
    parser.add_argument("--reconnect-delay", type=float, default=10.0, help="after a failed connect sequence")
    parser.add_argument(
        "--keep-sessions",
        action="store_true",
        help="at the end, do not unplug the devices (DISCONNECT); the server then keeps the sessions "
        "until its session timeout, like for a gateway that is switched off",
    )
    parser.add_argument("--json", type=Path, help="write the summary as JSON to this file")
    parser.add_argument(
        "--per-car", action="store_true", help="per-car rows in the table even for big fleets"
    )
    parser.add_argument("--tls", action="store_true", help="mutual TLS (needs --ca, --cert, --key)")
    parser.add_argument("--ca", type=Path)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--live", action="store_true", help="print one progress line per second")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _fleet_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> FleetConfig:
    if args.cars:
        cars = tuple(name.strip() for name in args.cars.split(",") if name.strip())
    else:
        count = 1 if args.car_count is None else args.car_count
        if count < 1:
            parser.error("--car-count must be >= 1")
        cars = car_names(count, args.car_prefix)
    if args.tls and not (args.ca and args.cert and args.key):
        parser.error("--tls needs --ca, --cert and --key")
    if args.duration < 0:
        parser.error("--duration must be >= 0")
    tls_context = client_tls_context(args.ca, args.cert, args.key) if args.tls else None
    try:
        return FleetConfig(
            broker=args.broker,
            company=args.company,
            cars=cars,
            devices_per_car=args.devices,
            module=args.module,
            device_type=args.device_type,
            role_prefix=args.role_prefix,
            rate_hz=args.rate,
            closed_loop=args.closed_loop,
            duration_s=args.duration or None,
            statuses_per_car=args.statuses,
            cars_per_connection=args.cars_per_connection,
            stagger_s=args.stagger,
            status_size=args.status_size,
            disconnect_at_end=not args.keep_sessions,
            timings=GatewayTimings(
                connect_response_timeout_s=args.connect_timeout,
                status_response_timeout_s=args.status_timeout,
                reconnect_delay_s=args.reconnect_delay,
                drain_timeout_s=_INTERRUPT_DRAIN_S,
            ),
            tls_context=tls_context,
        )
    except ValueError as exc:
        parser.error(str(exc))


def _configure_logging(args: argparse.Namespace, car_count: int) -> None:
    if args.quiet:
        level = logging.ERROR
    elif args.verbose:
        level = logging.DEBUG
    else:
        level = logging.INFO if car_count <= _VERBOSE_CAR_LIMIT else logging.WARNING
    logging.basicConfig(
        level=logging.WARNING if not args.verbose else logging.DEBUG,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("external_server").setLevel(level)


async def _run(config: FleetConfig, args: argparse.Namespace) -> tuple[FleetSummary, bool]:
    """Run the fleet until its bound or a signal; (summary, interrupted)."""
    loop = asyncio.get_running_loop()
    fleet = Fleet(config)
    interrupted = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        interrupted.set()
        if signals > 1:  # a second Ctrl-C: do not wait for answers in flight
            fleet.stop(drain=False)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    live = LiveProgress(fleet) if args.live and not args.quiet else None
    try:
        await fleet.start()
        if live is not None:
            live.start()
        finished = loop.create_task(fleet.wait(), name="fleet-simulator:wait")
        stopped = loop.create_task(interrupted.wait(), name="fleet-simulator:signal")
        await asyncio.wait({finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        await fleet.close(drain=signals <= 1)
        await finished
    finally:
        if live is not None:
            await live.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
    return fleet.summary(), interrupted.is_set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _fleet_config(args, parser)
    except (OSError, ValueError) as exc:  # unreadable or mismatching TLS files
        print(f"fleet-simulator: TLS setup failed: {exc}", file=sys.stderr)
        return 1
    _configure_logging(args, len(config.cars))
    target = "until Ctrl-C" if config.duration_s is None else f"for {config.duration_s:g} s"
    if not args.quiet:
        print(
            f"fleet-simulator: {len(config.cars)} car(s) x {config.devices_per_car} device(s) of company "
            f"{config.company} against {config.broker}, {config.mode}, {target}",
            flush=True,
        )
    try:
        summary, interrupted = asyncio.run(_run(config, args))
    except KeyboardInterrupt:  # only before the signal handlers are installed
        print("fleet-simulator: interrupted", file=sys.stderr)
        return 0
    print(summary.format_table(per_car=True if args.per_car else None), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    if not interrupted and not summary.all_cars_connected:
        missing = summary.car_count - summary.cars_ever_connected
        print(f"fleet-simulator: {missing} car(s) never completed a connect sequence", file=sys.stderr)
        return 1
    return 0
