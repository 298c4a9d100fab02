"""The operator against a real kube-apiserver + etcd + kube-controller-manager, driven
through `kubectl apply` of ExternalServer YAML. Run with -s to see `kubectl get exs`."""

from __future__ import annotations

import base64
import copy
import json
import time
from typing import Any

import pytest
import yaml
from external_server_operator.render import CHECKSUM_ANNOTATION, secret_env_name, shard_of
from kube_envtest import STATUS_INTERVAL, Cluster, FakeStatusServer, Operator, wait_for

pytestmark = pytest.mark.cluster

SPEC: dict[str, Any] = {
    "company": "acme_corp",
    "broker": {"host": "mosquitto.fleet.svc"},
    "modules": [
        {
            "id": 1000,
            "library": "/opt/external-server/modules/libexample.so",
            "config": {"any_key": "string value", "retries": 3},
            "configFromSecret": [{"key": "api_key", "secretKeyRef": {"name": "acme-api", "key": "token"}}],
        }
    ],
    "cars": [{"name": "car_a"}, {"name": "car_b", "modules": [{"id": 2, "library": "/opt/m/libio.so"}]}],
}
TOKEN = "s3cr3t-token-value"


def resource(name: str, namespace: str, **changes: Any) -> dict[str, Any]:
    """An ExternalServer; each test namespace has its own broker unless ``broker`` is given (the
    same company and car on one broker are one car, served by one ExternalServer only)."""
    spec = copy.deepcopy(SPEC)
    spec["broker"] = {"host": f"mosquitto.{namespace}.svc"}
    spec.update(changes)
    return {
        "apiVersion": "fleetprotocol.io/v1alpha1",
        "kind": "ExternalServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def secret(name: str, namespace: str, data: dict[str, str], type_: str = "Opaque") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": type_,
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    obj = cluster.get("externalserver", name, ns)
    return (obj or {}).get("status") or {}


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st.get("conditions") or []}


