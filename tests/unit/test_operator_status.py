"""Status computation: conditions, shard readiness, per-car aggregation from /status."""

from __future__ import annotations

from typing import Any

import pytest
from external_server_operator.models import CarStatus, Condition, ExternalServerStatus
from external_server_operator.status import (
    CarReport,
    Observation,
    ShardState,
    aggregate_car_statuses,
    car_counts,
    compute_status,
    condition,
    parse_status,
    parse_status_document,
    set_condition,
    shard_state,
    status_body,
)

T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z", "2025-01-01T00:02:00Z"


def test_transition_time_changes_only_on_status_flip() -> None:
    c = set_condition([], "Ready", status="False", reason="A", message="x", now=T0)
    c = set_condition(c, "Ready", status="False", reason="B", message="y", now=T1)
    assert (c[0].reason, c[0].message, c[0].last_transition_time) == ("B", "y", T0)
    c = set_condition(c, "Ready", status="True", reason="C", message="z", now=T2)
    assert c[0].last_transition_time == T2


def test_conditions_are_ordered() -> None:
    c: list[Condition] = []
    for t in ("Progressing", "Custom", "ConfigValid", "Ready"):
        c = set_condition(c, t, status="True", reason="R", message="", now=T0)
    assert [x.type for x in c] == ["Ready", "ConfigValid", "Progressing", "Custom"]


def workload(generation: int = 1, observed: int = 1, **status: int | str) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": {"observedGeneration": observed, **status}}


ROLLED = {
    "replicas": 1,
    "updatedReplicas": 1,
    "readyReplicas": 1,
    "currentRevision": "r1",
    "updateRevision": "r1",
}


@pytest.mark.parametrize(
    ("dep", "ready", "rolled_out"),
    [
        (None, False, False),
        (workload(replicas=1, updatedReplicas=1), False, False),
        (workload(**ROLLED), True, True),
        (workload(generation=2, observed=1, **ROLLED), True, False),
        (workload(**{**ROLLED, "replicas": 2}), True, False),
        # a StatefulSet whose rollout is not complete names two revisions
        (workload(**{**ROLLED, "updateRevision": "r2"}), True, False),
        ({"metadata": {}}, False, False),
    ],
)
def test_shard_state(dep: dict[str, Any] | None, ready: bool, rolled_out: bool) -> None:
    s = shard_state(3, dep)
    assert (s.shard, s.exists, s.ready, s.rolled_out) == (3, dep is not None, ready, rolled_out)


def test_parse_status_document_map_shape() -> None:
    doc = {
        "cars": {
            "car_a": {"state": "RUNNING", "session_id": "s", "devices": [{"module": 1}, {"module": 2}]},
            "car_b": {"state": "connected", "devices": 3},
            "car_c": {"devices": {"x": 1}},
            "car_d": "garbage",
        },
        "other": 1,
    }
    assert parse_status_document(doc) == {
        "car_a": CarReport("RUNNING", 2),
        "car_b": CarReport("CONNECTED", 3),
        "car_c": CarReport("Unknown", 1),
    }


def test_parse_status_document_list_shape_and_garbage() -> None:
    doc = {"cars": [{"name": "a", "status": "ERROR", "devices": True}, {"state": "RUNNING"}, 5]}
    assert parse_status_document(doc) == {"a": CarReport("ERROR", 0)}
    garbage: list[Any] = [None, [], "x", {"cars": 5}, {}]
    for bad in garbage:
        assert parse_status_document(bad) == {}


def test_aggregation_unreachable_pods_are_unknown_and_since_is_kept() -> None:
    assignment = {"car_a": 0, "car_b": 1, "car_c": 0}
    reports: dict[int, dict[str, CarReport] | None] = {0: {"car_a": CarReport("RUNNING", 2)}, 1: None}
    first = aggregate_car_statuses(assignment, reports, [], T0)
    assert [(c.name, c.shard, c.state, c.devices, c.since) for c in first] == [
        ("car_a", 0, "RUNNING", 2, T0),
        ("car_b", 1, "Unknown", 0, T0),
        ("car_c", 0, "Unknown", 0, T0),
    ]
    reports = {0: {"car_a": CarReport("RUNNING", 3), "car_c": CarReport("RUNNING", 1)}, 1: None}
    second = aggregate_car_statuses(assignment, reports, first, T1)
    assert [(c.state, c.devices, c.since) for c in second] == [
        ("RUNNING", 3, T0),
        ("Unknown", 0, T0),
        ("RUNNING", 1, T1),
    ]
    assert car_counts(second).model_dump() == {"total": 3, "connected": 2}
    moved = aggregate_car_statuses({"car_a": 1}, {1: {"car_a": CarReport("RUNNING", 3)}}, second, T2)
    assert moved[0].since == T2  # same state, other shard: a new session


