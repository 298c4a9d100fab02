"""``external-server-operator``: run the kopf operator for ExternalServer resources.

    external-server-operator                         # all namespaces
    external-server-operator -n fleet -n fleet-dev   # only these namespaces

Only the holder of a Lease (leader election, see leader.py) acts; other processes using the
same Lease wait and take over when it stops. /healthz answers in both roles.

Environment: EXTERNAL_SERVER_OPERATOR_NAMESPACES (comma-separated; empty: all namespaces),
EXTERNAL_SERVER_OPERATOR_LIVENESS_HOST / _LIVENESS_PORT (/healthz; port 0 disables it),
EXTERNAL_SERVER_OPERATOR_LEASE_NAMESPACE / _LEASE_NAME (default: the pod's namespace, else
"default" / "external-server-operator"), EXTERNAL_SERVER_OPERATOR_IDENTITY (default: POD_NAME or the
host name, plus a random suffix), EXTERNAL_SERVER_IMAGE (default server image),
EXTERNAL_SERVER_OPERATOR_STATUS_INTERVAL (seconds between status refreshes). Credentials: the pod's
service account, else KUBECONFIG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import kopf
from aiohttp import web

from . import handlers  # noqa: F401  (importing registers the kopf handlers)
from .kube import KubeApi
from .leader import LeaderElector, LeaseConfig, LeaseLost

ENV_NAMESPACES = "EXTERNAL_SERVER_OPERATOR_NAMESPACES"
ENV_LIVENESS_HOST = "EXTERNAL_SERVER_OPERATOR_LIVENESS_HOST"
ENV_LIVENESS_PORT = "EXTERNAL_SERVER_OPERATOR_LIVENESS_PORT"
ENV_LEASE_NAMESPACE = "EXTERNAL_SERVER_OPERATOR_LEASE_NAMESPACE"
ENV_LEASE_NAME = "EXTERNAL_SERVER_OPERATOR_LEASE_NAME"
ENV_IDENTITY = "EXTERNAL_SERVER_OPERATOR_IDENTITY"
DEFAULT_LIVENESS_PORT = 8081
DEFAULT_LEASE_NAME = "external-server-operator"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

log = logging.getLogger("external_server_operator")


def default_lease_namespace(env: dict[str, str]) -> str:
    if env.get(ENV_LEASE_NAMESPACE):
        return env[ENV_LEASE_NAMESPACE]
    with contextlib.suppress(OSError):
        ns = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        if ns:
            return ns
    return "default"


def default_identity(env: dict[str, str]) -> str:
    """Unique per process: two processes on one host (or two runs of one pod) never share it."""
    base = env.get(ENV_IDENTITY) or env.get("POD_NAME") or socket.gethostname()
    return f"{base}_{secrets.token_hex(4)}"


def parse_args(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> argparse.Namespace:
    env = dict(os.environ) if env is None else env
    parser = argparse.ArgumentParser(
        prog="external-server-operator",
        description="Reconcile fleetprotocol.io/v1alpha1 ExternalServer resources.",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        help=f"watch this namespace (repeatable; default: ${ENV_NAMESPACES} or all namespaces)",
    )
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (cluster-wide)"
    )
    parser.add_argument(
        "--liveness-host",
        default=env.get(ENV_LIVENESS_HOST, "0.0.0.0"),
        help="address of the liveness endpoint (default 0.0.0.0)",
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=int(env.get(ENV_LIVENESS_PORT) or DEFAULT_LIVENESS_PORT),
        help=f"port of the liveness endpoint /healthz; 0 disables it (default {DEFAULT_LIVENESS_PORT})",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="kopf-style liveness URL (e.g. http://0.0.0.0:8081/healthz); overrides --liveness-host/-port",
    )
    parser.add_argument(
        "--lease-namespace",
        default=default_lease_namespace(env),
        help="namespace of the leader-election Lease (default: the pod's namespace, else default)",
    )
    parser.add_argument(
        "--lease-name",
        default=env.get(ENV_LEASE_NAME) or DEFAULT_LEASE_NAME,
        help=f"name of the leader-election Lease (default {DEFAULT_LEASE_NAME})",
    )
    parser.add_argument("--identity", default=default_identity(env), help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.namespaces is None and not args.all_namespaces:
        args.namespaces = [ns.strip() for ns in env.get(ENV_NAMESPACES, "").split(",") if ns.strip()]
    if args.all_namespaces:
        args.namespaces = []
    return args


class _QuietRoutine(logging.Filter):
    """Drop kopf's per-run success lines of the periodic handlers (one per object every few
    seconds); failures and everything else still get through."""

    ROUTINE = (
        "Handler 'watched' succeeded.",
        "Handler 'shard_changed' succeeded.",
        "Indexer 'car_claims' succeeded.",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.ROUTINE


def liveness_endpoint(host: str, port: int) -> str | None:
    if port <= 0:
        return None
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/healthz"


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def start_liveness(url: str | None) -> web.AppRunner | None:
    """/healthz for the probe, in both roles (waiting for the Lease or leading)."""
    if url is None:
        return None
    parts = urlsplit(url)
    app = web.Application()
    app.router.add_get(parts.path or "/healthz", _healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


async def _first(*aws: asyncio.Future[object] | asyncio.Task[object]) -> None:
    await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)


async def run(args: argparse.Namespace) -> int:
    """Wait for the Lease, then run kopf until a signal or until the Lease is lost."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    url = args.liveness or liveness_endpoint(args.liveness_host, args.liveness_port)
    try:
        liveness = await start_liveness(url)
    except OSError as exc:
        log.error("cannot serve the liveness endpoint %s: %s", url, exc.strerror or exc)
        return 1
    api = await KubeApi.connect()
    elector = LeaderElector(api, LeaseConfig(args.lease_namespace, args.lease_name, args.identity))
    holding: asyncio.Task[None] | None = None
    lost = False
    try:
        log.info("waiting for Lease %s/%s as %s", args.lease_namespace, args.lease_name, args.identity)
        acquiring: asyncio.Task[None] = asyncio.create_task(elector.acquire())
        stop_wait = asyncio.create_task(stopping.wait())
        await _first(acquiring, stop_wait)
        if not acquiring.done():
            acquiring.cancel()
            stop_wait.cancel()
            return 0
        stop_wait.cancel()
        acquiring.result()
        # Created before kopf starts, so kopf's shutdown leaves it alone.
        holding = asyncio.create_task(elector.hold())
        kopf_stop = asyncio.Event()
        holding.add_done_callback(lambda _: kopf_stop.set())
        await kopf.operator(
            clusterwide=not args.namespaces,
            namespaces=args.namespaces or (),
            standalone=True,
            stop_flag=kopf_stop,
        )
        if holding.done() and not holding.cancelled():
            failure = holding.exception()
            if isinstance(failure, LeaseLost):
                log.error("%s: stopped acting; exiting so that a restart waits for the Lease again", failure)
                lost = True
            elif failure is not None:
                raise failure
        return 1 if lost else 0
    finally:
        if holding is not None:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await holding
        if not lost:
            await elector.release()
        await api.close()
        if liveness is not None:
            await liveness.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_prefix=True)
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietRoutine())
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
