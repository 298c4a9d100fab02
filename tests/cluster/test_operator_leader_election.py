"""Issue 12, point 2, against the real API server: two operator processes, one Lease; only the
holder acts, the other waits, and takes over when the holder stops (docs/operator.md)."""

from __future__ import annotations

from typing import Any

import pytest
from kube_envtest import LEASE_NAME, LEASE_NAMESPACE, Cluster, FakeStatusServer, Operator, wait_for
from test_operator_cluster import TOKEN, resource, secret, wait_observed

pytestmark = pytest.mark.cluster


def holder(cluster: Cluster) -> str:
    lease: dict[str, Any] | None = cluster.get("lease", LEASE_NAME, LEASE_NAMESPACE)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def test_only_the_lease_holder_acts_and_the_other_takes_over(
    cluster: Cluster, operator: Operator, status_server: FakeStatusServer
) -> None:
    wait_for("the session operator leading", lambda: holder(cluster).startswith("operator_"))
    standby = Operator(cluster, status_server.port, log_name="operator-standby", identity="standby")
    standby.start()
    try:
        wait_for(
            "the second operator waiting for the Lease",
            lambda: "is held by operator_" in standby.log(),
            on_timeout=standby.log()[-3000:],
        )
        ns = cluster.namespace("exs-leader")
        cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
        cluster.apply(resource("acme", ns))
        wait_observed(cluster, operator, ns, "acme", 1, "True")
        assert f"{ns}/acme" in operator.log()
        assert ns not in standby.log(), "the waiting operator acted"
        assert holder(cluster).startswith("operator_")

        # The leader stops (a rollout, a crash): the other one takes over and acts.
        operator.stop()
        wait_for(
            "the second operator leading",
            lambda: holder(cluster).startswith("standby_"),
            on_timeout=standby.log()[-3000:],
        )
        cluster.apply(resource("acme", ns, cars=[{"name": "car_a"}, {"name": "car_z"}]))
        wait_observed(cluster, standby, ns, "acme", 2, "True")
        assert f"{ns}/acme" in standby.log()

        # And back: the restarted one waits until the second one stops.
        operator.start()
        wait_for("the restarted operator waiting", lambda: "is held by standby_" in operator.log())
    finally:
        standby.stop()
    wait_for(
        "the session operator leading again",
        lambda: holder(cluster).startswith("operator_"),
        on_timeout=operator.log()[-3000:],
    )


def test_an_operator_that_loses_the_lease_stops_acting(cluster: Cluster, operator: Operator) -> None:
    """Another process holds the Lease now (this one could not renew in time): it stops and
    exits (non-zero, so its pod restarts and waits), instead of acting next to the new holder."""
    wait_for("the session operator leading", lambda: holder(cluster).startswith("operator_"))
    lease = cluster.get("lease", LEASE_NAME, LEASE_NAMESPACE)
    assert lease is not None
    cluster.request(
        "PATCH",
        f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{LEASE_NAME}",
        {"spec": {"holderIdentity": "intruder", "renewTime": lease["spec"]["renewTime"]}},
    )
    proc = operator.proc
    assert proc is not None
    wait_for("the operator to exit", lambda: proc.poll() is not None, on_timeout=operator.log()[-3000:])
    assert proc.returncode == 1
    assert "is now held by intruder: stopped acting" in operator.log()
    # The intruder never renews: a new operator takes over once the Lease has expired.
    operator.start()
    wait_for(
        "the restarted operator leading",
        lambda: holder(cluster).startswith("operator_"),
        timeout=40,
        on_timeout=operator.log()[-3000:],
    )
