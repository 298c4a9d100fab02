"""Issue 12, point 1, against the real API server and kube-controller-manager: at most one
server pod per shard at any time (a replacement only once its predecessor is gone, for
deletions and rollouts), MQTT client ids unique per ExternalServer and shard, and a car
listed by two ExternalServers served by the earlier one only (docs/operator.md).

There is no kubelet: the tests bind the pods to a Node object so that a deletion is graceful
(the pod stays Terminating, as it does while a real kubelet stops the container), and play
the kubelet's final step (a deletion with grace period 0) themselves."""

from __future__ import annotations

from typing import Any

import pytest
from external_server_operator.render import CHECKSUM_ANNOTATION, client_id
from kube_envtest import Cluster, Operator, wait_for
from test_operator_cluster import (
    SPEC,
    TOKEN,
    conditions,
    config_of,
    resource,
    secret,
    status,
    wait_observed,
)

pytestmark = pytest.mark.cluster

NODE = "envtest-node"
POD_SELECTOR = "app.kubernetes.io/name=external-server,app.kubernetes.io/instance=acme"


def ensure_node(cluster: Cluster) -> None:
    if cluster.get("node", NODE) is None:
        cluster.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})


def bind(cluster: Cluster, ns: str, pod: str) -> None:
    """What the scheduler does: the pod is now on a node, so its deletion becomes graceful."""
    cluster.request(
        "POST",
        f"/api/v1/namespaces/{ns}/pods/{pod}/binding",
        {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
        },
        content_type="application/json",
    )


