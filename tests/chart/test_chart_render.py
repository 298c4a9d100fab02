"""The Helm chart without a cluster: the CRD copy, values.schema.json, `helm lint`, and
`helm template` output checked against the Kubernetes schemas and the chart's own contract
(least-privilege RBAC, Kubernetes 1.20 APIs, labels, what the operator expects)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_helpers import (
    CHART,
    EXAMPLES,
    FULL,
    K8S_120_APIS,
    ROOT,
    SERVER_APP_NAME,
    TRY_OUT,
    Helm,
    HelmError,
    by_kind,
    one,
)

sys.path.insert(0, str(ROOT / "tools" / "helm"))
import gen_values_schema

#: Oldest Kubernetes whose schemas kubernetes-validate ships; 1.20 itself is covered by the
#: server-side dry run against the envtest API server (test_chart_install.py).
SCHEMA_VERSION = "1.25"
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)
#: The operator's permissions, exactly (tests fail on any extra verb or resource).
NAMESPACED_RULES = {
    ("fleetprotocol.io", "externalservers"): {"get", "list", "watch", "patch"},
    ("fleetprotocol.io", "externalservers/status"): {"get", "patch"},
    ("fleetprotocol.io", "externalservers/finalizers"): {"update"},
    ("", "configmaps"): {"get", "list", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "create", "patch", "delete"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "delete"},
    # shard Deployments of operator versions before the StatefulSets: deleted on upgrade
    ("apps", "deployments"): {"list", "delete"},
    # server-side dry run of the shards' pod templates (never stored)
    ("", "podtemplates"): {"create"},
    ("", "pods"): {"list"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
}
CLUSTER_ONLY_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
#: kopf's runtime observation in namespaced mode (rbac.clusterDiscovery), read-only.
DISCOVERY_RULES = {
    ("", "namespaces"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
VALUE_FILES = {"default": [], "try-out": [TRY_OUT], "full": [FULL]}
#: Leader election (a Role in the release namespace, whatever the watch mode): get/update of the
#: release's one Lease, which the chart creates (and `helm uninstall` removes).
LEADER_RULES = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["fleet-external-server-operator"],
        "verbs": ["get", "update"],
    },
]


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource), rule
                assert "*" not in rule["verbs"], rule
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def split_leader(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the leader-election Role and RoleBinding, every other object); checks the former."""
    leader = [
        d
        for d in docs
        if d["metadata"]["name"].endswith("-operator-leader")
        or (d["kind"] == "Lease" and d["metadata"]["name"] == "fleet-external-server-operator")
    ]
    assert sorted(d["kind"] for d in leader) == ["Lease", "Role", "RoleBinding"]
    role = next(d for d in leader if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == "fleet"
    assert role["rules"] == LEADER_RULES
    return leader, [d for d in docs if d not in leader]


def load_values(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return data


# --- no Helm needed -------------------------------------------------------------------------------


def test_values_schema_is_up_to_date() -> None:
    assert gen_values_schema.main(["--check"]) == 0, "run: python tools/helm/gen_values_schema.py"


@pytest.mark.parametrize(
    "path", [CHART / "values.yaml", *sorted(EXAMPLES.glob("*.yaml"))], ids=lambda p: p.name
)
def test_values_files_match_the_schema(path: Path) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(load_values(path))


def test_schema_spec_accepts_exactly_what_the_crd_accepts_for_the_examples() -> None:
    """Each example spec also passes the CRD's own schema (with the dev broker filled in)."""
    crd = yaml.safe_load((CHART / "crds" / "externalserver.yaml").read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path in EXAMPLES.glob("*.yaml"):
        for es in load_values(path).get("externalServers", []):
            spec = {"broker": {"host": "mosquitto.fleet.svc"}, **es["spec"]}
            jsonschema.Draft7Validator(spec_schema).validate(spec)


# --- helm lint / template ---------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-f", str(TRY_OUT)],
        ["-f", str(FULL)],
        ["--set", "operator.watch.clusterWide=true"],
        ["--set", "operator.watch.namespaces={fleet,fleet-dev}"],
    ],
    ids=["default", "try-out", "full", "cluster-wide", "two-namespaces"],
)
def test_helm_lint(helm: Helm, args: list[str]) -> None:
    result = helm.run("lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.cluster
@pytest.mark.parametrize("name", list(VALUE_FILES))
def test_rendered_objects_are_valid_kubernetes(helm: Helm, name: str) -> None:
    docs = helm.template(values=VALUE_FILES[name])
    custom = []
    for doc in docs:
        assert doc["apiVersion"] in K8S_120_APIS, f"{doc['kind']} uses {doc['apiVersion']} (not in 1.20)"
        if doc["apiVersion"].startswith("fleetprotocol.io/"):
            custom.append(doc)
            continue
        kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
        labels = doc["metadata"].get("labels", {})
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
    expected = load_values(VALUE_FILES[name][0]).get("externalServers", []) if VALUE_FILES[name] else []
    assert len(custom) == len(expected)


@pytest.mark.cluster
def test_default_install_is_namespaced_least_privilege(helm: Helm) -> None:
    docs = helm.template(release="fleet", namespace="fleet")
    _, others = split_leader(docs)
    kinds = by_kind(others)
    assert sorted(kinds) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    (discovery,) = kinds["ClusterRole"]
    assert discovery["metadata"]["name"] == "fleet-external-server-operator-discovery"
    assert rules_of(discovery) == DISCOVERY_RULES
    (role,) = kinds["Role"]
    assert role["metadata"]["namespace"] == "fleet"
    assert rules_of(role) == NAMESPACED_RULES
    (binding,) = kinds["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "fleet-external-server-operator",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "fleet-external-server", "namespace": "fleet"}
    ]

    dep = one(docs, "Deployment", "-operator")
    spec = dep["spec"]
    # Leader election: a new pod waits for the Lease, so a rollout may overlap old and new.
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "fleet-external-server"
    (c,) = pod["containers"]
    assert c["image"] == "fleet-external-server-operator:0.1.0"
    assert c["args"] == ["--namespace=fleet", "--liveness-host=0.0.0.0", "--liveness-port=8081"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    # The operator's own default (settings.DEFAULT_IMAGE) and the chart agree.
    assert env["EXTERNAL_SERVER_IMAGE"] == "fleet-external-server:0.1.0"
    assert env["EXTERNAL_SERVER_OPERATOR_LEASE_NAMESPACE"] == "fleet"
    assert env["EXTERNAL_SERVER_OPERATOR_LEASE_NAME"] == "fleet-external-server-operator"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert c["ports"] == [{"name": "healthz", "containerPort": 8081, "protocol": "TCP"}]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.cluster
def test_namespace_list_renders_one_role_per_namespace(helm: Helm) -> None:
    docs = helm.template(sets=["operator.watch.namespaces={team-a,team-b}", "rbac.clusterDiscovery=false"])
    _, others = split_leader(docs)
    kinds = by_kind(others)
    # Nothing cluster-scoped at all.
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    assert sorted(r["metadata"]["namespace"] for r in kinds["Role"]) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in kinds["RoleBinding"]) == ["team-a", "team-b"]
    for b in kinds["RoleBinding"]:
        assert b["subjects"][0]["namespace"] == "fleet"
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["args"][:2] == ["--namespace=team-a", "--namespace=team-b"]


@pytest.mark.cluster
def test_cluster_wide_uses_a_cluster_role(helm: Helm) -> None:
    docs = helm.template(sets=["operator.watch.clusterWide=true"])
    _, others = split_leader(docs)
    kinds = by_kind(others)
    assert "Role" not in kinds and "RoleBinding" not in kinds
    (role,) = kinds["ClusterRole"]
    assert rules_of(role) == {**NAMESPACED_RULES, **CLUSTER_ONLY_RULES}
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["args"][0] == "--all-namespaces"


@pytest.mark.cluster
def test_nothing_rendered_looks_like_a_server_pod(helm: Helm) -> None:
    """The operator lists pods and deletes children by app.kubernetes.io/name=external-server +
    instance=<ExternalServer>: a chart object with that label could be taken for a shard."""
    for doc in helm.template(values=[FULL], release="acme"):
        if doc["kind"] == "ExternalServer":
            continue
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] != SERVER_APP_NAME, doc["metadata"]["name"]
        template = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
        assert template.get("app.kubernetes.io/name") != SERVER_APP_NAME


@pytest.mark.cluster
def test_external_servers_from_values(helm: Helm) -> None:
    docs = helm.template(values=[FULL], namespace="fleet")
    servers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ExternalServer"}
    assert sorted(servers) == ["acme", "globex"]
    values = {es["name"]: es for es in load_values(FULL)["externalServers"]}
    # Specs pass through untouched, except the development broker filled in where none is given.
    acme = servers["acme"]
    assert acme["metadata"]["namespace"] == "fleet"
    assert acme["metadata"]["labels"]["example.com/company"] == "acme"
    assert acme["spec"]["broker"] == {"host": "fleet-mosquitto.fleet.svc", "port": 1883}
    assert {k: v for k, v in acme["spec"].items() if k != "broker"} == values["acme"]["spec"]
    assert servers["globex"]["spec"] == values["globex"]["spec"]
    assert servers["globex"]["metadata"]["annotations"] == {"example.com/contact": "ops@example.com"}

    # The dev broker the filled-in address points at.
    svc = one(docs, "Service", "-mosquitto")
    assert svc["metadata"]["name"] == "fleet-mosquitto" and svc["spec"]["ports"][0]["port"] == 1883
    broker = one(docs, "Deployment", "-mosquitto")
    (c,) = broker["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "eclipse-mosquitto:2"
    conf = one(docs, "ConfigMap", "-mosquitto")["data"]["mosquitto.conf"]
    assert "listener 1883" in conf and "allow_anonymous true" in conf


@pytest.mark.cluster
def test_operator_values_reach_the_deployment(helm: Helm) -> None:
    docs = helm.template(values=[FULL])
    dep = one(docs, "Deployment", "-operator")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example.com/fleet/fleet-external-server-operator:0.1.0"
    assert c["args"] == ["--all-namespaces", "--liveness-host=0.0.0.0", "--liveness-port=8081", "--verbose"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env == {
        "EXTERNAL_SERVER_OPERATOR_LEASE_NAMESPACE": "fleet",
        "EXTERNAL_SERVER_OPERATOR_LEASE_NAME": "fleet-operator",
        "POD_NAME": None,
        "EXTERNAL_SERVER_IMAGE": "registry.example.com/fleet/fleet-external-server:0.1.0",
        "EXTERNAL_SERVER_OPERATOR_STATUS_INTERVAL": "5",
        "EXTERNAL_SERVER_OPERATOR_STATUS_TIMEOUT": "3",
    }
    assert pod["serviceAccountName"] == "fleet-operator"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert dep["spec"]["template"]["metadata"]["labels"]["example.com/tier"] == "control"
    assert dep["metadata"]["labels"]["example.com/team"] == "fleet-platform"


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            [
                "externalServers[0].name=a",
                "externalServers[0].spec.company=ok",
                "externalServers[0].spec.cars[0].name=c",
            ],
            "spec.broker is required unless devBroker.enabled is true",
        ),
        (
            [
                "externalServers[0].name=a",
                "externalServers[0].spec.company=Bad-Name",
                "externalServers[0].spec.cars[0].name=c",
                "devBroker.enabled=true",
            ],
            "company",
        ),
        (
            [
                "externalServers[0].name=a",
                "externalServers[0].spec.company=ok",
                "externalServers[0].spec.cars[0].name=c",
                "externalServers[0].spec.brokr.host=x",
            ],
            "brokr",
        ),
        (
            [
                "externalServers[0].name=a",
                "externalServers[0].namespace=elsewhere",
                "externalServers[0].spec.company=ok",
                "externalServers[0].spec.cars[0].name=c",
                "devBroker.enabled=true",
            ],
            "namespace elsewhere is not watched by the operator",
        ),
        (["operator.watch.clusterWide=maybe"], "clusterWide"),
        (["operator.typo=1"], "typo"),
    ],
    ids=["no-broker", "bad-company", "misspelt-field", "unwatched-namespace", "bad-type", "unknown-value"],
)
def test_bad_values_are_refused(helm: Helm, sets: list[str], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        helm.template(sets=sets)


@pytest.mark.cluster
def test_no_hooks(helm: Helm) -> None:
    """No finalizer on the ExternalServers, so no pre-delete cleanup: `helm uninstall` (with or
    without --no-hooks, with or without the operator running) leaves nothing behind."""
    for values in VALUE_FILES.values():
        for doc in helm.template(values=values):
            assert "helm.sh/hook" not in doc["metadata"].get("annotations", {}), doc["metadata"]["name"]
            assert doc["kind"] != "Job"
    # A values file of an earlier version (with the hook's settings) still installs, without it.
    docs = helm.template(
        sets=[
            "cleanupHook.enabled=true",
            "externalServers[0].name=a",
            "externalServers[0].spec.company=c",
            "externalServers[0].spec.cars[0].name=x",
            "devBroker.enabled=true",
        ]
    )
    assert not [d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]


@pytest.mark.cluster
def test_operator_replicas(helm: Helm) -> None:
    dep = one(helm.template(sets=["operator.replicas=2"]), "Deployment", "-operator")
    assert dep["spec"]["replicas"] == 2
    result = helm.run("template", "fleet", str(CHART), "--set", "operator.replicas=0", check=False)
    assert result.returncode != 0 and "replicas" in result.stderr