def wait_observed(
    cluster: Cluster, op: Operator, ns: str, name: str, generation: int, valid: str
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(cluster, ns, name)
        cv = conditions(st).get("ConfigValid", {})
        ok = st.get("observedGeneration") == generation and cv.get("status") == valid
        return st if ok else None

    result: dict[str, Any] = wait_for(
        f"{ns}/{name} generation {generation} observed with ConfigValid={valid}",
        check,
        timeout=30,
        on_timeout=op.log()[-4000:],
    )
    return result


def children(cluster: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    """ConfigMaps, StatefulSets and Services the operator made in ``ns``, by kind/name."""
    out: dict[str, dict[str, Any]] = {}
    selector = "app.kubernetes.io/managed-by=external-server-operator"
    for kind in ("configmap", "statefulset", "service"):
        for obj in cluster.list(kind, ns, selector):
            out[f"{kind}/{obj['metadata']['name']}"] = obj
    return out


def versions(objs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {k: v["metadata"]["resourceVersion"] for k, v in objs.items()}


def template_checksum(workload: dict[str, Any]) -> str:
    return str(workload["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION])


def config_of(cm: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(cm["data"]["config.json"])
    return doc


def show(cluster: Cluster, *args: str) -> str:
    out = cluster.kubectl(*args).stdout
    print(f"\n$ kubectl {' '.join(args)}\n{out}", end="")
    return out


# --- tests ----------------------------------------------------------------------------------------


def test_create_renders_children(cluster: Cluster, operator: Operator) -> None:
    ns = cluster.namespace("exs-create")
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    tls = {"ca.crt": "ca", "tls.crt": "cert", "tls.key": "key"}
    cluster.apply(secret("acme-mqtt", ns, tls, "kubernetes.io/tls"))
    broker = {"host": "mosquitto.fleet.svc", "port": 8883, "tls": {"secretName": "acme-mqtt"}}
    cluster.apply(resource("acme", ns, broker=broker))
    st = wait_observed(cluster, operator, ns, "acme", 1, "True")

    objs = wait_for("three children", lambda: (c := children(cluster, ns)) and len(c) == 3 and c)
    assert set(objs) == {"configmap/acme-shard-0-config", "statefulset/acme-shard-0", "service/acme"}
    es = cluster.get("externalserver", "acme", ns)
    assert es is not None
    for obj in objs.values():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "ExternalServer",
            "acme",
            es["metadata"]["uid"],
            True,
        )

    text = objs["configmap/acme-shard-0-config"]["data"]["config.json"]
    assert TOKEN not in text and base64.b64encode(TOKEN.encode()).decode() not in text
    cfg = json.loads(text)
    assert cfg["company_name"] == "acme_corp"
    assert cfg["external_communication"]["server_port"] == 8883
    assert (
        cfg["common_modules"]["1000"]["config"]["api_key"]
        == "${env:" + secret_env_name("acme-api", "token") + "}"
    )
    assert set(cfg["cars"]) == {"car_a", "car_b"}

    dep = objs["statefulset/acme-shard-0"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.invalid/fleet-external-server:test"
    assert c["command"][:5] == [
        "external-server",
        "-c",
        "/etc/external-server/config.json",
        "--http-port",
        "8080",
    ]
    assert "--tls" in c["command"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env[secret_env_name("acme-api", "token")]["valueFrom"]["secretKeyRef"] == {
        "name": "acme-api",
        "key": "token",
    }
    assert {v["name"] for v in pod["volumes"]} == {"config", "tmp", "broker-tls"}
    assert len(template_checksum(dep)) == 64
    svc = objs["service/acme"]
    assert svc["spec"]["ports"][0]["port"] == 8080
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "external-server",
        "app.kubernetes.io/instance": "acme",
    }

    # kube-controller-manager's StatefulSet controller makes the shard's one (Pending) Pod
    (pod,) = wait_for("the Pod", lambda: cluster.list("pod", ns, "app.kubernetes.io/instance=acme"))
    assert pod["metadata"]["name"] == "acme-shard-0-0"
    assert conditions(st)["Ready"]["status"] == "False"
    assert st["cars"] == {"total": 2, "connected": 0}
    assert {c["name"]: (c["shard"], c["state"]) for c in st["carStatuses"]} == {
        "car_a": (0, "Unknown"),
        "car_b": (0, "Unknown"),
    }

    out = show(cluster, "get", "exs", "-n", ns)
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "COMPANY", "CARS", "CONNECTED", "READY", "AGE"]
    assert row.split()[:5] == ["acme", "acme_corp", "2", "0", "False"]
    show(cluster, "get", "fleet", "-n", ns, "-o", "wide")


def test_update_rolls_out(cluster: Cluster, operator: Operator) -> None:
    ns = cluster.namespace("exs-update")
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    cluster.apply(resource("acme", ns))
    wait_observed(cluster, operator, ns, "acme", 1, "True")
    before = wait_for("children", lambda: (c := children(cluster, ns)) and len(c) == 3 and c)
    wait_for("first ControllerRevision", lambda: len(cluster.list("controllerrevision", ns)) == 1)
    sum1 = template_checksum(before["statefulset/acme-shard-0"])

    # a module value and a new car
    changed = resource("acme", ns, cars=[*SPEC["cars"], {"name": "car_c"}])
    changed["spec"]["modules"][0]["config"]["any_key"] = "new value"
    cluster.apply(changed)
    wait_observed(cluster, operator, ns, "acme", 2, "True")
    after = children(cluster, ns)
    cfg = config_of(after["configmap/acme-shard-0-config"])
    assert cfg["common_modules"]["1000"]["config"]["any_key"] == "new value"
    assert set(cfg["cars"]) == {"car_a", "car_b", "car_c"}
    sum2 = template_checksum(after["statefulset/acme-shard-0"])
    assert sum2 != sum1
    assert (
        after["statefulset/acme-shard-0"]["metadata"]["generation"]
        > before["statefulset/acme-shard-0"]["metadata"]["generation"]
    )
    assert (
        after["service/acme"]["metadata"]["resourceVersion"]
        == before["service/acme"]["metadata"]["resourceVersion"]
    )
    # rollout: the controller-manager records a revision for the new pod template
    wait_for("a second ControllerRevision", lambda: len(cluster.list("controllerrevision", ns)) == 2)

    # rotating the referenced Secret rolls the pods too (picked up by the status refresh)
    cluster.apply(secret("acme-api", ns, {"token": "rotated-token"}))
    wait_for(
        "checksum change after Secret rotation",
        lambda: template_checksum(children(cluster, ns)["statefulset/acme-shard-0"]) not in (sum1, sum2),
        timeout=STATUS_INTERVAL * 5,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"company": "Acme Corp"}, "spec.company"),
        ({"broker": {"host": "mosquitto", "port": 70000}}, "spec.broker.port"),
        ({"broker": {"host": "host:1883"}}, "spec.broker.host"),
        ({"broker": {"host": "mosquitto", "transport": "amqp"}}, "spec.broker.transport"),
        ({"shards": 0}, "spec.shards"),
        ({"cars": []}, "spec.cars"),
        ({"cars": [{"name": "Car-B"}]}, "spec.cars.name"),
        ({"modules": [{"id": -1, "library": "/x.so"}]}, "spec.modules.id"),
        ({"modules": [{"id": 1, "library": "relative.so"}]}, "spec.modules.library"),
        ({"logging": {"level": "LOUD"}}, "spec.logging.level"),
    ],
)
def test_schema_rejects(cluster: Cluster, operator: Operator, change: dict[str, Any], message: str) -> None:
    ns = cluster.namespace("exs-schema")
    result = cluster.apply(resource("bad", ns, **change), check=False, client_validation=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert cluster.get("externalserver", "bad", ns) is None


def test_schema_rejects_missing_required_and_duplicates(cluster: Cluster, operator: Operator) -> None:
    ns = cluster.namespace("exs-schema-2")
    obj = resource("bad", ns)
    del obj["spec"]["broker"]
    result = cluster.apply(obj, check=False, client_validation=False)
    assert result.returncode != 0 and "spec.broker" in result.stderr, result.stderr
    dup = resource("dup", ns, cars=[{"name": "car_a"}, {"name": "car_a"}])
    result = cluster.apply(dup, check=False, client_validation=False)
    assert result.returncode != 0 and "Duplicate value" in result.stderr, result.stderr


def test_invalid_spec_reported_and_children_kept(cluster: Cluster, operator: Operator) -> None:
    ns = cluster.namespace("exs-invalid")
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    cluster.apply(resource("acme", ns))
    wait_observed(cluster, operator, ns, "acme", 1, "True")
    before = wait_for("children", lambda: (c := children(cluster, ns)) and len(c) == 3 and c)
    ready_since = conditions(status(cluster, ns, "acme"))["Ready"]["lastTransitionTime"]

    # module 1000 both common and per car, and a new car: schema-valid, cross-field invalid
    bad = resource("acme", ns, cars=[{"name": "car_a", "modules": [{"id": 1000, "library": "/opt/x.so"}]}])
    cluster.apply(bad)
    st = wait_observed(cluster, operator, ns, "acme", 2, "False")
    cv = conditions(st)["ConfigValid"]
    assert cv["reason"] == "ModuleConflict"
    assert "[1000]" in cv["message"]
    assert conditions(st)["Progressing"]["reason"] == "ConfigInvalid"
    assert conditions(st)["Ready"]["lastTransitionTime"] == ready_since
    events = wait_for(
        "a ConfigInvalid Event",
        lambda: [
            e
            for e in cluster.list("event", ns)
            if e["involvedObject"]["name"] == "acme" and e["reason"] == "ConfigInvalid"
        ],
    )
    assert events[0]["type"] == "Warning" and "ModuleConflict" in events[0]["message"]
    time.sleep(STATUS_INTERVAL * 2 + 0.5)  # a couple of refresh rounds
    assert versions(children(cluster, ns)) == versions(before)
    assert len([e for e in cluster.list("event", ns) if e["reason"] == "ConfigInvalid"]) == 1
    es = cluster.get("externalserver", "acme", ns)
    assert es is not None
    print("\n# status with generation 2 (invalid), generation 1 still running:")
    print(yaml.safe_dump({"metadata": {"generation": es["metadata"]["generation"]}, "status": es["status"]}))
    show(cluster, "get", "events", "-n", ns, "--field-selector", "reason=ConfigInvalid")

    # fixed again: applied, ConfigValid flips back
    cluster.apply(resource("acme", ns, cars=[*SPEC["cars"], {"name": "car_c"}]))
    st = wait_observed(cluster, operator, ns, "acme", 3, "True")
    assert conditions(st)["ConfigValid"]["reason"] == "Valid"
    assert set(config_of(children(cluster, ns)["configmap/acme-shard-0-config"])["cars"]) == {
        "car_a",
        "car_b",
        "car_c",
    }


def test_rejected_child_is_reported(cluster: Cluster, operator: Operator) -> None:
    """A spec the CRD accepts but the StatefulSet API rejects: reported, not crash-looping."""
    ns = cluster.namespace("exs-rejected")
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    cluster.apply(resource("acme", ns, server={"nodeSelector": {"not a label key!": "x"}}))
    st = wait_observed(cluster, operator, ns, "acme", 1, "True")
    progressing = conditions(st)["Progressing"]
    assert progressing["status"] == "False" and progressing["reason"] == "ApplyFailed"
    assert "nodeSelector" in progressing["message"]
    assert "statefulset/acme-shard-0" not in children(cluster, ns)
    cluster.apply(resource("acme", ns))
    wait_for(
        "the StatefulSet once the spec is fixed", lambda: "statefulset/acme-shard-0" in children(cluster, ns)
    )


def test_sharding(cluster: Cluster, operator: Operator) -> None:
    ns = cluster.namespace("exs-shards")
    cars = [{"name": f"car_{i}"} for i in range(8)]
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    cluster.apply(resource("fleet", ns, cars=cars, shards=3))
    st = wait_observed(cluster, operator, ns, "fleet", 1, "True")
    expected = {c["name"]: shard_of(c["name"], 3) for c in cars}
    assert {c["name"]: c["shard"] for c in st["carStatuses"]} == expected
    objs = children(cluster, ns)
    for shard in set(expected.values()):
        cfg = config_of(objs[f"configmap/fleet-shard-{shard}-config"])
        assert set(cfg["cars"]) == {c for c, s in expected.items() if s == shard}
        assert f"statefulset/fleet-shard-{shard}" in objs
    assert st["shards"] == {"desired": len(set(expected.values())), "ready": 0}

    cluster.apply(resource("fleet", ns, cars=cars, shards=1))
    wait_observed(cluster, operator, ns, "fleet", 2, "True")
    objs = wait_for(
        "extra shards deleted",
        lambda: (c := children(cluster, ns)) and len(c) == 3 and c,
    )
    assert set(objs) == {"configmap/fleet-shard-0-config", "statefulset/fleet-shard-0", "service/fleet"}
    assert len(config_of(objs["configmap/fleet-shard-0-config"])["cars"]) == 8


def test_status_from_pods(cluster: Cluster, operator: Operator, status_server: FakeStatusServer) -> None:
    ns = cluster.namespace("exs-status")
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    cluster.apply(resource("acme", ns))
    wait_observed(cluster, operator, ns, "acme", 1, "True")
    pods = wait_for("the shard's Pod", lambda: cluster.list("pod", ns, "app.kubernetes.io/instance=acme"))
    status_server.document = {
        "cars": {
            "car_a": {"state": "RUNNING", "session_id": "s1", "devices": [{"module": 1000}, {"module": 2}]},
            "car_b": {"state": "CONNECTED", "devices": []},
        }
    }
    # No kubelet here: play it, the pod runs on 127.0.0.1 where the fake /status listens.
    pod_status = {
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    }
    name = pods[0]["metadata"]["name"]
    cluster.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", pod_status)

    def ready() -> dict[str, Any] | None:
        st = status(cluster, ns, "acme")
        return (
            st
            if conditions(st).get("Ready", {}).get("status") == "True" and st["cars"]["connected"]
            else None
        )

    st = wait_for(
        "Ready=True and a connected car",
        ready,
        timeout=STATUS_INTERVAL * 6,
        on_timeout=operator.log()[-3000:],
    )
    assert st["shards"] == {"desired": 1, "ready": 1}
    assert st["cars"] == {"total": 2, "connected": 1}
    cars = {c["name"]: (c["state"], c["devices"]) for c in st["carStatuses"]}
    assert cars == {"car_a": ("RUNNING", 2), "car_b": ("CONNECTED", 0)}
    assert conditions(st)["Progressing"]["reason"] == "RolledOut"
    show(cluster, "get", "exs", "-n", ns)


def test_operator_restart_changes_nothing(cluster: Cluster, operator: Operator) -> None:
    ns = cluster.namespace("exs-restart")
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    cluster.apply(resource("acme", ns, shards=2, cars=[{"name": f"car_{i}"} for i in range(4)]))
    wait_observed(cluster, operator, ns, "acme", 1, "True")
    wait_for("children", lambda: len(children(cluster, ns)) == 5)
    time.sleep(STATUS_INTERVAL + 0.5)  # let the StatefulSets' status settle
    before = versions(children(cluster, ns))
    es_before = cluster.get("externalserver", "acme", ns)

    log_size = len(operator.log())
    operator.restart()
    wait_for(
        "the restarted operator to resume the resource",
        lambda: f"[{ns}/acme] Resuming is processed" in operator.log()[log_size:],
        on_timeout=operator.log()[log_size:],
    )
    time.sleep(STATUS_INTERVAL * 2 + 0.5)  # and to run its refreshes
    assert versions(children(cluster, ns)) == before
    es_after = cluster.get("externalserver", "acme", ns)
    assert es_before is not None and es_after is not None
    assert es_after["status"] == es_before["status"]
    # not even kopf's bookkeeping annotations change: the resource is untouched
    assert es_after["metadata"]["resourceVersion"] == es_before["metadata"]["resourceVersion"]
    applied = [line for line in operator.log()[log_size:].splitlines() if "applying" in line]
    assert not [line for line in applied if f" {ns}/" in line], applied


def test_delete_garbage_collects_children(cluster: Cluster, operator: Operator) -> None:
    ns = cluster.namespace("exs-delete")
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    cluster.apply(resource("acme", ns))
    wait_observed(cluster, operator, ns, "acme", 1, "True")
    wait_for("children", lambda: len(children(cluster, ns)) == 3)
    wait_for("a Pod", lambda: cluster.list("pod", ns))
    cluster.kubectl("delete", "externalserver", "acme", "-n", ns, "--timeout=30s")
    wait_for("children garbage-collected", lambda: not children(cluster, ns), timeout=60)
    wait_for(
        "ControllerRevisions garbage-collected",
        lambda: not cluster.list("controllerrevision", ns),
        timeout=60,
    )
    wait_for("Pods garbage-collected", lambda: not cluster.list("pod", ns), timeout=60)
