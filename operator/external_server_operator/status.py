"""Pure status computation: conditions, shard readiness, per-car session states.

Inputs are plain data (the previous status, the live StatefulSets, the documents the pods'
``/status`` returned); the output is the new ``ExternalServerStatus``. The handlers patch
the resource only when the result differs from what is stored, so an unchanged world
produces no writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .claims import describe
from .models import CarCounts, CarStatus, Condition, ConditionStatus, ExternalServerStatus, ShardCounts

READY = "Ready"
CONFIG_VALID = "ConfigValid"
PROGRESSING = "Progressing"
#: False when cars of the spec are left out because an earlier ExternalServer serves them.
CARS_EXCLUSIVE = "CarsExclusive"
CONDITION_ORDER = (READY, CONFIG_VALID, PROGRESSING, CARS_EXCLUSIVE)

UNKNOWN = "Unknown"
#: Server states (docs/protocol.md §4.2) in which the car's session is established.
CONNECTED_STATES = frozenset({"INITIALIZED", "RUNNING"})


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- conditions ---------------------------------------------------------------------------------


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    *,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: str,
) -> list[Condition]:
    """Conditions with ``type_`` set; its lastTransitionTime moves only when status flips."""
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    updated = Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=since)
    others = [c for c in conditions if c.type != type_]
    merged = [*others, updated]
    order = {t: i for i, t in enumerate(CONDITION_ORDER)}
    return sorted(merged, key=lambda c: (order.get(c.type, len(order)), c.type))


def condition(status: ExternalServerStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


# --- shards ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardState:
    """What a shard's StatefulSet reports."""

    shard: int
    exists: bool
    ready: bool
    rolled_out: bool


def shard_state(shard: int, workload: Mapping[str, Any] | None) -> ShardState:
    """Readiness of one shard from its live StatefulSet (None: not created yet)."""
    if workload is None:
        return ShardState(shard, exists=False, ready=False, rolled_out=False)
    meta = workload.get("metadata") or {}
    st = workload.get("status") or {}
    generation = int(meta.get("generation") or 0)
    observed = int(st.get("observedGeneration") or 0)
    ready = int(st.get("readyReplicas") or 0) >= 1
    # Rolled out: the controller saw the current template, the one pod runs it and is
    # ready, and no pod of an older template is left (a StatefulSet also names its current
    # and its update revision: equal once the rollout is complete).
    updated = int(st.get("updatedReplicas") or 0) >= 1 and ready
    stale = int(st.get("replicas") or 0) > int(st.get("updatedReplicas") or 0)
    current, update = st.get("currentRevision"), st.get("updateRevision")
    stale = stale or bool(current and update and current != update)
    return ShardState(
        shard, exists=True, ready=ready, rolled_out=observed >= generation and updated and not stale
    )


# --- cars ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CarReport:
    """One car as a server pod's /status describes it."""

    state: str
    devices: int
    #: When the server says the car entered ``state`` (its ``state_since``), if it says.
    since: str | None = None


def _devices(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, list | dict):
        return len(value)
    return 0


def parse_status_document(doc: Any) -> dict[str, CarReport]:
    """Per-car reports from a pod's ``/status`` JSON, tolerating shape variations.

    Accepted: ``{"cars": {name: {...}}}`` or ``{"cars": [{"name": ..., ...}]}``; per car
    ``state`` (or ``status``), ``devices`` (a list, a map or a count) and optionally
    ``state_since``. Anything else is skipped rather than failing the whole document."""
    if not isinstance(doc, Mapping):
        return {}
    cars = doc.get("cars")
    items: list[tuple[str, Any]] = []
    if isinstance(cars, Mapping):
        items = [(str(k), v) for k, v in cars.items()]
    elif isinstance(cars, list):
        items = [
            (str(c["name"]), c) for c in cars if isinstance(c, Mapping) and isinstance(c.get("name"), str)
        ]
    reports: dict[str, CarReport] = {}
    for name, entry in items:
        if not isinstance(entry, Mapping):
            continue
        raw_state = entry.get("state", entry.get("status"))
        state = str(raw_state).upper() if isinstance(raw_state, str) and raw_state else UNKNOWN
        since = entry.get("state_since")
        reports[name] = CarReport(
            state=state,
            devices=_devices(entry.get("devices")),
            since=since if isinstance(since, str) and since else None,
        )
    return reports


