"""One measured step: a server, a group of simulator processes, a connect phase and a steady window."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from external_server.simulator.stats import LatencySummary

from . import procstat, promtext
from .broker import Broker
from .server import COMPANY, WAITING_STATES, ServerProcess, abnormal, reset_counts
from .simgroup import WorkerGroup
from .worker import WorkerSpec

log = logging.getLogger("bench")
_AFTER_SCRAPE_S = 0.5


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What to run in one step."""

    scenario: str
    label: str
    cars: int
    rate_hz: float = 1.0
    closed_loop: bool = False
    stagger_s: float = 0.0
    warmup_s: float = 1.0
    window_s: float = 5.0
    connect_wait_s: float = 60.0
    cars_per_worker: int = 500
    cars_per_connection: int = 1


@dataclass
class StepResult:
    """Everything measured in one step; ``to_dict`` is what goes to the JSON file."""

    plan: StepPlan
    workers: int = 0
    connections: int = 0
    connected: int = 0
    connect_all_s: float | None = None
    connect: LatencySummary = field(default_factory=lambda: LatencySummary.from_samples([]))
    connect_attempts: int = 0
    connect_failures: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    sent: int = 0
    answered: int = 0
    timeouts: int = 0
    latency: LatencySummary = field(default_factory=lambda: LatencySummary.from_samples([]))
    server_cpu: float | None = None
    server_connect_cpu: float | None = None
    rss_configured_kb: int | None = None
    rss_kb: int | None = None
    hwm_kb: int | None = None
    threads: int | None = None
    broker_cpu: float | None = None
    sim_cpu: list[float] = field(default_factory=list)
    threads_cpu: procstat.ThreadSplit | None = None
    server_latency: dict[str, float | None] = field(default_factory=dict)
    """The server's own status→StatusResponse histogram over the window (bucket upper bounds)."""
    resets: dict[str, int] = field(default_factory=dict)
    machine_cpu: float | None = None
    """Busy CPU of the whole machine over the window, % of one core (all CPUs summed)."""
    load_average: float | None = None
    server_alive: bool = True
    error: str | None = None
    status_tail: dict[str, Any] | None = None

    @property
    def abnormal_resets(self) -> int:
        return abnormal(Counter(self.resets))

    @property
    def answered_per_s(self) -> float:
        return self.answered / self.window_s if self.window_s > 0 else 0.0

    @property
    def sent_per_s(self) -> float:
        return self.sent / self.window_s if self.window_s > 0 else 0.0

    @property
    def retries(self) -> int:
        return max(0, self.connect_attempts - self.plan.cars)

    @property
    def sim_cpu_total(self) -> float | None:
        return sum(self.sim_cpu) if self.sim_cpu else None

    @property
    def foreign_cpu(self) -> float | None:
        """Machine CPU not used by the server, broker or simulators: other load that disturbs the step."""
        if self.machine_cpu is None or self.server_cpu is None:
            return None
        ours = self.server_cpu + (self.broker_cpu or 0.0) + (self.sim_cpu_total or 0.0)
        return max(0.0, self.machine_cpu - ours)

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "scenario": plan.scenario,
            "label": plan.label,
            "cars": plan.cars,
            "rate_per_car": None if plan.closed_loop else plan.rate_hz,
            "closed_loop": plan.closed_loop,
            "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__},
            "simulator_processes": self.workers,
            "mqtt_connections": self.connections,
            "connect": {
                "cars_connected": self.connected,
                "all_connected_s": self.connect_all_s,
                "time_to_connected_ms": self.connect.to_dict(),
                "attempts": self.connect_attempts,
                "failures": self.connect_failures,
                "failure_reasons": self.failure_reasons,
                "retries": self.retries,
                "server_cpu_percent": self.server_connect_cpu,
            },
            "window": {
                "seconds": self.window_s,
                "sent": self.sent,
                "answered": self.answered,
                "sent_per_s": self.sent_per_s,
                "answered_per_s": self.answered_per_s,
                "status_timeouts": self.timeouts,
                "latency_ms": self.latency.to_dict(),
            },
            "session_drops_seen_by_cars": self.drops,
            "server": {
                "cpu_percent": self.server_cpu,
                "cpu_split_percent": asdict(self.threads_cpu) if self.threads_cpu else None,
                "rss_configured_kb": self.rss_configured_kb,
                "rss_kb": self.rss_kb,
                "vm_hwm_kb": self.hwm_kb,
                "threads": self.threads,
                "resets": self.resets,
                "abnormal_resets": self.abnormal_resets,
                "alive": self.server_alive,
            },
            "server_measured_latency_ms": self.server_latency,
            "broker_cpu_percent": self.broker_cpu,
            "machine": {
                "busy_cpu_percent": self.machine_cpu,
                "other_processes_cpu_percent": self.foreign_cpu,
                "load_average_1min": self.load_average,
            },
            "simulator_cpu_percent": {"per_process": self.sim_cpu, "total": self.sim_cpu_total},
            "error": self.error,
            "server_status_on_error": self.status_tail,
        }


