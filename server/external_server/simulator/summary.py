"""Run summaries: per car and aggregate, as dataclasses, JSON-ready dicts and a text table.

The simulator's own CPU time is part of the summary so a benchmark can show
the simulator was not the bottleneck.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .stats import LatencySummary

if TYPE_CHECKING:
    from .gateway import SimulatedGateway

PER_CAR_ROWS_DEFAULT_LIMIT = 20

_COUNT_FIELDS = (
    "sessions",
    "connect_attempts",
    "connect_failures",
    "reconnects",
    "statuses_sent",
    "statuses_answered",
    "unanswered",
    "status_timeouts",
    "commands_received",
    "notifications",
    "malformed",
)


@dataclass(frozen=True, slots=True)
class CarSummary:
    """One car at the end of (or during) a run."""

    car: str
    state: str
    """Current state, or the one the run ended in (``connected`` = in normal communication at the end)."""
    session_id: str
    sessions: int
    connect_attempts: int
    connect_failures: int
    reconnects: int
    statuses_sent: int
    statuses_answered: int
    unanswered: int
    status_timeouts: int
    commands_received: int
    notifications: int
    malformed: int
    drops: dict[str, int]
    failures: dict[str, int]
    latency: LatencySummary
    connect_time: LatencySummary

    @classmethod
    def of(cls, gateway: SimulatedGateway) -> CarSummary:
        stats = gateway.stats
        return cls(
            car=gateway.car,
            state=(gateway.final_state or gateway.state).value,
            session_id=gateway.session_id,
            sessions=stats.sessions,
            connect_attempts=stats.connect_attempts,
            connect_failures=stats.connect_failures,
            reconnects=stats.reconnects,
            statuses_sent=stats.statuses_sent,
            statuses_answered=stats.statuses_answered,
            unanswered=stats.unanswered,
            status_timeouts=stats.status_timeouts,
            commands_received=stats.commands_received,
            notifications=stats.notifications,
            malformed=stats.malformed,
            drops=dict(stats.drops),
            failures=dict(stats.failures),
            latency=LatencySummary.from_samples(stats.latencies_s),
            connect_time=LatencySummary.from_samples(stats.connect_durations_s),
        )

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"car": self.car, "state": self.state, "session_id": self.session_id}
        result.update({name: getattr(self, name) for name in _COUNT_FIELDS})
        result.update(
            drops=self.drops,
            failures=self.failures,
            latency=self.latency.to_dict(),
            connect_time=self.connect_time.to_dict(),
        )
        return result


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """The whole fleet: aggregate counts, exact fleet-wide percentiles, CPU time, per-car rows."""

    company: str
    car_count: int
    devices_per_car: int
    mode: str
    connections: int
    started_at: float
    elapsed_s: float
    cpu_user_s: float
    cpu_system_s: float
    cars_ever_connected: int
    cars_connected_at_end: int
    totals: dict[str, int]
    drops: dict[str, int]
    failures: dict[str, int]
    latency: LatencySummary
    connect_time: LatencySummary
    cars: tuple[CarSummary, ...]

    @classmethod
    def build(
        cls,
        *,
        company: str,
        devices_per_car: int,
        mode: str,
        connections: int,
        started_at: float,
        elapsed_s: float,
        cpu_user_s: float,
        cpu_system_s: float,
        cars: Sequence[CarSummary],
        latency_samples: Sequence[float],
        connect_samples: Sequence[float],
    ) -> FleetSummary:
        drops: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        for car in cars:
            drops.update(car.drops)
            failures.update(car.failures)
        return cls(
            company=company,
            car_count=len(cars),
            devices_per_car=devices_per_car,
            mode=mode,
            connections=connections,
            started_at=started_at,
            elapsed_s=elapsed_s,
            cpu_user_s=cpu_user_s,
            cpu_system_s=cpu_system_s,
            cars_ever_connected=sum(1 for car in cars if car.sessions > 0),
            cars_connected_at_end=sum(1 for car in cars if car.state == "connected"),
            totals={name: sum(getattr(car, name) for car in cars) for name in _COUNT_FIELDS},
            drops=dict(drops),
            failures=dict(failures),
            latency=LatencySummary.from_samples(latency_samples),
            connect_time=LatencySummary.from_samples(connect_samples),
            cars=tuple(cars),
        )

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_system_s

    @property
    def cpu_percent(self) -> float:
        """Simulator CPU as a percentage of one core over the run."""
        return 100.0 * self.cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def answered_per_s(self) -> float:
        return self.totals["statuses_answered"] / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def all_cars_connected(self) -> bool:
        """Every car completed at least one connect sequence."""
        return self.cars_ever_connected == self.car_count

    def to_dict(self) -> dict[str, Any]:
        return {
            "company": self.company,
            "cars": self.car_count,
            "devices_per_car": self.devices_per_car,
            "mode": self.mode,
            "connections": self.connections,
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "elapsed_s": self.elapsed_s,
            "cpu": {
                "user_s": self.cpu_user_s,
                "system_s": self.cpu_system_s,
                "percent_of_one_core": self.cpu_percent,
                "scope": "whole simulator process (resource.getrusage RUSAGE_SELF)",
            },
            "cars_ever_connected": self.cars_ever_connected,
            "cars_connected_at_end": self.cars_connected_at_end,
            "answered_per_s": self.answered_per_s,
            "totals": dict(self.totals),
            "drops": dict(self.drops),
            "failures": dict(self.failures),
            "latency": self.latency.to_dict(),
            "connect_time": self.connect_time.to_dict(),
            "per_car": [car.to_dict() for car in self.cars],
        }

    def format_table(self, *, per_car: bool | None = None) -> str:
        """Human-readable summary; per-car rows by default only for small fleets."""
        show_cars = per_car if per_car is not None else self.car_count <= PER_CAR_ROWS_DEFAULT_LIMIT
        header = (
            f"Fleet simulator — company {self.company}: {self.car_count} car(s) x {self.devices_per_car} "
            f"device(s), {self.mode}, {self.connections} MQTT connection(s), {self.elapsed_s:.1f} s"
        )
        columns = ("car", "state", "sess", "reconn", "sent", "answered", "t/o", "cmds")
        latency_columns = ("p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms")
        rows: list[tuple[str, ...]] = []
        if show_cars:
            rows.extend(_row(car.car, car.state, _counts(car), car.latency) for car in self.cars)
        state = f"{self.cars_connected_at_end}/{self.car_count} conn"
        rows.append(_row("ALL", state, self.totals, self.latency))
        table = _render((*columns, *latency_columns), rows)
        lines = [header, table]
        if not show_cars:
            lines.append(f"(per-car rows omitted for {self.car_count} cars; see the JSON summary)")
        connect = self.connect_time
        if connect.count:
            lines.append(
                f"connect sequence: {connect.count} completed, p50 {_ms(connect.p50_ms)} ms, "
                f"p99 {_ms(connect.p99_ms)} ms, max {_ms(connect.max_ms)} ms; "
                f"{self.cars_ever_connected}/{self.car_count} car(s) ever connected"
            )
        else:
            lines.append(f"connect sequence: none completed ({self.car_count} car(s))")
        if self.drops:
            lines.append("session drops: " + _reasons(self.drops))
        if self.failures:
            lines.append("failed connect sequences: " + _reasons(self.failures))
        lines.append(
            f"throughput: {self.answered_per_s:.1f} statuses/s answered; simulator CPU "
            f"{self.cpu_user_s:.2f} s user + {self.cpu_system_s:.2f} s system "
            f"= {self.cpu_percent:.1f} % of one core"
        )
        return "\n".join(lines)


def _counts(car: CarSummary) -> dict[str, int]:
    return {name: int(getattr(car, name)) for name in _COUNT_FIELDS}


def _row(name: str, state: str, counts: dict[str, int], latency: LatencySummary) -> tuple[str, ...]:
    return (
        name,
        state,
        str(counts["sessions"]),
        str(counts["reconnects"]),
        str(counts["statuses_sent"]),
        str(counts["statuses_answered"]),
        str(counts["status_timeouts"]),
        str(counts["commands_received"]),
        _ms(latency.p50_ms),
        _ms(latency.p90_ms),
        _ms(latency.p99_ms),
        _ms(latency.p999_ms),
        _ms(latency.max_ms),
    )


def _render(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
