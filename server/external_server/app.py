"""Composition root: config + CLI options → modules, transport, car sessions; clean stop.

Startup errors (a module file missing, a module number mismatch, ``init``
returning NULL) end the process with one clear message and exit code 1. SIGINT
and SIGTERM stop it cleanly: every car's session is cleaned up (disconnect
notification, ``device_disconnected``), the MQTT connection is closed, the
module threads are joined and every context is destroyed exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry

from .cli import CliOptions
from .config.models import ModuleSettings, ServerConfig
from .config.secrets import resolve_module_config
from .http_api import HttpEndpoint
from .logging_setup import car_logger
from .modules import ModuleInitError, ModuleLibrary, ModuleLoadError, build_init_config
from .runtime import ModuleRuntime
from .runtime.module_runtime import CommandsHandler
from .session.car_session import CarSession, SessionTimings
from .session.link import MqttCarLink
from .telemetry import ServerMetrics, default_views
from .transport import BrokerAddress, CarTopics, MqttConnection
from .transport.tls import client_tls_context

log = logging.getLogger("external_server.app")

CLIENT_ID_ENV = "FLEET_MQTT_CLIENT_ID"
DEFAULT_HTTP_PORT = 8080
_SESSION_STOP_TIMEOUT_S = 10.0


class StartupError(Exception):
    """The server cannot start with this configuration; the message says why."""


@dataclass
class CarUnit:
    """Everything one car owns: its session and its module runtimes (in module order)."""

    name: str
    session: CarSession
    runtimes: list[ModuleRuntime] = field(default_factory=list)


def default_client_id(config: ServerConfig) -> str:
    """Stable per company and car set, so the broker fences a second server for the same cars."""
    digest = hashlib.sha256("\n".join(sorted(config.cars)).encode()).hexdigest()[:10]
    return os.environ.get(CLIENT_ID_ENV) or f"es-{config.company_name}-{digest}"


class CompanyServer:
    """One company's server process: many cars, one MQTT connection, module contexts per car."""

    def __init__(
        self, config: ServerConfig, options: CliOptions, meter_provider: MeterProvider | None = None
    ) -> None:
        self.config = config
        self.options = options
        self.cars: dict[str, CarUnit] = {}
        self.sessions: dict[str, CarSession] = {}
        self.metrics_registry: CollectorRegistry | None = None
        if meter_provider is None:
            self.metrics_registry = CollectorRegistry()
            reader = PrometheusMetricReader(registry=self.metrics_registry)
            meter_provider = MeterProvider(metric_readers=[reader], views=default_views())
        self.meter_provider = meter_provider
        self.metrics = ServerMetrics(config.company_name, meter_provider, self.sessions)
        self.http: HttpEndpoint | None = None
        self._routes: dict[str, CarSession] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._libraries: dict[Path, ModuleLibrary] = {}
        self._built: list[ModuleRuntime] = []
        self.connection: MqttConnection | None = None
        self._stop_requested = asyncio.Event()
        self.unrouted_messages = 0

    # --- construction -----------------------------------------------------------

    def build(self) -> None:
        """Load libraries and init every context; on failure destroy what was created."""
        contexts = sum(len(self.config.modules_for(car)) for car in self.config.cars)
        self._executor = ThreadPoolExecutor(
            max_workers=min(256, max(8, 4 * contexts)), thread_name_prefix="module"
        )
        try:
            runtimes_by_car = {car: self._build_car_modules(car) for car in self.config.cars}
        except StartupError:
            self._destroy_all(self._built)
            raise
        tls_context = None
        if self.options.tls:
            assert self.options.ca and self.options.cert and self.options.key
            try:
                tls_context = client_tls_context(self.options.ca, self.options.cert, self.options.key)
            except (OSError, ValueError) as exc:
                raise StartupError(f"TLS setup failed: {exc}") from exc
        topics = {car: CarTopics(self.config.company_name, car) for car in self.config.cars}
        self.connection = MqttConnection(
            BrokerAddress(self.config.broker.host, self.config.broker.port),
            client_id=default_client_id(self.config),
            subscriptions=[car_topics.module_gateway for car_topics in topics.values()],
            on_message=self._route,
            on_state=self._broadcast_broker_state,
            tls_context=tls_context,
        )
        timings = SessionTimings(
            response_timeout_s=self.config.response_timeout_s,
            session_timeout_s=self.config.session_timeout_s,
            reconnect_delay_s=self.config.reconnect_delay_s,
        )
        for car, runtimes in runtimes_by_car.items():
            link = MqttCarLink(self.connection, topics[car])
            session = CarSession(
                company=self.config.company_name,
                car=car,
                link=link,
                modules={runtime.module_id: runtime for runtime in runtimes},
                timings=timings,
                send_invalid_command=self.config.send_invalid_command,
                logger=car_logger(car),
                on_status_latency=self.metrics.status_latency_observer(),
            )
            for runtime in runtimes:
                runtime.on_call_duration = self.metrics.module_call_observer(runtime.module_id)
                self.metrics.watch_runtime(car, runtime)
            self.cars[car] = CarUnit(car, session, runtimes)
            self.sessions[car] = session
            self._routes[topics[car].module_gateway] = session

    def _build_car_modules(self, car: str) -> list[ModuleRuntime]:
        runtimes: list[ModuleRuntime] = []
        for module_id, settings in self.config.modules_for(car):
            runtime = self._init_module(car, module_id, settings)
            self._built.append(runtime)
            runtimes.append(runtime)
        return runtimes

    def _init_module(self, car: str, module_id: int, settings: ModuleSettings) -> ModuleRuntime:
        assert self._executor is not None
        library = self._library(module_id, settings.lib_path)
        try:
            values = resolve_module_config(settings.config, where=f"module {module_id}")
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        pairs = build_init_config(self.config.company_name, car, values)
        try:
            context = library.init(pairs)
        except ModuleInitError as exc:
            raise StartupError(f"Module {module_id} of car '{car}': init failed: {exc}") from exc
        runtime = ModuleRuntime(
            module_id,
            context,
            wait_timeout_ms=settings.command_wait_timeout_ms,
            executor=self._executor,
            logger=car_logger(car),
            thread_name=f"wait-{car}-{module_id}",
        )
        number = context.get_module_number()
        if number != module_id:
            runtime.destroy()
            raise StartupError(
                f"Module number '{number}' returned from API does not match module ID '{module_id}' "
                f"in config ({settings.lib_path})."
            )
        return runtime

    def _library(self, module_id: int, path: Path) -> ModuleLibrary:
        resolved = path.resolve()
        library = self._libraries.get(resolved)
        if library is None:
            try:
                library = ModuleLibrary.load(resolved)
            except ModuleLoadError as exc:
                raise StartupError(f"Module {module_id}: {exc}") from exc
            self._libraries[resolved] = library
        return library

    # --- routing (on the loop) --------------------------------------------------

    def _route(self, topic: str, payload: bytes) -> None:
        session = self._routes.get(topic)
        if session is None:
            self.unrouted_messages += 1
            return
        session.on_car_message(payload)

    def _broadcast_broker_state(self, connected: bool) -> None:
        for unit in self.cars.values():
            unit.session.on_broker_state(connected)

    # --- what /readyz and /status report ------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if self.connection is None:
            return False, "modules not loaded"
        if not self.connection.connected:
            return False, f"not connected to MQTT broker {self.connection.broker}"
        return True, "broker connected, modules loaded"

    def status_document(self) -> dict[str, object]:
        broker = self.connection
        return {
            "company": self.config.company_name,
            "broker": {
                "address": str(broker.broker) if broker else None,
                "connected": bool(broker and broker.connected),
            },
            "unrouted_messages": self.unrouted_messages,
            "cars": {car: session.snapshot() for car, session in self.sessions.items()},
        }

    # --- serving and stopping -----------------------------------------------------

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def start_http(self) -> int:
        """Bind the HTTP endpoint; an OSError (port in use) is a startup error for the caller."""
        port = DEFAULT_HTTP_PORT if self.options.http_port is None else self.options.http_port
        self.http = HttpEndpoint(self, self.options.http_host, port, self.metrics_registry)
        return await self.http.start()

    async def serve(self) -> None:
        """Run until :meth:`request_stop`; then stop everything in order."""
        assert self.connection is not None
        loop = asyncio.get_running_loop()
        if self.http is None:
            try:
                await self.start_http()
            except OSError as exc:
                raise StartupError(
                    f"HTTP endpoint cannot listen on {self.options.http_host}:{self.options.http_port}: {exc}"
                ) from exc
        transport_task = asyncio.create_task(self.connection.run(), name="mqtt-connection")
        session_tasks: list[asyncio.Task[None]] = []
        for unit in self.cars.values():
            for runtime in unit.runtimes:
                runtime.start_worker(loop, _commands_handler(unit.session, runtime.module_id))
            session_tasks.append(asyncio.create_task(unit.session.run(), name=f"car-session:{unit.name}"))
        log.info(
            "Serving company '%s': %d car(s), broker %s.",
            self.config.company_name,
            len(self.cars),
            self.connection.broker,
        )
        try:
            await self._stop_requested.wait()
        finally:
            log.info("Stopping: cleaning up %d car session(s).", len(session_tasks))
            for unit in self.cars.values():
                unit.session.request_stop()
            if session_tasks:
                _, pending = await asyncio.wait(session_tasks, timeout=_SESSION_STOP_TIMEOUT_S)
                for task in pending:
                    task.cancel()
            await self.connection.stop(transport_task)
            if self.http is not None:
                await self.http.stop()
            await loop.run_in_executor(None, self._stop_modules)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            log.info("Stopped.")

    def _stop_modules(self) -> None:
        runtimes = [runtime for unit in self.cars.values() for runtime in unit.runtimes]
        self._destroy_all(runtimes)

    def _destroy_all(self, runtimes: Iterable[ModuleRuntime]) -> None:
        runtimes = list(runtimes)
        for runtime in runtimes:
            runtime.request_stop()
        for runtime in runtimes:
            if not runtime.join_worker(timeout_s=runtime.wait_timeout_s + 1.0):
                log.error("Module %d waiting thread did not stop; destroying anyway.", runtime.module_id)
            rc = runtime.destroy()
            if rc not in (None, 0):
                log.error("destroy of module %d returned %d.", runtime.module_id, rc)


def _commands_handler(session: CarSession, module_id: int) -> CommandsHandler:
    return lambda batch: session.on_module_commands(module_id, batch)


async def _serve(server: CompanyServer) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, server.request_stop)
    await server.serve()


def run(config: ServerConfig, options: CliOptions) -> int:
    """Build and serve until SIGINT/SIGTERM; 0 on a clean stop, 1 on a startup error."""
    server = CompanyServer(config, options)
    try:
        server.build()
    except StartupError as exc:
        log.error("Startup failed: %s", exc)
        print(f"Startup failed: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(_serve(server))
    except StartupError as exc:
        log.error("Startup failed: %s", exc)
        print(f"Startup failed: {exc}", file=sys.stderr)
        server._stop_modules()
        return 1
    return 0
