"""The Helm chart against a real kube-apiserver 1.20 (envtest: etcd + kube-apiserver +
kube-controller-manager, no kubelet): server-side dry runs of the rendered manifests, then
`helm install` / `upgrade` / `uninstall` with the operator running as a local process under the
chart's ServiceAccount (a token the API server issues), so the chart's RBAC is what it runs with.
Run with -s to see the operator's view (`kubectl get exs`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import (
    CHART,
    FULL,
    TRY_OUT,
    ChartOperator,
    Helm,
    forbidden_lines,
    service_account_kubeconfig,
)
from external_server_operator.render import shard_of
from kube_envtest import Cluster, wait_for

pytestmark = pytest.mark.cluster

CRD_NAME = "externalservers.fleetprotocol.io"


def expected_shards(spec: dict[str, Any]) -> set[str]:
    """The shard StatefulSets the operator must create for ``spec`` (non-empty shards only)."""
    shards = int(spec.get("shards", 1))
    return {f"-shard-{shard_of(car['name'], shards)}" for car in spec["cars"]}


def shard_statefulsets(cluster: Cluster, ns: str, name: str) -> set[str]:
    selector = f"app.kubernetes.io/managed-by=external-server-operator,app.kubernetes.io/instance={name}"
    return {d["metadata"]["name"].removeprefix(name) for d in cluster.list("statefulset", ns, selector)}


def observed(cluster: Cluster, ns: str, name: str, generation: int) -> dict[str, Any] | None:
    obj = cluster.get("externalserver", name, ns)
    status = (obj or {}).get("status") or {}
    valid = {c["type"]: c["status"] for c in status.get("conditions") or []}.get("ConfigValid")
    return status if status.get("observedGeneration") == generation and valid == "True" else None


def wait_reconciled(
    cluster: Cluster, op: ChartOperator, ns: str, name: str, spec: dict[str, Any], generation: int
) -> None:
    wait_for(
        f"{ns}/{name} generation {generation} reconciled",
        lambda: observed(cluster, ns, name, generation),
        timeout=45,
        on_timeout=op.log()[-4000:],
    )
    want = expected_shards(spec)
    wait_for(
        f"{ns}/{name} shard StatefulSets {sorted(want)}",
        lambda: shard_statefulsets(cluster, ns, name) == want,
        timeout=30,
        on_timeout=op.log()[-4000:],
    )


def can_i(cluster: Cluster, user: str, *args: str) -> bool:
    result = cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
    return bool(result.stdout.strip() == "yes")


def uninstall_leaves_nothing(cluster: Cluster, helm: Helm, release: str, ns: str, *flags: str) -> None:
    out = helm.run("uninstall", release, "-n", ns, "--wait", "--timeout", "60s", *flags)
    print(out.stdout)
    wait_for("the release's ExternalServers gone", lambda: not cluster.list("externalserver", ns), timeout=30)
    wait_for(
        "their children garbage-collected",
        lambda: (
            not [
                o
                for kind in ("statefulset", "configmap", "service", "pod")
                for o in cluster.list(kind, ns, "app.kubernetes.io/managed-by=external-server-operator")
            ]
        ),
        timeout=60,
    )
    left = cluster.kubectl(
        "get", "all,serviceaccount,role,rolebinding,configmap,secret,job,lease", "-n", ns,
        "-l", f"app.kubernetes.io/instance={release}", "-o", "name",
    ).stdout.split()  # fmt: skip
    assert not left, f"left behind by helm uninstall {' '.join(flags)}: {left}"


def helm_install_and_run_operator(
    cluster: Cluster, helm: Helm, tmp_path: Path, release: str, ns: str, values: Path
) -> tuple[ChartOperator, str]:
    out = helm.run(
        "install", release, str(CHART), "-n", ns, "--create-namespace", "-f", str(values), "--timeout", "2m"
    )
    print(f"\n$ helm install {release} -n {ns} -f {values.name}\n{out.stdout}")
    assert "STATUS: deployed" in out.stdout
    assert "NOTES:" in out.stdout
    crd = cluster.get("crd", CRD_NAME)
    assert crd is not None and crd["metadata"]["annotations"].get("meta.helm.sh/release-name") is None, (
        "the CRD comes from the chart's crds/ directory (not a templated, release-owned object)"
    )
    (dep,) = [
        d
        for d in cluster.list("deployment", ns, f"app.kubernetes.io/instance={release}")
        if d["metadata"]["name"].endswith("-operator")
    ]
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    kubeconfig = service_account_kubeconfig(cluster, ns, sa, tmp_path / f"{release}-sa.kubeconfig")
    op = ChartOperator(cluster, dep, kubeconfig, f"operator-{release}")
    op.start()
    return op, f"system:serviceaccount:{ns}:{sa}"


def test_rendered_manifests_pass_server_side_dry_run(
    cluster_helm: Helm, chart_cluster: Cluster, crd_installed: Path
) -> None:
    chart_cluster.namespace("fleet")
    for name, values in (("default", []), ("try-out", [TRY_OUT]), ("full", [FULL])):
        args = ["fleet", str(CHART), "--namespace", "fleet"]
        for v in values:
            args += ["-f", str(v)]
        manifest = cluster_helm.template_text(*args)
        result = chart_cluster.kubectl(
            "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifest, check=False
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        print(f"\n[{name}] kubectl apply --dry-run=server\n{result.stdout}", end="")


def test_install_upgrade_uninstall_cluster_wide(
    cluster_helm: Helm, chart_cluster: Cluster, tmp_path: Path
) -> None:
    cluster, release, ns = chart_cluster, "fleet", "fleet-cw"
    values = yaml.safe_load(FULL.read_text())
    op, user = helm_install_and_run_operator(cluster, cluster_helm, tmp_path, release, ns, FULL)
    try:
        specs = {es["name"]: es["spec"] for es in values["externalServers"]}
        for name, spec in specs.items():
            wait_reconciled(cluster, op, ns, name, spec, generation=1)
        # It leads through the release's Lease (named like its Deployment), under the chart's RBAC.
        lease = cluster.get("lease", op.deployment["metadata"]["name"], ns)
        assert lease is not None and lease["spec"]["holderIdentity"], lease
        print(cluster.kubectl("get", "exs", "-n", ns, "-o", "wide").stdout)

        # Cluster-wide: it reconciles an ExternalServer in a namespace the chart never heard of.
        other = cluster.namespace("fleet-elsewhere")
        extra = {"company": "initech", "broker": {"host": "mqtt.example.com"}, "cars": [{"name": "car_x"}]}
        extra["modules"] = [{"id": 1000, "library": "/opt/external-server/modules/libexample.so"}]
        cluster.apply(
            {
                "apiVersion": "fleetprotocol.io/v1alpha1",
                "kind": "ExternalServer",
                "metadata": {"name": "initech", "namespace": other},
                "spec": extra,
            }
        )
        wait_reconciled(cluster, op, other, "initech", extra, generation=1)
        cluster.kubectl("delete", "exs", "initech", "-n", other, "--wait=true", "--timeout=30s")

        # What the ServiceAccount may not do.
        for verb_resource in (
            ("list", "secrets"),
            ("watch", "secrets"),
            ("create", "secrets"),
            ("delete", "externalservers.fleetprotocol.io"),
            ("create", "externalservers.fleetprotocol.io"),
            ("update", "statefulsets.apps"),
            ("create", "deployments.apps"),
            ("get", "podtemplates"),
            ("create", "pods"),
            ("delete", "pods"),
            ("get", "pods"),
            ("list", "namespaces"),
            ("create", "clusterroles.rbac.authorization.k8s.io"),
        ):
            assert not can_i(cluster, user, *verb_resource, "-n", ns), f"{user} may {verb_resource}"
        assert can_i(cluster, user, "patch", "externalservers.fleetprotocol.io", "-n", "any-namespace")

        # helm upgrade: more shards and one more car for acme.
        upgraded = copy.deepcopy(values)
        acme = next(es for es in upgraded["externalServers"] if es["name"] == "acme")
        acme["spec"]["shards"] = 3
        acme["spec"]["cars"].append({"name": "car_d"})
        upgraded_file = tmp_path / "upgraded.yaml"
        upgraded_file.write_text(yaml.safe_dump(upgraded))
        out = cluster_helm.run("upgrade", release, str(CHART), "-n", ns, "-f", str(upgraded_file))
        assert "STATUS: deployed" in out.stdout and "REVISION: 2" in out.stdout
        wait_reconciled(cluster, op, ns, "acme", acme["spec"], generation=2)
        cm = cluster.get("configmap", "acme-shard-0-config", ns) or {}
        print(f"acme after upgrade: {sorted(shard_statefulsets(cluster, ns, 'acme'))}")
        assert cm or "-shard-0" not in expected_shards(acme["spec"])

        assert not forbidden_lines(op.log()), "\n".join(forbidden_lines(op.log()))

        # helm uninstall (there are no hooks): the ExternalServers go at once (no finalizer), their
        # children with them by garbage collection; the CRD stays.
        uninstall_leaves_nothing(cluster, cluster_helm, release, ns)
        wait_for(
            "the release's ExternalServers deleted",
            lambda: not cluster.list("externalserver", ns),
            timeout=60,
            on_timeout=op.log()[-4000:],
        )
        wait_for(
            "the shard StatefulSets garbage-collected",
            lambda: (
                not cluster.list("statefulset", ns, "app.kubernetes.io/managed-by=external-server-operator")
            ),
            timeout=60,
        )
        assert cluster.get("crd", CRD_NAME) is not None
        assert cluster.get("clusterrole", "fleet-operator") is None
    finally:
        op.stop()


def test_install_namespaced_try_out(cluster_helm: Helm, chart_cluster: Cluster, tmp_path: Path) -> None:
    cluster, release, ns = chart_cluster, "tryout", "fleet-ns"
    values = yaml.safe_load(TRY_OUT.read_text())
    op, user = helm_install_and_run_operator(cluster, cluster_helm, tmp_path, release, ns, TRY_OUT)
    try:
        (es,) = values["externalServers"]
        wait_reconciled(cluster, op, ns, es["name"], es["spec"], generation=1)
        obj = cluster.get("externalserver", es["name"], ns) or {}
        assert obj["spec"]["broker"] == {
            "host": f"{release}-external-server-mosquitto.{ns}.svc",
            "port": 1883,
            "transport": "mqtt",
        }
        cm = cluster.get("configmap", f"{es['name']}-shard-0-config", ns)
        assert cm is not None
        assert f"{release}-external-server-mosquitto.{ns}.svc" in cm["data"]["config.json"]
        broker = cluster.get("deployment", f"{release}-external-server-mosquitto", ns)
        assert broker is not None
        print(cluster.kubectl("get", "exs,deploy,svc,cm", "-n", ns).stdout)

        # Namespaced: nothing outside its namespace; cluster-wide only kopf's read-only discovery.
        assert not can_i(cluster, user, "list", "externalservers.fleetprotocol.io", "-n", "default")
        assert not can_i(cluster, user, "get", "secrets", "-n", "default")
        assert not can_i(cluster, user, "list", "deployments.apps", "-n", "default")
        assert not can_i(cluster, user, "get", "customresourcedefinitions.apiextensions.k8s.io")
        assert can_i(cluster, user, "list", "namespaces")
        assert can_i(cluster, user, "patch", "externalservers.fleetprotocol.io/status", "-n", ns)
        assert can_i(cluster, user, "delete", "statefulsets.apps", "-n", ns)
        assert not forbidden_lines(op.log()), "\n".join(forbidden_lines(op.log()))

        # With the operator gone, `helm uninstall --no-hooks` still leaves nothing behind.
        op.stop()
        uninstall_leaves_nothing(cluster, cluster_helm, release, ns, "--no-hooks")
    finally:
        op.stop()
