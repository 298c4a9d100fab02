"""Operator settings, from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from . import __version__

#: Server image used when an ExternalServer does not name one: the image released together
#: with this operator.
DEFAULT_IMAGE = f"fleet-external-server:{__version__}"

ENV_IMAGE = "EXTERNAL_SERVER_IMAGE"
ENV_STATUS_INTERVAL = "EXTERNAL_SERVER_OPERATOR_STATUS_INTERVAL"
ENV_STATUS_TIMEOUT = "EXTERNAL_SERVER_OPERATOR_STATUS_TIMEOUT"
ENV_STATUS_PORT = "EXTERNAL_SERVER_OPERATOR_STATUS_PORT"

#: The server pods' HTTP port (/healthz, /readyz, /status, /metrics).
HTTP_PORT = 8080


@dataclass(frozen=True)
class Settings:
    image: str = DEFAULT_IMAGE
    #: Seconds between status refreshes (pods' /status, StatefulSets' readiness, drift).
    status_interval: float = 10.0
    #: Timeout of one GET /status.
    status_timeout: float = 2.0
    #: Port the operator queries on each pod IP; the pods always listen on HTTP_PORT, this
    #: only exists so tests and port-forwarded debugging can point it elsewhere.
    status_port: int = HTTP_PORT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            image=env.get(ENV_IMAGE) or DEFAULT_IMAGE,
            status_interval=float(env.get(ENV_STATUS_INTERVAL) or cls.status_interval),
            status_timeout=float(env.get(ENV_STATUS_TIMEOUT) or cls.status_timeout),
            status_port=int(env.get(ENV_STATUS_PORT) or cls.status_port),
        )
