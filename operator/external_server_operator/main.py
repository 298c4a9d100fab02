"""``external-server-operator``: run the kopf operator for ExternalServer resources.

    external-server-operator                         # all namespaces
    external-server-operator -n fleet -n fleet-dev   # only these namespaces

Environment: EXTERNAL_SERVER_OPERATOR_NAMESPACES (comma-separated; empty: all namespaces),
EXTERNAL_SERVER_OPERATOR_LIVENESS_HOST / _LIVENESS_PORT (kopf's /healthz; port 0
disables it), EXTERNAL_SERVER_IMAGE (default server image), EXTERNAL_SERVER_OPERATOR_STATUS_INTERVAL
(seconds between status refreshes). Credentials: the pod's service account, else KUBECONFIG.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import kopf

from . import handlers  # noqa: F401  (importing registers the kopf handlers)

ENV_NAMESPACES = "EXTERNAL_SERVER_OPERATOR_NAMESPACES"
ENV_LIVENESS_HOST = "EXTERNAL_SERVER_OPERATOR_LIVENESS_HOST"
ENV_LIVENESS_PORT = "EXTERNAL_SERVER_OPERATOR_LIVENESS_PORT"
DEFAULT_LIVENESS_PORT = 8081


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

    ROUTINE = ("Timer 'refresh' succeeded.", "Handler 'shard_changed' succeeded.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.ROUTINE


def liveness_endpoint(host: str, port: int) -> str | None:
    if port <= 0:
        return None
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/healthz"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_prefix=True)
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietRoutine())
    kopf.run(
        clusterwide=not args.namespaces,
        namespaces=args.namespaces or (),
        liveness_endpoint=args.liveness or liveness_endpoint(args.liveness_host, args.liveness_port),
        standalone=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