def test_aggregation_prefers_the_servers_state_since() -> None:
    doc = {"cars": {"car_a": {"state": "RUNNING", "devices": [], "state_since": "2025-01-01T00:00:30Z"}}}
    reports = {0: parse_status_document(doc)}
    (car,) = aggregate_car_statuses({"car_a": 0}, reports, [], T1)
    assert (car.state, car.since) == ("RUNNING", "2025-01-01T00:00:30Z")


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = {
        "generation": 2,
        "invalid": None,
        "assignment": {"car_a": 0},
        "shards": [ShardState(0, exists=True, ready=False, rolled_out=False)],
        "reports": {0: None},
    }
    base.update(kw)
    return Observation(**base)


def test_compute_status_valid_not_ready() -> None:
    s = compute_status(ExternalServerStatus(), obs(), T0)
    assert s.observed_generation == 2
    assert {c.type: (c.status, c.reason) for c in s.conditions} == {
        "Ready": ("False", "ShardsNotReady"),
        "ConfigValid": ("True", "Valid"),
        "Progressing": ("True", "RollingOut"),
    }
    ready = condition(s, "Ready")
    assert ready is not None and ready.message == "0/1 shards ready"
    assert s.shards.model_dump() == {"desired": 1, "ready": 0}
    assert s.cars.model_dump() == {"total": 1, "connected": 0}


def test_compute_status_ready_and_idempotent() -> None:
    ready_obs = obs(
        shards=[ShardState(0, exists=True, ready=True, rolled_out=True)],
        reports={0: {"car_a": CarReport("RUNNING", 1)}},
    )
    s1 = compute_status(ExternalServerStatus(), ready_obs, T0)
    assert {c.type: c.status for c in s1.conditions} == {
        "Ready": "True",
        "ConfigValid": "True",
        "Progressing": "False",
    }
    assert s1.cars.connected == 1
    s2 = compute_status(s1, ready_obs, T1)
    assert status_body(s2) == status_body(s1)  # nothing changed → nothing to write


def test_compute_status_invalid_keeps_transition_times_of_others() -> None:
    s1 = compute_status(ExternalServerStatus(), obs(), T0)
    s2 = compute_status(s1, obs(generation=3, invalid=("ModuleConflict", "ids [1]")), T1)
    cv = condition(s2, "ConfigValid")
    assert cv is not None and (cv.status, cv.reason, cv.message, cv.last_transition_time) == (
        "False",
        "ModuleConflict",
        "ids [1]",
        T1,
    )
    ready = condition(s2, "Ready")
    assert ready is not None and ready.last_transition_time == T0
    progressing = condition(s2, "Progressing")
    assert progressing is not None and (progressing.status, progressing.reason) == ("False", "ConfigInvalid")
    assert s2.observed_generation == 3


def test_no_shards() -> None:
    s = compute_status(ExternalServerStatus(), obs(shards=[], assignment={}), T0)
    ready = condition(s, "Ready")
    assert ready is not None and ready.reason == "NoShards"


def test_status_roundtrip() -> None:
    s = compute_status(ExternalServerStatus(), obs(), T0)
    body = status_body(s)
    assert set(body) == {"observedGeneration", "conditions", "shards", "cars", "carStatuses"}
    assert body["conditions"][0]["lastTransitionTime"] == T0
    assert parse_status(body) == s
    assert parse_status(None) == ExternalServerStatus()
    assert parse_status({"carStatuses": "bad"}) == ExternalServerStatus()
    assert parse_status({"carStatuses": [{"name": "a", "shard": 0}]}).car_statuses == [
        CarStatus(name="a", shard=0)
    ]


def test_cars_claimed_elsewhere_is_a_false_condition() -> None:
    s = compute_status(ExternalServerStatus(), obs(claimed={"car_b": "fleet/first"}), T0)
    c = {x.type: x for x in s.conditions}["CarsExclusive"]
    assert (c.status, c.reason) == ("False", "CarsClaimedElsewhere")
    assert "car_b (served by fleet/first)" in c.message
    s = compute_status(s, obs(claimed={}), T1)
    c = {x.type: x for x in s.conditions}["CarsExclusive"]
    assert (c.status, c.reason, c.last_transition_time) == ("True", "NoConflicts", T1)
    # not evaluated (invalid spec): left as it was
    s2 = compute_status(s, obs(claimed=None), T1)
    assert {x.type: x for x in s2.conditions}["CarsExclusive"] == c