def pods(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return cluster.list("pod", ns, POD_SELECTOR)


def statefulset(cluster: Cluster, ns: str, name: str = "acme-shard-0") -> dict[str, Any]:
    obj = cluster.get("statefulset", name, ns)
    assert obj is not None, f"statefulset {ns}/{name} missing"
    return obj


def seen_terminating(cluster: Cluster, ns: str) -> None:
    """Wait until the StatefulSet controller has synced the set with its pod Terminating: its
    status then counts the pod (replicas 1) but neither as current nor as updated. A
    replacement, if it made one, would have been created in that same sync, before the status."""

    def check() -> bool:
        st = statefulset(cluster, ns).get("status") or {}
        return st.get("replicas") == 1 and not st.get("currentReplicas") and not st.get("updatedReplicas")

    wait_for("the StatefulSet controller to see the pod Terminating", check)


def finish_termination(cluster: Cluster, ns: str, pod: dict[str, Any]) -> None:
    """The kubelet's last step: the container stopped, the pod object goes."""
    cluster.kubectl(
        "delete", "pod", pod["metadata"]["name"], "-n", ns, "--grace-period=0", "--force", "--wait=true"
    )


def test_a_replacement_pod_starts_only_after_its_predecessor_is_gone(
    cluster: Cluster, operator: Operator
) -> None:
    ns = cluster.namespace("exs-one-pod")
    ensure_node(cluster)
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    cluster.apply(resource("acme", ns))
    wait_observed(cluster, operator, ns, "acme", 1, "True")

    sts = wait_for("the shard's StatefulSet", lambda: cluster.get("statefulset", "acme-shard-0", ns))
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert sts["spec"]["serviceName"] == "acme"
    assert cluster.get("deployment", "acme-shard-0", ns) is None
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLEET_MQTT_CLIENT_ID"] == client_id(ns, "acme", 0) == f"es-{ns}-acme-0"

    # --- a deleted (or evicted) pod: no replacement while it terminates ---------------------
    (first,) = wait_for("the shard's pod", lambda: pods(cluster, ns))
    assert first["metadata"]["name"] == "acme-shard-0-0"
    bind(cluster, ns, "acme-shard-0-0")
    cluster.kubectl("delete", "pod", "acme-shard-0-0", "-n", ns, "--wait=false")
    wait_for(
        "the pod Terminating",
        lambda: [p for p in pods(cluster, ns) if p["metadata"].get("deletionTimestamp")],
    )
    seen_terminating(cluster, ns)
    (terminating,) = pods(cluster, ns)
    assert terminating["metadata"]["uid"] == first["metadata"]["uid"], "a second pod started"

    finish_termination(cluster, ns, terminating)
    (second,) = wait_for(
        "the replacement pod",
        lambda: [p for p in pods(cluster, ns) if p["metadata"]["uid"] != first["metadata"]["uid"]],
    )
    assert second["metadata"]["name"] == "acme-shard-0-0"

    # --- a rollout (config change): the old pod goes first, then the new one starts ----------
    bind(cluster, ns, "acme-shard-0-0")
    old_checksum = second["metadata"]["annotations"][CHECKSUM_ANNOTATION]
    cluster.apply(resource("acme", ns, cars=[*SPEC["cars"], {"name": "car_c"}]))
    wait_observed(cluster, operator, ns, "acme", 2, "True")
    wait_for(
        "the old pod Terminating for the rollout",
        lambda: [
            p
            for p in pods(cluster, ns)
            if p["metadata"]["uid"] == second["metadata"]["uid"] and p["metadata"].get("deletionTimestamp")
        ],
        timeout=30,
    )
    seen_terminating(cluster, ns)
    (terminating,) = pods(cluster, ns)
    assert terminating["metadata"]["uid"] == second["metadata"]["uid"], "the new pod did not wait"

    finish_termination(cluster, ns, terminating)
    (third,) = wait_for(
        "the rolled-out pod",
        lambda: [p for p in pods(cluster, ns) if p["metadata"]["uid"] != second["metadata"]["uid"]],
    )
    assert third["metadata"]["annotations"][CHECKSUM_ANNOTATION] != old_checksum


def test_client_ids_are_unique_per_externalserver_and_shard(cluster: Cluster, operator: Operator) -> None:
    """Same company, same broker, same names, two namespaces: four shards, four client ids
    (the cars differ: the same car on one broker is served by one ExternalServer only)."""
    seen: dict[str, str] = {}
    broker = {"host": "mosquitto.ids.svc"}
    for i, ns in enumerate(
        (cluster.namespace("exs-ids-staging"), cluster.namespace("exs-ids-production-long-name"))
    ):
        cars = [{"name": f"car_{i}_{n}"} for n in range(6)]
        cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
        cluster.apply(resource("acme", ns, broker=broker, cars=cars, shards=2))
        wait_observed(cluster, operator, ns, "acme", 1, "True")
        for shard in (0, 1):
            sts = wait_for(
                f"{ns} shard {shard}",
                lambda ns=ns, s=shard: cluster.get("statefulset", f"acme-shard-{s}", ns),
            )
            (container,) = sts["spec"]["template"]["spec"]["containers"]
            (value,) = [e["value"] for e in container["env"] if e["name"] == "FLEET_MQTT_CLIENT_ID"]
            assert value == client_id(ns, "acme", shard)
            assert len(value.encode()) <= 23, value
            seen[f"{ns}/{shard}"] = value
    assert len(set(seen.values())) == 4, seen


def served_cars(cluster: Cluster, ns: str, name: str) -> set[str]:
    cms = cluster.list("configmap", ns, f"app.kubernetes.io/instance={name}")
    return {car for cm in cms for car in config_of(cm)["cars"]}


def test_a_car_listed_twice_is_served_by_the_earlier_externalserver(
    cluster: Cluster, operator: Operator
) -> None:
    first_ns, second_ns = cluster.namespace("exs-claim-a"), cluster.namespace("exs-claim-b")
    for ns in (first_ns, second_ns):
        cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    broker = {"host": "mosquitto.claims.svc"}
    cluster.apply(resource("first", first_ns, broker=broker, cars=[{"name": "car_a"}, {"name": "car_b"}]))
    wait_observed(cluster, operator, first_ns, "first", 1, "True")
    cluster.apply(resource("second", second_ns, broker=broker, cars=[{"name": "car_b"}, {"name": "car_c"}]))

    def conflict() -> dict[str, Any] | None:
        c = conditions(status(cluster, second_ns, "second")).get("CarsExclusive")
        return c if c and c["status"] == "False" else None

    cond = wait_for("CarsExclusive=False on the later one", conflict, on_timeout=operator.log()[-3000:])
    assert cond["reason"] == "CarsClaimedElsewhere"
    assert f"car_b (served by {first_ns}/first)" in cond["message"]
    assert wait_for(
        "second serves car_c only", lambda: served_cars(cluster, second_ns, "second") == {"car_c"}
    )
    assert served_cars(cluster, first_ns, "first") == {"car_a", "car_b"}
    assert conditions(status(cluster, first_ns, "first"))["CarsExclusive"]["status"] == "True"
    events = wait_for(
        "a CarClaimed Event on the later one",
        lambda: [e for e in cluster.list("event", second_ns) if e["reason"] == "CarClaimed"],
    )
    assert events[0]["type"] == "Warning" and events[0]["involvedObject"]["name"] == "second"
    assert "car_b" in events[0]["message"]
    assert not [e for e in cluster.list("event", first_ns) if e["reason"] == "CarClaimed"]
    st = status(cluster, second_ns, "second")
    assert [c["name"] for c in st["carStatuses"]] == ["car_c"]

    # The same company and car on another broker is another car: no conflict.
    other = resource("third", second_ns, cars=[{"name": "car_b"}], broker={"host": "other-broker.example"})
    cluster.apply(other)
    st = wait_observed(cluster, operator, second_ns, "third", 1, "True")
    assert conditions(st)["CarsExclusive"]["status"] == "True"
    assert served_cars(cluster, second_ns, "third") == {"car_b"}

    # The earlier one goes: the later one takes the car over.
    cluster.kubectl("delete", "exs", "first", "-n", first_ns, "--timeout=30s")
    wait_for(
        "second serves car_b once first is gone",
        lambda: served_cars(cluster, second_ns, "second") == {"car_b", "car_c"},
        timeout=30,
        on_timeout=operator.log()[-3000:],
    )
    wait_for(
        "CarsExclusive=True again",
        lambda: conditions(status(cluster, second_ns, "second"))["CarsExclusive"]["status"] == "True",
    )


def test_an_older_versions_deployment_is_gone_before_the_statefulset_starts(
    cluster: Cluster, operator: Operator
) -> None:
    """Upgrade from an operator that rendered a Deployment per shard: its pod must be gone
    before the shard's StatefulSet starts one (the Deployment is deleted in the foreground)."""
    ns = cluster.namespace("exs-upgrade")
    ensure_node(cluster)
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    operator.stop()
    try:
        cluster.apply(resource("acme", ns))
        es = wait_for("the ExternalServer", lambda: cluster.get("externalserver", "acme", ns))
        labels = {
            "app.kubernetes.io/name": "external-server",
            "app.kubernetes.io/instance": "acme",
            "app.kubernetes.io/managed-by": "external-server-operator",
            "fleetprotocol.io/shard": "0",
        }
        owner = {
            "apiVersion": "fleetprotocol.io/v1alpha1",
            "kind": "ExternalServer",
            "name": "acme",
            "uid": es["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        container = {"name": "external-server", "image": "registry.invalid/fleet-external-server:old"}
        cluster.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "acme-shard-0",
                    "namespace": ns,
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": {
                    "replicas": 1,
                    "strategy": {"type": "Recreate"},
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
                },
            }
        )
        (old,) = wait_for("the old version's pod", lambda: pods(cluster, ns))
        bind(cluster, ns, old["metadata"]["name"])
    finally:
        operator.start()

    wait_observed(cluster, operator, ns, "acme", 1, "True")
    wait_for(
        "the old Deployment being deleted",
        lambda: (
            (cluster.get("deployment", "acme-shard-0", ns) or {}).get("metadata", {}).get("deletionTimestamp")
        ),
    )
    wait_for(
        "its pod Terminating",
        lambda: [p for p in pods(cluster, ns) if p["metadata"].get("deletionTimestamp")],
    )
    # A reconcile with the old pod still Terminating (a spec change, observed): no StatefulSet.
    cluster.apply(resource("acme", ns, cars=[*SPEC["cars"], {"name": "car_c"}]))
    wait_observed(cluster, operator, ns, "acme", 2, "True")
    assert cluster.get("statefulset", "acme-shard-0", ns) is None
    assert [p["metadata"]["uid"] for p in pods(cluster, ns)] == [old["metadata"]["uid"]]

    finish_termination(cluster, ns, old)
    wait_for(
        "the old Deployment gone", lambda: cluster.get("deployment", "acme-shard-0", ns) is None, timeout=60
    )
    wait_for(
        "the StatefulSet and its pod",
        lambda: [p for p in pods(cluster, ns) if p["metadata"]["name"] == "acme-shard-0-0"],
        timeout=30,
        on_timeout=operator.log()[-3000:],
    )