def aggregate_car_statuses(
    assignment: Mapping[str, int],
    reports: Mapping[int, Mapping[str, CarReport] | None],
    previous: Sequence[CarStatus],
    now: str,
) -> list[CarStatus]:
    """Per-car status for every assigned car, in assignment order.

    ``reports`` maps a shard to its pod's parsed /status (None or absent: unreachable, so
    its cars are Unknown). ``since`` is the server's own ``state_since`` when it reports
    one, else the first time the operator saw the state (kept while state and shard stay)."""
    before = {c.name: c for c in previous}
    out: list[CarStatus] = []
    for name, shard in assignment.items():
        shard_reports = reports.get(shard)
        report = shard_reports.get(name) if shard_reports is not None else None
        state = report.state if report is not None else UNKNOWN
        devices = report.devices if report is not None else 0
        old = before.get(name)
        if report is not None and report.since:
            since = report.since
        elif old is not None and old.state == state and old.shard == shard and old.since:
            since = old.since
        else:
            since = now
        out.append(CarStatus(name=name, shard=shard, state=state, devices=devices, since=since))
    return out


def car_counts(statuses: Sequence[CarStatus]) -> CarCounts:
    return CarCounts(total=len(statuses), connected=sum(1 for c in statuses if c.state in CONNECTED_STATES))


# --- the whole status -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """Everything the status is computed from."""

    generation: int
    #: None when the spec is valid, else (reason, message).
    invalid: tuple[str, str] | None
    #: car → shard of the configuration that is (or is being) deployed
    assignment: Mapping[str, int]
    shards: Sequence[ShardState]
    reports: Mapping[int, Mapping[str, CarReport] | None]
    #: The API server rejected a child (message), so the spec is only partly applied.
    apply_error: str | None = None
    #: Cars left out because an earlier ExternalServer serves them: car → "namespace/name";
    #: None when not evaluated (invalid spec: the condition stays as it was).
    claimed: Mapping[str, str] | None = None


def compute_status(previous: ExternalServerStatus, obs: Observation, now: str) -> ExternalServerStatus:
    conditions = list(previous.conditions)

    def put(type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, status=status, reason=reason, message=message, now=now)

    if obs.invalid is None:
        put(CONFIG_VALID, "True", "Valid", "spec is valid")
    else:
        put(CONFIG_VALID, "False", *obs.invalid)

    desired = len(obs.shards)
    ready = sum(1 for s in obs.shards if s.ready)
    if not desired:
        put(READY, "False", "NoShards", "no shard is deployed")
    elif ready == desired:
        put(READY, "True", "ShardsReady", f"{ready}/{desired} shards ready")
    else:
        put(READY, "False", "ShardsNotReady", f"{ready}/{desired} shards ready")

    pending = [str(s.shard) for s in obs.shards if not s.rolled_out]
    if obs.invalid is not None:
        message = "the spec is not applied until it is valid; running shards are left unchanged"
        put(PROGRESSING, "False", "ConfigInvalid", message)
    elif obs.apply_error is not None:
        put(PROGRESSING, "False", "ApplyFailed", obs.apply_error)
    elif pending:
        put(PROGRESSING, "True", "RollingOut", f"shards rolling out: {', '.join(pending)}")
    else:
        put(PROGRESSING, "False", "RolledOut", "every shard runs the current spec")

    if obs.claimed is not None:
        if obs.claimed:
            put(CARS_EXCLUSIVE, "False", "CarsClaimedElsewhere", describe(obs.claimed))
        else:
            put(CARS_EXCLUSIVE, "True", "NoConflicts", "no car is listed by another ExternalServer")

    cars = aggregate_car_statuses(obs.assignment, obs.reports, previous.car_statuses, now)
    return ExternalServerStatus(
        observed_generation=obs.generation,
        conditions=conditions,
        shards=ShardCounts(desired=desired, ready=ready),
        cars=car_counts(cars),
        car_statuses=cars,
    )


def status_body(status: ExternalServerStatus) -> dict[str, Any]:
    """The status as stored in the resource (camelCase, every field present)."""
    return status.model_dump(by_alias=True, mode="json")


def parse_status(raw: Mapping[str, Any] | None) -> ExternalServerStatus:
    """The stored status; whatever does not parse is treated as absent."""
    try:
        return ExternalServerStatus.model_validate(dict(raw or {}))
    except ValueError:
        return ExternalServerStatus()
