"""The server's small HTTP endpoint: /healthz, /readyz, /status (JSON) and /metrics (Prometheus).

The operator's status timer and Kubernetes probes read it; it never touches a
car session's state, it only reads snapshots.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("external_server.http")


class StatusSource(Protocol):
    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): ready when the broker is connected and the modules are loaded."""

    def status_document(self) -> dict[str, object]:
        """Per-car session state for /status."""


class HttpEndpoint:
    """An aiohttp app bound to ``host:port`` (port 0 picks a free one, see :attr:`port`)."""

    def __init__(
        self, source: StatusSource, host: str, port: int, registry: CollectorRegistry | None = None
    ) -> None:
        self._source = source
        self._host = host
        self._requested_port = port
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> int:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        await site.start()
        addresses = self._runner.addresses  # (host, port, ...) of every bound socket
        self.port = int(addresses[0][1]) if addresses else self._requested_port
        log.info("HTTP endpoint (/healthz /readyz /status /metrics) on %s:%d.", self._host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, reason = self._source.readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(self._source.status_document())

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self._registry is None:
            return web.Response(status=404, text="metrics are exported by an injected meter provider\n")
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
