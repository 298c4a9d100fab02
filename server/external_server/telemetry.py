"""OpenTelemetry metrics of one server process, exported as Prometheus text.

Hot-path cost is kept near zero: message and reset counts are *observed* from
the sessions' own counters when metrics are collected; only the two latency
histograms record per event. Nothing here touches a global provider: the
server builds its own, tests inject one with an in-memory reader.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from .session.state import CarState
from .session.stats import SessionStats

LATENCY_BUCKETS_MS = (0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
STATUS_LATENCY = "fleet_status_response_latency"
MODULE_CALL_DURATION = "fleet_module_call_duration"


class ObservedSession(Protocol):
    """What metrics read of a car session (any object with these, e.g. the session driver)."""

    @property
    def state(self) -> CarState: ...

    @property
    def stats(self) -> SessionStats: ...

    @property
    def device_count(self) -> int: ...


class CommandErrorCounts(Protocol):
    """A module runtime's counts of failed ``wait_for_command`` / ``pop_command`` calls."""

    @property
    def module_id(self) -> int: ...

    @property
    def wait_errors(self) -> int: ...

    @property
    def pop_errors(self) -> int: ...


def default_views() -> list[View]:
    aggregation = ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_MS)
    return [
        View(instrument_name=STATUS_LATENCY, aggregation=aggregation),
        View(instrument_name=MODULE_CALL_DURATION, aggregation=aggregation),
    ]


class ServerMetrics:
    """The instruments of docs/design.md §3 "Telemetry", bound to one company's sessions."""

    def __init__(
        self, company: str, meter_provider: MeterProvider, sessions: Mapping[str, ObservedSession]
    ) -> None:
        self._company = company
        self._sessions = sessions
        self._runtimes: list[tuple[str, CommandErrorCounts]] = []
        meter = meter_provider.get_meter("external_server")
        self._status_latency = meter.create_histogram(
            STATUS_LATENCY, unit="ms", description="Status received → StatusResponse published"
        )
        self._module_call = meter.create_histogram(
            MODULE_CALL_DURATION, unit="ms", description="Duration of serialized module calls, by function"
        )
        meter.create_observable_counter(
            "fleet_messages_in", [self._observe("messages_in", "type")], description="Car messages by type"
        )
        meter.create_observable_counter(
            "fleet_messages_out",
            [self._observe("messages_out", "type")],
            description="Server messages by type",
        )
        meter.create_observable_counter(
            "fleet_invalid_messages",
            [self._observe("invalid_messages", "reason")],
            description="Dropped payloads",
        )
        meter.create_observable_counter(
            "fleet_ignored_messages",
            [self._observe("ignored", "reason")],
            description="Valid car messages ignored, by reason",
        )
        meter.create_observable_counter(
            "fleet_module_errors",
            [self._observe("module_errors", "function")],
            description="Module calls that returned an error, by function",
        )
        meter.create_observable_counter(
            "fleet_commands_dropped",
            [self._observe("commands_dropped", "reason")],
            description="Module commands never sent or never acknowledged, by reason",
        )
        meter.create_observable_counter(
            "fleet_inbox_overflow_drops",
            [self._dropped_overflow],
            description="Car messages dropped because the car's inbox was full",
        )
        meter.create_observable_counter(
            "fleet_module_command_errors",
            [self._command_errors],
            description="Failed wait_for_command / pop_command calls of the waiting threads",
        )
        meter.create_observable_counter(
            "fleet_session_resets",
            [self._observe("resets", "reason")],
            description="Session resets by reason",
        )
        meter.create_observable_gauge(
            "fleet_cars_connected", [self._cars_connected], description="Cars in normal communication"
        )
        meter.create_observable_gauge(
            "fleet_devices_connected", [self._devices_connected], description="Registered devices"
        )

    def watch_runtime(self, car: str, runtime: CommandErrorCounts) -> None:
        """Export a module runtime's command-waiting error counts."""
        self._runtimes.append((car, runtime))

    def status_latency_observer(self) -> Callable[[float], None]:
        attributes = {"company": self._company}
        histogram = self._status_latency

        def record(seconds: float) -> None:
            histogram.record(seconds * 1000.0, attributes)

        return record

    def module_call_observer(self, module_id: int) -> Callable[[str, float], None]:
        histogram = self._module_call
        base = {"company": self._company, "module": str(module_id)}
        by_function: dict[str, dict[str, str]] = {}

        def record(function: str, seconds: float) -> None:
            attributes = by_function.get(function)
            if attributes is None:
                attributes = by_function.setdefault(function, {**base, "function": function})
            histogram.record(seconds * 1000.0, attributes)

        return record

    def _observe(self, field: str, label: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            for car, session in self._sessions.items():
                counts: Counter[str] = getattr(session.stats, field)
                for key, value in counts.items():
                    yield Observation(value, {"company": self._company, "car": car, label: key})

        return callback

    def _command_errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        for car, runtime in self._runtimes:
            base = {"company": self._company, "car": car, "module": str(runtime.module_id)}
            yield Observation(runtime.wait_errors, {**base, "function": "wait_for_command"})
            yield Observation(runtime.pop_errors, {**base, "function": "pop_command"})

    def _dropped_overflow(self, _options: CallbackOptions) -> Iterable[Observation]:
        for car, session in self._sessions.items():
            yield Observation(session.stats.dropped_overflow, {"company": self._company, "car": car})

    def _cars_connected(self, _options: CallbackOptions) -> Iterable[Observation]:
        running = sum(1 for session in self._sessions.values() if session.state == CarState.RUNNING)
        yield Observation(running, {"company": self._company})

    def _devices_connected(self, _options: CallbackOptions) -> Iterable[Observation]:
        devices = sum(session.device_count for session in self._sessions.values())
        yield Observation(devices, {"company": self._company})
