"""The reconcile loop against an in-memory API: apply on diff only, invalid specs change
nothing, status from injected /status documents. (The real API server is exercised by
tests/cluster.)"""

from __future__ import annotations

import base64
import copy
import itertools
import json
from collections.abc import Mapping
from typing import Any

import pytest
from external_server_operator.claims import Claimant
from external_server_operator.controller import Reconciler
from external_server_operator.errors import KubeError
from external_server_operator.render import CHECKSUM_ANNOTATION
from external_server_operator.settings import Settings
from operator_fixtures import spec_dict

NS, NAME = "fleet", "acme"
TOKEN = "s3cr3t-token-value"
TOKEN_B64 = base64.b64encode(TOKEN.encode()).decode()


class FakeApi:
    """Stores objects by (kind, namespace, name); applies merge like a trivial server."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = itertools.count(1)
        self.calls: list[tuple[str, str, str]] = []
        self.events: list[dict[str, Any]] = []

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        m = obj["metadata"]
        m["resourceVersion"] = str(next(self.rv))
        m.setdefault("uid", f"uid-{m['name']}")
        self.objects[(obj["kind"], m["namespace"], m["name"])] = obj
        return copy.deepcopy(obj)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def list(
        self, kind: str, namespace: str, label_selector: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if k == kind
            and ns == namespace
            and label_selector.items() <= (o["metadata"].get("labels") or {}).items()
        ]

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", str(obj["kind"]), obj["metadata"]["name"]))
        live = self.objects.get((str(obj["kind"]), obj["metadata"]["namespace"], obj["metadata"]["name"]))
        new = copy.deepcopy(dict(obj))
        if live is not None:
            new["metadata"]["uid"] = live["metadata"]["uid"]
        if new["kind"] == "StatefulSet":
            new.setdefault("status", {})
            new["metadata"]["generation"] = (live or {}).get("metadata", {}).get("generation", 0) + 1
        return self.put(new)

    async def delete(
        self, kind: str, namespace: str, name: str, uid: str | None = None, propagation: str = "Background"
    ) -> None:
        self.calls.append(("delete", kind, name))
        self.objects.pop((kind, namespace, name), None)

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.calls.append(("status", kind, name))
        obj = self.objects[(kind, namespace, name)]
        obj["status"] = copy.deepcopy(dict(status))
        obj["metadata"]["resourceVersion"] = str(next(self.rv))

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.events.append(copy.deepcopy(dict(obj)))
        return dict(obj)

    async def validate_pod_template(self, namespace: str, name: str, template: Mapping[str, Any]) -> None:
        self.calls.append(("validate", "PodTemplate", name))

    # helpers
    def resource(self, spec: dict[str, Any], generation: int = 1) -> None:
        existing = self.objects.get(("ExternalServer", NS, NAME))
        obj = {
            "apiVersion": "fleetprotocol.io/v1alpha1",
            "kind": "ExternalServer",
            "metadata": {"name": NAME, "namespace": NS, "uid": "es-uid", "generation": generation},
            "spec": spec,
        }
        if existing is not None and "status" in existing:
            obj["status"] = existing["status"]
        self.put(obj)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.objects[("ExternalServer", NS, NAME)]["status"]
        return status

    def versions(self) -> dict[tuple[str, str], str]:
        return {
            (k, n): o["metadata"]["resourceVersion"] for (k, _, n), o in self.objects.items() if k != "Event"
        }


class Docs:
    """Injected /status fetcher: URL → document."""

    def __init__(self) -> None:
        self.by_url: dict[str, Any] = {}
        self.urls: list[str] = []

    async def __call__(self, url: str) -> Any | None:
        self.urls.append(url)
        return self.by_url.get(url)


@pytest.fixture
def api() -> FakeApi:
    a = FakeApi()
    a.put({"kind": "Secret", "metadata": {"name": "acme-api", "namespace": NS}, "data": {"token": TOKEN_B64}})
    return a


@pytest.fixture
def docs() -> Docs:
    return Docs()


@pytest.fixture
def reconciler(api: FakeApi, docs: Docs) -> Reconciler:
    return Reconciler(api, Settings(status_port=18080), docs)


def conditions(api: FakeApi) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in api.status()["conditions"]}


async def test_create_then_idle(api: FakeApi, reconciler: Reconciler) -> None:
    api.resource(spec_dict(shards=2))
    await reconciler.reconcile(NS, NAME)
    applied = [c for c in api.calls if c[0] == "apply"]
    assert sorted(n for _, _, n in applied) == [
        "acme",
        "acme-shard-0",
        "acme-shard-0-config",
        "acme-shard-1",
        "acme-shard-1-config",
    ]
    assert conditions(api)["ConfigValid"] == ("True", "Valid")
    assert api.status()["observedGeneration"] == 1
    assert api.status()["cars"] == {"total": 3, "connected": 0}
    # the config map holds a reference, never the secret value
    for (kind, _, _), obj in api.objects.items():
        if kind == "ConfigMap":
            assert TOKEN_B64 not in json.dumps(obj) and TOKEN not in json.dumps(obj)
    # Secret "car-b-io" is missing: one warning Event
    assert [e["reason"] for e in api.events] == ["SecretNotFound"]

    before = api.versions()
    api.calls.clear()
    await reconciler.reconcile(NS, NAME)
    await reconciler.reconcile(NS, NAME)
    assert api.calls == []  # nothing differs: no apply, no status write
    assert api.versions() == before
    assert len(api.events) == 1


async def test_update_changes_configmap_and_checksum(api: FakeApi, reconciler: Reconciler) -> None:
    api.resource(spec_dict())
    await reconciler.reconcile(NS, NAME)
    dep = api.objects[("StatefulSet", NS, "acme-shard-0")]
    sum1 = dep["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
    data = spec_dict()
    data["modules"][0]["config"]["any_key"] = "changed"
    api.resource(data, generation=2)
    api.calls.clear()
    await reconciler.reconcile(NS, NAME)
    assert ("apply", "ConfigMap", "acme-shard-0-config") in api.calls
    assert ("apply", "StatefulSet", "acme-shard-0") in api.calls
    assert ("apply", "Service", "acme") not in api.calls
    dep = api.objects[("StatefulSet", NS, "acme-shard-0")]
    assert dep["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION] != sum1
    assert '"changed"' in api.objects[("ConfigMap", NS, "acme-shard-0-config")]["data"]["config.json"]
    assert api.status()["observedGeneration"] == 2


async def test_secret_rotation_rolls_the_pods(api: FakeApi, reconciler: Reconciler) -> None:
    api.resource(spec_dict())
    await reconciler.reconcile(NS, NAME)
    sum1 = api.objects[("StatefulSet", NS, "acme-shard-0")]["spec"]["template"]["metadata"]["annotations"]
    api.put({"kind": "Secret", "metadata": {"name": "acme-api", "namespace": NS}, "data": {"token": "bmV3"}})
    api.calls.clear()
    await reconciler.reconcile(NS, NAME)
    assert [c for c in api.calls if c[0] == "apply"] == [("apply", "StatefulSet", "acme-shard-0")]
    sum2 = api.objects[("StatefulSet", NS, "acme-shard-0")]["spec"]["template"]["metadata"]["annotations"]
    assert sum1 != sum2


async def test_invalid_spec_changes_nothing(api: FakeApi, reconciler: Reconciler) -> None:
    api.resource(spec_dict())
    await reconciler.reconcile(NS, NAME)
    before = {k: v for k, v in api.versions().items() if k[0] != "ExternalServer"}
    bad = spec_dict()
    bad["cars"][0]["modules"] = [{"id": 1000, "library": "/opt/x.so"}]
    bad["cars"].append({"name": "car_new"})
    api.resource(bad, generation=2)
    api.events.clear()
    api.calls.clear()
    await reconciler.reconcile(NS, NAME)
    assert [c for c in api.calls if c[0] != "status"] == []
    assert {k: v for k, v in api.versions().items() if k[0] != "ExternalServer"} == before
    assert conditions(api)["ConfigValid"] == ("False", "ModuleConflict")
    assert conditions(api)["Progressing"] == ("False", "ConfigInvalid")
    assert api.status()["observedGeneration"] == 2
    # the cars of the running configuration stay in the status
    assert [c["name"] for c in api.status()["carStatuses"]] == ["car_a", "car_b", "car_c"]
    assert [(e["type"], e["reason"]) for e in api.events] == [("Warning", "ConfigInvalid")]
    assert "ModuleConflict" in api.events[0]["message"]
    assert api.events[0]["involvedObject"]["uid"] == "es-uid"
    # the timer's next runs neither repeat the Event nor rewrite the status
    api.calls.clear()
    await reconciler.reconcile(NS, NAME)
    assert api.calls == [] and len(api.events) == 1
    # fixed: applied again
    api.resource(spec_dict(), generation=3)
    await reconciler.reconcile(NS, NAME)
    assert conditions(api)["ConfigValid"] == ("True", "Valid")


async def test_schema_violation_is_a_condition(api: FakeApi, reconciler: Reconciler) -> None:
    api.resource({"company": "Not Valid", "broker": {"host": "h"}, "cars": [{"name": "a"}]})
    await reconciler.reconcile(NS, NAME)
    assert conditions(api)["ConfigValid"] == ("False", "SchemaViolation")
    assert not [c for c in api.calls if c[0] == "apply"]


async def test_fewer_shards_delete_the_extra_ones(api: FakeApi, reconciler: Reconciler) -> None:
    api.resource(spec_dict(shards=7))  # car_b → 0, car_a → 1, car_c → 5
    await reconciler.reconcile(NS, NAME)
    assert {n for (k, _, n) in api.objects if k == "StatefulSet"} == {
        "acme-shard-0",
        "acme-shard-1",
        "acme-shard-5",
    }
    api.resource(spec_dict(shards=1), generation=2)
    await reconciler.reconcile(NS, NAME)
    assert {n for (k, _, n) in api.objects if k == "StatefulSet"} == {"acme-shard-0"}
    assert {n for (k, _, n) in api.objects if k == "ConfigMap"} == {"acme-shard-0-config"}
    assert ("delete", "StatefulSet", "acme-shard-5") in api.calls


async def test_car_status_from_pods(api: FakeApi, docs: Docs, reconciler: Reconciler) -> None:
    api.resource(spec_dict(shards=2))
    await reconciler.reconcile(NS, NAME)
    for shard, ip in ((0, "10.0.0.5"), (1, "10.0.0.6")):
        api.put(
            {
                "kind": "Pod",
                "metadata": {
                    "name": f"acme-shard-{shard}-x",
                    "namespace": NS,
                    "labels": {
                        "app.kubernetes.io/name": "external-server",
                        "app.kubernetes.io/instance": NAME,
                        "fleetprotocol.io/shard": str(shard),
                    },
                },
                "status": {"phase": "Running", "podIP": ip},
            }
        )
        dep = api.objects[("StatefulSet", NS, f"acme-shard-{shard}")]
        dep["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    docs.by_url["http://10.0.0.5:18080/status"] = {
        "cars": {"car_b": {"state": "RUNNING", "devices": [{"module": 2}, {"module": 1000}]}}
    }
    # shard 1's pod does not answer
    await reconciler.reconcile(NS, NAME)
    assert sorted(docs.urls)[-2:] == ["http://10.0.0.5:18080/status", "http://10.0.0.6:18080/status"]
    cars = {c["name"]: (c["shard"], c["state"], c["devices"]) for c in api.status()["carStatuses"]}
    assert cars == {"car_a": (1, "Unknown", 0), "car_b": (0, "RUNNING", 2), "car_c": (1, "Unknown", 0)}
    assert api.status()["cars"] == {"total": 3, "connected": 1}
    assert api.status()["shards"] == {"desired": 2, "ready": 2}
    assert conditions(api)["Ready"] == ("True", "ShardsReady")
    assert conditions(api)["Progressing"] == ("False", "RolledOut")


async def test_deleted_resource_is_ignored(api: FakeApi, reconciler: Reconciler) -> None:
    await reconciler.reconcile(NS, "missing")
    assert api.calls == []


async def test_rejected_child_is_reported(api: FakeApi, reconciler: Reconciler) -> None:
    async def validate(namespace: str, name: str, template: Mapping[str, Any]) -> None:
        raise KubeError(422, "POST", "/api/v1/...", '{"message": "nodeSelector: Invalid value"}')

    api.validate_pod_template = validate  # type: ignore[method-assign]
    api.resource(spec_dict())
    await reconciler.reconcile(NS, NAME)
    assert conditions(api)["ConfigValid"] == ("True", "Valid")
    assert conditions(api)["Progressing"] == ("False", "ApplyFailed")
    assert (
        "nodeSelector" in next(c for c in api.status()["conditions"] if c["type"] == "Progressing")["message"]
    )
    assert "ApplyFailed" in [e["reason"] for e in api.events]
    events = len(api.events)
    await reconciler.reconcile(NS, NAME)
    assert len(api.events) == events  # reported once

    async def unavailable(obj: Mapping[str, Any]) -> dict[str, Any]:
        raise KubeError(503, "PATCH", "/x", "etcd down")

    api.apply = unavailable  # type: ignore[method-assign]
    api.resource(spec_dict(shards=2), generation=2)
    with pytest.raises(KubeError):  # transient: kopf retries the handler
        await reconciler.reconcile(NS, NAME)


def test_kube_error_message_and_kind() -> None:
    err = KubeError(422, "PATCH", "/p", '{"kind": "Status", "message": "spec.x: Invalid value"}')
    assert str(err) == "PATCH /p: HTTP 422: spec.x: Invalid value"
    assert err.rejected
    assert str(KubeError(500, "GET", "/p", "x" * 600)).endswith("x" * 500)
    assert [KubeError(s, "GET", "/p", "").rejected for s in (400, 403, 404, 409, 429, 500, 503)] == [
        True,
        True,
        False,
        False,
        False,
        False,
        False,
    ]


async def test_cars_served_by_an_earlier_externalserver_are_left_out(api: FakeApi, docs: Docs) -> None:
    earlier = Claimant("2020-01-01T00:00:00Z", "other", "first")
    taken = ("mosquitto.fleet.svc", 1883, "acme_corp", "car_b")
    reconciler = Reconciler(api, Settings(), docs, lambda key: [earlier] if key == taken else [])
    api.resource(spec_dict())
    api.objects[("ExternalServer", NS, NAME)]["metadata"]["creationTimestamp"] = "2021-01-01T00:00:00Z"
    await reconciler.reconcile(NS, NAME)
    cfg = json.loads(api.objects[("ConfigMap", NS, "acme-shard-0-config")]["data"]["config.json"])
    assert set(cfg["cars"]) == {"car_a", "car_c"}
    assert conditions(api)["CarsExclusive"] == ("False", "CarsClaimedElsewhere")
    assert [c["name"] for c in api.status()["carStatuses"]] == ["car_a", "car_c"]
    claimed = [e for e in api.events if e["reason"] == "CarClaimed"]
    assert len(claimed) == 1 and "car_b (served by other/first)" in claimed[0]["message"]
    await reconciler.reconcile(NS, NAME)
    assert len([e for e in api.events if e["reason"] == "CarClaimed"]) == 1  # reported once


async def test_deployments_of_an_older_version_go_before_their_statefulsets_come(
    api: FakeApi, reconciler: Reconciler
) -> None:
    labels = {
        "app.kubernetes.io/name": "external-server",
        "app.kubernetes.io/instance": NAME,
        "app.kubernetes.io/managed-by": "external-server-operator",
        "fleetprotocol.io/shard": "0",
    }
    owner = [{"uid": "es-uid", "controller": True}]
    api.put(
        {
            "kind": "Deployment",
            "metadata": {"name": "acme-shard-0", "namespace": NS, "labels": labels, "ownerReferences": owner},
        }
    )
    deletes: list[str] = []
    real_delete = api.delete

    async def foreground(
        kind: str, namespace: str, name: str, uid: str | None = None, propagation: str = "Background"
    ) -> None:
        # Foreground: the Deployment stays (Terminating) until its pods are gone.
        deletes.append(f"{kind}/{name}/{propagation}")
        api.objects[(kind, namespace, name)]["metadata"]["deletionTimestamp"] = "now"

    api.delete = foreground  # type: ignore[method-assign]
    api.resource(spec_dict())
    await reconciler.reconcile(NS, NAME)
    assert deletes == ["Deployment/acme-shard-0/Foreground"]
    assert ("StatefulSet", NS, "acme-shard-0") not in api.objects
    await reconciler.reconcile(NS, NAME)
    assert len(deletes) == 1  # not deleted twice
    assert ("StatefulSet", NS, "acme-shard-0") not in api.objects
    api.delete = real_delete  # type: ignore[method-assign]
    del api.objects[("Deployment", NS, "acme-shard-0")]  # its pod is gone, so is it
    await reconciler.reconcile(NS, NAME)
    assert ("StatefulSet", NS, "acme-shard-0") in api.objects
