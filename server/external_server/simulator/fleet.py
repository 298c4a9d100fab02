"""Many simulated gateways (N cars x M devices) on one or several MQTT connections.

By default every car has its own connection, like real gateways; sharing
(``cars_per_connection``) keeps the simulator's overhead low for big fleets.
Starts are simultaneous (a connect storm) or spread over ``stagger_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from ..transport import BrokerAddress
from .config import (
    DEFAULT_DEVICE_TYPE,
    DEFAULT_MODULE,
    DEFAULT_ROLE_PREFIX,
    GatewayConfig,
    GatewayTimings,
    JsonStatusData,
    make_devices,
    validate_names,
)
from .connection import SharedConnection, unique_client_id
from .gateway import GatewayState, SimulatedGateway
from .stats import GatewayStats
from .summary import CarSummary, FleetSummary


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """What to simulate; the gateway-level knobs are applied to every car."""

    broker: BrokerAddress
    company: str
    cars: tuple[str, ...]
    devices_per_car: int = 1
    module: int = DEFAULT_MODULE
    device_type: int = DEFAULT_DEVICE_TYPE
    role_prefix: str = DEFAULT_ROLE_PREFIX
    rate_hz: float = 1.0
    closed_loop: bool = False
    duration_s: float | None = None
    statuses_per_car: int | None = None
    cars_per_connection: int = 1
    stagger_s: float = 0.0
    status_size: int = 0
    disconnect_at_end: bool = True
    timings: GatewayTimings = field(default_factory=GatewayTimings)
    tls_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if not self.cars:
            raise ValueError("at least one car is needed")
        if len(set(self.cars)) != len(self.cars):
            raise ValueError("car names must be unique")
        validate_names(self.company, self.cars)
        if self.cars_per_connection < 1:
            raise ValueError("cars_per_connection must be >= 1")
        if self.stagger_s < 0:
            raise ValueError("stagger_s must be >= 0")
        if self.devices_per_car < 1:
            raise ValueError("devices_per_car must be >= 1")
        if not self.closed_loop and self.rate_hz <= 0:
            raise ValueError("rate_hz must be > 0 in open-loop mode")
        for name in ("duration_s", "statuses_per_car"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.status_size < 0:
            raise ValueError("status_size must be >= 0")

    @property
    def mode(self) -> str:
        return "closed loop" if self.closed_loop else f"open loop {self.rate_hz:g} status/s per car"


def car_names(count: int, prefix: str = "car_") -> tuple[str, ...]:
    """``prefix0 .. prefix<count-1>``."""
    if count < 1:
        raise ValueError("car count must be >= 1")
    return tuple(f"{prefix}{i}" for i in range(count))


class Fleet:
    """Builds, runs and summarises the gateways of a :class:`FleetConfig`."""

    def __init__(self, config: FleetConfig, *, logger: logging.Logger | None = None) -> None:
        self.config = config
        self._log = logger or logging.getLogger("external_server.simulator.fleet")
        self.connections: list[SharedConnection] = []
        self.gateways: list[SimulatedGateway] = []
        devices = make_devices(
            config.devices_per_car,
            module=config.module,
            device_type=config.device_type,
            role_prefix=config.role_prefix,
        )
        count = len(config.cars)
        for index, car in enumerate(config.cars):
            if index % config.cars_per_connection == 0:
                prefix = f"fleetsim-{config.company}-{car if config.cars_per_connection == 1 else index}"
                self.connections.append(
                    SharedConnection(
                        config.broker, client_id=unique_client_id(prefix), tls_context=config.tls_context
                    )
                )
            gateway_config = GatewayConfig(
                company=config.company,
                car=car,
                devices=devices,
                rate_hz=config.rate_hz,
                closed_loop=config.closed_loop,
                duration_s=config.duration_s,
                max_statuses=config.statuses_per_car,
                start_delay_s=config.stagger_s * index / count,
                timings=config.timings,
                status_data=JsonStatusData(car, config.status_size),
                disconnect_at_end=config.disconnect_at_end,
            )
            self.gateways.append(SimulatedGateway(self.connections[-1], gateway_config))
        self._tasks: list[asyncio.Task[GatewayStats]] = []
        self._started_wall = 0.0
        self._started = 0.0
        self._finished: float | None = None
        self._cpu_start = (0.0, 0.0)

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the connections and every gateway (each waits for its broker on its own)."""
        if self._tasks:
            return
        self._started_wall = time.time()
        self._started = time.monotonic()
        self._cpu_start = _cpu_times()
        for connection in self.connections:
            await connection.start()
        self._tasks = [gateway.start() for gateway in self.gateways]

    async def wait(self) -> None:
        """Until every gateway has ended (bounded runs end by themselves)."""
        if self._tasks:
            await asyncio.gather(*self._tasks)
        self._mark_finished()

    async def wait_all_connected(self, timeout: float, *, sessions: int = 1) -> bool:  # noqa: ASYNC109
        """True once every car is in normal communication (after ``sessions`` completed connects)."""
        results = await asyncio.gather(
            *(gateway.wait_connected(timeout, sessions=sessions) for gateway in self.gateways)
        )
        return all(results)

    def stop(self, *, drain: bool = True) -> None:
        for gateway in self.gateways:
            gateway.stop(drain=drain)

    async def close(self, *, drain: bool = True) -> None:
        """Stop every gateway (waiting for answers in flight if ``drain``) and disconnect."""
        self.stop(drain=drain)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._mark_finished()
        await asyncio.gather(*(connection.stop() for connection in self.connections))

    async def run(self) -> FleetSummary:
        """Start, run until the configured bound, close, summarise."""
        await self.start()
        try:
            await self.wait()
        finally:
            await self.close()
        return self.summary()

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- results ---------------------------------------------------------------

    @property
    def elapsed_s(self) -> float:
        if not self._started:
            return 0.0
        end = self._finished if self._finished is not None else time.monotonic()
        return end - self._started

    def connected_count(self) -> int:
        return sum(1 for gateway in self.gateways if gateway.state is GatewayState.CONNECTED)

    def summary(self) -> FleetSummary:
        user, system = _cpu_times()
        return FleetSummary.build(
            company=self.config.company,
            devices_per_car=self.config.devices_per_car,
            mode=self.config.mode,
            connections=len(self.connections),
            started_at=self._started_wall,
            elapsed_s=self.elapsed_s,
            cpu_user_s=user - self._cpu_start[0],
            cpu_system_s=system - self._cpu_start[1],
            cars=[CarSummary.of(gateway) for gateway in self.gateways],
            latency_samples=_merged(gateway.stats.latencies_s for gateway in self.gateways),
            connect_samples=_merged(gateway.stats.connect_durations_s for gateway in self.gateways),
        )

    def _mark_finished(self) -> None:
        if self._finished is None and self._started:
            self._finished = time.monotonic()


@contextlib.asynccontextmanager
async def running_gateway(
    broker: BrokerAddress, config: GatewayConfig, *, tls_context: ssl.SSLContext | None = None
) -> AsyncIterator[SimulatedGateway]:
    """One started gateway on its own connection (like a real car); stopped and disconnected on exit."""
    connection = SharedConnection(
        broker, client_id=unique_client_id(f"fleetsim-{config.company}-{config.car}"), tls_context=tls_context
    )
    gateway = SimulatedGateway(connection, config)
    await connection.start()
    gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close(drain=False)
        await connection.stop()


def _cpu_times() -> tuple[float, float]:
    """User and system CPU seconds of this whole process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _merged(parts: Iterable[Sequence[float]]) -> list[float]:
    merged: list[float] = []
    for part in parts:
        merged.extend(part)
    return merged
