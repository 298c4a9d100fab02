"""The scenarios of issue 5 (item 3): (a) latency, (b) one car's maximum rate, (c) N cars, (d) storm."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import procstat
from .broker import Broker
from .measure import StepPlan, StepResult, run_step
from .server import DEFAULT_MODULE_WAIT_MS, ServerProcess

log = logging.getLogger("bench")

HOLD_ANSWERED_RATIO = 0.97
"""A rate holds when at least this share of the target rate was answered in the window..."""


@dataclass(frozen=True, slots=True)
class Matrix:
    """Sizes and durations of one run (``--quick`` or ``--full``)."""

    latency_rates: tuple[float, ...] = (10.0, 50.0)
    latency_window_s: float = 20.0
    closed_loop_window_s: float = 10.0
    ramp_rates: tuple[float, ...] = (500, 1000, 2000, 3000, 4000, 5000, 6000, 8000)
    ramp_window_s: float = 5.0
    fleet_sizes: tuple[int, ...] = (10, 100, 500, 1000, 2000)
    fleet_window_s: float = 15.0
    fleet_warmup_s: float = 3.0
    storm_sizes: tuple[int, ...] = (500, 2000)
    cars_per_worker: int = 500
    cars_per_connection: int = 50
    lag_ms: float = 100.0
    """...and its p99 latency stayed under this (otherwise responses lag)."""
    module_wait_ms: int = DEFAULT_MODULE_WAIT_MS
    """The module's ``timeout_ms`` in the server config (each car's waiting thread wakes this often)."""
    server_cpus: frozenset[int] | None = None
    """With ``--pin``: the CPUs of the server; the broker and the simulators get ``load_cpus``."""
    load_cpus: frozenset[int] | None = None
    beyond: tuple[int, ...] = ()
    """Fleet sizes tried after ``fleet_sizes`` while the previous one held."""


QUICK = Matrix(
    latency_rates=(10.0, 50.0),
    latency_window_s=5.0,
    closed_loop_window_s=5.0,
    ramp_rates=(),
    fleet_sizes=(10, 100),
    fleet_window_s=5.0,
    fleet_warmup_s=1.0,
    storm_sizes=(100,),
)
FULL = Matrix()
BEYOND = (3000, 4000, 5000)


@dataclass
class Run:
    """Shared state of one benchmark run: where files go, the broker, the results so far."""

    workdir: Path
    broker: Broker
    matrix: Matrix
    results: list[StepResult] = field(default_factory=list)
    idle_rss_kb: int | None = None
    notes: list[str] = field(default_factory=list)
    live: list[ServerProcess] = field(default_factory=list)

    async def server(self, name: str, cars: int) -> ServerProcess:
        server = ServerProcess(
            self.workdir, name, self.broker.port, cars, self.matrix.module_wait_ms, self.matrix.server_cpus
        )
        self.live.append(server)
        ready_s = await asyncio.to_thread(server.start)
        log.info("server %s: %d car(s) ready in %.1f s (pid %d)", name, cars, ready_s, server.pid)
        return server

    async def step(self, plan: StepPlan, server: ServerProcess) -> StepResult:
        budget = plan.warmup_s + plan.window_s + plan.connect_wait_s + 90.0
        result = await run_step(
            plan, server, self.broker, self.workdir, step_timeout_s=budget, cpus=self.matrix.load_cpus
        )
        self.results.append(result)
        log.info("%s", _one_line(result))
        return result

    def stop_leftovers(self) -> None:
        """Stop (by PID) every server still running, e.g. after an interrupt."""
        for server in self.live:
            server.stop(timeout_s=10.0)
        self.live.clear()


def _one_line(result: StepResult) -> str:
    lat = result.latency
    return (
        f"  {result.plan.scenario} {result.plan.label}: connected {result.connected}/{result.plan.cars}"
        f" answered {result.answered_per_s:.0f}/s p50 {_f(lat.p50_ms)} p99 {_f(lat.p99_ms)} ms,"
        f" server CPU {_f(result.server_cpu)} %, resets {result.abnormal_resets}"
        + (f", ERROR {result.error}" if result.error else "")
    )


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def with_server(
    run: Run, name: str, cars: int, body: Callable[[ServerProcess], Awaitable[None]]
) -> None:
    """Start a server for ``cars`` cars, run ``body``, always stop the server (by PID)."""
    try:
        server = await run.server(name, cars)
    except RuntimeError as exc:
        await asyncio.to_thread(run.stop_leftovers)
        run.notes.append(f"{name}: server did not start: {exc}")
        log.error("%s", run.notes[-1])
        return
    try:
        await body(server)
    finally:
        code = await asyncio.to_thread(server.stop)
        run.live.remove(server)
        if code not in (0, None):
            run.notes.append(f"{name}: server exited with {code}; log {server.log_path}")


async def latency(run: Run) -> None:
    """(a) one car, open loop at each latency rate."""

    async def body(server: ServerProcess) -> None:
        for rate in run.matrix.latency_rates:
            plan = StepPlan("a", f"{rate:g}/s", 1, rate_hz=rate, window_s=run.matrix.latency_window_s)
            await run.step(plan, server)

    await with_server(run, "a", 1, body)


def keeps_up(result: StepResult) -> bool:
    """No reset and the target rate answered (throughput held, whatever the latency)."""
    if result.error or result.abnormal_resets or result.drops or result.timeouts:
        return False
    return result.answered_per_s >= HOLD_ANSWERED_RATIO * result.plan.rate_hz


def holds(result: StepResult, lag_ms: float) -> bool:
    """Keeps up and responses do not lag (p99 under ``lag_ms``)."""
    p99 = result.latency.p99_ms
    return keeps_up(result) and p99 is not None and p99 <= lag_ms


async def max_rate(run: Run) -> None:
    """(b) one car: closed loop, then an open-loop ramp until the rate is not kept up or a reset happens.

    Steps that keep up but lag (p99 over ``lag_ms``) do not end the ramp; the report gives both the
    highest rate without lag and the highest rate kept up.
    """

    async def body(server: ServerProcess) -> None:
        closed = StepPlan("b", "closed loop", 1, closed_loop=True, window_s=run.matrix.closed_loop_window_s)
        await run.step(closed, server)
        for rate in run.matrix.ramp_rates:
            plan = StepPlan("b", f"open {rate:g}/s", 1, rate_hz=rate, window_s=run.matrix.ramp_window_s)
            result = await run.step(plan, server)
            if not keeps_up(result):
                break

    await with_server(run, "b", 1, body)


def fleet_plan(matrix: Matrix, cars: int, *, storm: bool) -> StepPlan:
    return StepPlan(
        "d" if storm else "c",
        f"{cars} cars storm" if storm else f"{cars} cars",
        cars,
        rate_hz=1.0,
        stagger_s=0.0 if storm else 1.0,  # spread the 1/s phases: a steady load, not a burst each second
        warmup_s=matrix.fleet_warmup_s,
        window_s=0.0 if storm else matrix.fleet_window_s,
        connect_wait_s=60.0 if storm else 45.0,
        cars_per_worker=matrix.cars_per_worker,
        cars_per_connection=min(matrix.cars_per_connection, cars),
    )


async def idle_rss(run: Run) -> None:
    """RSS of an idle server with the same module and one car: the base of the per-car figure."""

    async def body(server: ServerProcess) -> None:
        await asyncio.sleep(2.0)
        reading = procstat.sample(server.pid)
        run.idle_rss_kb = reading.rss_kb if reading else None

    await with_server(run, "idle", 1, body)


async def fleets(run: Run) -> None:
    """(c) N cars at 1 status/s each, one server per N."""
    if run.idle_rss_kb is None:
        await idle_rss(run)
    sizes = list(run.matrix.fleet_sizes)
    extra = list(run.matrix.beyond)
    while sizes:
        cars = sizes.pop(0)
        results: list[StepResult] = []

        async def body(server: ServerProcess, cars: int = cars, results: list[StepResult] = results) -> None:
            results.append(await run.step(fleet_plan(run.matrix, cars, storm=False), server))

        await with_server(run, f"c-{cars}", cars, body)
        if not sizes and extra and results and _fleet_holds(results[0]):
            sizes.append(extra.pop(0))


def _fleet_holds(result: StepResult) -> bool:
    lat = result.latency.p99_ms
    cpu = result.server_cpu
    return (
        result.connected == result.plan.cars
        and not result.abnormal_resets
        and lat is not None
        and lat < 50.0
        and cpu is not None
        and cpu < 100.0
    )


async def storms(run: Run) -> None:
    """(d) all N cars connecting at once."""
    for cars in run.matrix.storm_sizes:

        async def body(server: ServerProcess, cars: int = cars) -> None:
            await run.step(fleet_plan(run.matrix, cars, storm=True), server)

        await with_server(run, f"d-{cars}", cars, body)


SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "a": latency,
    "b": max_rate,
    "c": fleets,
    "d": storms,
}


def with_beyond(matrix: Matrix) -> Matrix:
    return replace(matrix, beyond=BEYOND)


def pinned(matrix: Matrix, cpus: frozenset[int]) -> Matrix:
    """The server alone on the first CPU, the load (broker, simulators) on the others."""
    ordered = sorted(cpus)
    if len(ordered) < 2:
        return matrix
    return replace(matrix, server_cpus=frozenset(ordered[:1]), load_cpus=frozenset(ordered[1:]))
