"""Issue 12, point 6, against the real API server: no finalizer on an ExternalServer (the
status refresh does not need one), so deleting it, or its namespace, completes with no
operator running; a finalizer an earlier version left is removed (docs/operator.md)."""

from __future__ import annotations

from typing import Any

import pytest
from kube_envtest import Cluster, Operator, wait_for
from test_operator_cluster import TOKEN, children, resource, secret, wait_observed

pytestmark = pytest.mark.cluster

LEGACY_FINALIZER = "operator.fleetprotocol.io/finalizer"


def finalizers(cluster: Cluster, ns: str, name: str) -> list[str] | None:
    obj: dict[str, Any] | None = cluster.get("externalserver", name, ns)
    return None if obj is None else list(obj["metadata"].get("finalizers") or [])


def test_deleting_needs_no_operator(cluster: Cluster, operator: Operator) -> None:
    ns = cluster.namespace("exs-no-finalizer")
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    cluster.apply(resource("acme", ns))
    wait_observed(cluster, operator, ns, "acme", 1, "True")
    wait_for("children", lambda: len(children(cluster, ns)) == 3)
    # Nothing guards its deletion (the status refresh, tested in test_operator_cluster.py
    # test_status_from_pods and test_update_rolls_out, needs no finalizer).
    assert finalizers(cluster, ns, "acme") == []

    operator.stop()
    try:
        cluster.kubectl("delete", "externalserver", "acme", "-n", ns, "--timeout=30s")
        assert cluster.get("externalserver", "acme", ns) is None
        wait_for("children garbage-collected", lambda: not children(cluster, ns), timeout=60)

        cluster.apply(resource("other", ns))  # never seen by any operator
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
        wait_for("the namespace deleted", lambda: cluster.get("namespace", ns) is None, timeout=90)
    finally:
        operator.start()


def test_a_finalizer_left_by_an_earlier_version_is_removed(cluster: Cluster, operator: Operator) -> None:
    ns = cluster.namespace("exs-legacy-finalizer")
    cluster.apply(secret("acme-api", ns, {"token": TOKEN}))
    obj = resource("acme", ns)
    obj["metadata"]["finalizers"] = [LEGACY_FINALIZER]
    cluster.apply(obj)
    wait_observed(cluster, operator, ns, "acme", 1, "True")
    wait_for(
        "the old finalizer removed",
        lambda: finalizers(cluster, ns, "acme") == [],
        on_timeout=operator.log()[-3000:],
    )
    cluster.kubectl("delete", "externalserver", "acme", "-n", ns, "--timeout=30s")