async def settle(server: ServerProcess, timeout_s: float = 30.0) -> bool:
    """Wait until every car session is back to waiting for a Connect (the previous step is over)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(server.status)
        if status is not None:
            states = {car["state"] for car in status.get("cars", {}).values()}
            if states <= WAITING_STATES:
                return True
        await asyncio.sleep(0.5)
    return False


async def run_step(
    plan: StepPlan,
    server: ServerProcess,
    broker: Broker,
    workdir: Path,
    *,
    step_timeout_s: float,
    cpus: frozenset[int] | None = None,
) -> StepResult:
    """Run ``plan`` against a running ``server``; never raises for a failing server or fleet."""
    result = StepResult(plan)
    base = WorkerSpec(
        broker_host=broker.host,
        broker_port=broker.port,
        company=COMPANY,
        first_car=0,
        cars=plan.cars,
        result_path="",
        cars_per_connection=plan.cars_per_connection,
        rate_hz=plan.rate_hz,
        closed_loop=plan.closed_loop,
        stagger_s=plan.stagger_s,
        connect_wait_s=plan.connect_wait_s,
        max_runtime_s=step_timeout_s + 30.0,
    )
    name = f"{plan.scenario}-{plan.label}".replace(" ", "_").replace("/", "_")
    group = WorkerGroup(workdir, name, base, plan.cars_per_worker, cpus)
    await settle(server)
    before = reset_counts(await asyncio.to_thread(server.status))
    configured = procstat.sample(server.pid)
    result.rss_configured_kb = configured.rss_kb if configured else None
    try:
        async with asyncio.timeout(step_timeout_s):
            await _drive(plan, group, server, broker, result)
    except Exception as exc:  # a step that fails is reported, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"
        log.warning("step %s %s failed: %s", plan.scenario, plan.label, result.error)
    finally:
        with contextlib.suppress(Exception):
            _collect(await group.stop(), result)
        await group.kill()
    result.server_alive = server.running
    after = await asyncio.to_thread(server.status)
    if after is None:
        result.server_alive = False
    result.resets = dict(reset_counts(after) - before)
    if result.error or result.abnormal_resets or not result.server_alive:
        result.status_tail = _status_excerpt(after)
    return result


async def _drive(
    plan: StepPlan, group: WorkerGroup, server: ServerProcess, broker: Broker, result: StepResult
) -> None:
    await group.start()
    result.workers = len(group.workers)
    at_go = procstat.sample(server.pid)
    go = await group.go()
    _, last = await group.wait_connected(plan.connect_wait_s + 15.0)
    at_connected = procstat.sample(server.pid)
    result.server_connect_cpu = procstat.cpu_percent(at_go, at_connected)
    result.connect_all_s = None if last is None else last - go
    if plan.window_s <= 0:
        _memory(result, at_connected)
        return
    await asyncio.sleep(plan.warmup_s)
    histogram_start = await _histogram(server)
    await asyncio.sleep(_AFTER_SCRAPE_S)  # the scrape's own load must not fall into the window
    server_start, broker_start = procstat.sample(server.pid), _broker_sample(broker)
    threads_start = procstat.thread_cpu_seconds(server.pid)
    main_start = procstat.main_thread(server.pid)
    machine_start = procstat.machine_busy_seconds()
    await group.command("mark", "marked")
    await asyncio.sleep(plan.window_s)
    await group.command("end", "ended")
    server_end, broker_end = procstat.sample(server.pid), _broker_sample(broker)
    threads_end = procstat.thread_cpu_seconds(server.pid)
    main_end = procstat.main_thread(server.pid)
    machine_end = procstat.machine_busy_seconds()
    result.load_average = procstat.load_average()
    result.server_cpu = procstat.cpu_percent(server_start, server_end)
    if server_start is not None and server_end is not None:
        seconds = server_end.at - server_start.at
        result.machine_cpu = 100.0 * (machine_end - machine_start) / seconds
        result.threads_cpu = procstat.thread_split(
            server.pid, threads_start, threads_end, seconds, (main_start, main_end)
        )
    result.broker_cpu = procstat.cpu_percent(broker_start, broker_end)
    _memory(result, server_end)
    histogram_end = await _histogram(server)
    if histogram_start is not None and histogram_end is not None:
        result.server_latency = promtext.summary(promtext.delta(histogram_start, histogram_end))


async def _histogram(server: ServerProcess) -> promtext.Buckets | None:
    text = await asyncio.to_thread(server.metrics)
    return None if text is None else promtext.status_latency_buckets(text)


def _broker_sample(broker: Broker) -> procstat.ProcSample | None:
    return procstat.sample(broker.pid) if broker.pid else None


def _memory(result: StepResult, reading: procstat.ProcSample | None) -> None:
    if reading is not None:
        result.rss_kb, result.hwm_kb, result.threads = reading.rss_kb, reading.hwm_kb, reading.threads


def _collect(results: list[dict[str, Any]], result: StepResult) -> None:
    """Merge the workers' result files into ``result`` (exact percentiles over raw samples)."""
    latencies: list[float] = []
    to_connected: list[float] = []
    failures: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    for worker in results:
        if "error" in worker and "summary" not in worker:
            result.error = result.error or str(worker["error"])
            continue
        summary = worker["summary"]
        result.connections += summary["connections"]
        result.connect_attempts += summary["totals"]["connect_attempts"]
        result.connect_failures += summary["totals"]["connect_failures"]
        failures.update(summary["failures"])
        drops.update(summary["drops"])
        go = worker["go_wall"]
        if go is not None:
            done = [at - go for at in worker["connected_at"] if at is not None]
            to_connected.extend(done)
            result.connected += len(done)
        window = worker.get("window")
        if window:
            latencies.extend(window["latencies_s"])
            result.window_s = max(result.window_s, window["elapsed_s"])
            result.sent += window["sent"]
            result.answered += window["answered"]
            result.timeouts += window["timeouts"]
            if window["elapsed_s"] > 0:
                result.sim_cpu.append(100.0 * window["cpu_s"] / window["elapsed_s"])
        elif summary["elapsed_s"] > 0:
            result.sim_cpu.append(summary["cpu"]["percent_of_one_core"])
    result.failure_reasons = dict(failures)
    result.drops = dict(drops)
    result.latency = LatencySummary.from_samples(latencies)
    result.connect = LatencySummary.from_samples(to_connected)


def _status_excerpt(status: dict[str, Any] | None, cars: int = 5) -> dict[str, Any] | None:
    """The ``/status`` document cut to a few cars (with a count of states), for the report."""
    if status is None:
        return None
    all_cars = status.get("cars", {})
    states = Counter(car.get("state") for car in all_cars.values())
    return {
        "broker": status.get("broker"),
        "unrouted_messages": status.get("unrouted_messages"),
        "car_states": dict(states),
        "cars_sample": dict(list(all_cars.items())[:cars]),
    }
