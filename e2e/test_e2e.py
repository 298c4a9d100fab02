"""The e2e scenario on a kind cluster prepared by e2e/run.sh (images loaded, chart installed
with the development broker). The tests run in file order and build on each other (run.sh
passes -x): apply → simulated car → scale → update → delete → an ExternalServer from Helm
values and `helm uninstall` (the pre-delete cleanup hook, for real).

Environment (set by run.sh): KUBECONFIG, E2E_NAMESPACE, E2E_RELEASE, E2E_SERVER_IMAGE, HELM,
E2E_WORKDIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from external_server_operator.render import CHECKSUM_ANNOTATION, shard_of

ROOT = Path(__file__).resolve().parents[1]
NS = os.environ.get("E2E_NAMESPACE", "fleet")
RELEASE = os.environ.get("E2E_RELEASE", "fleet")
SERVER_IMAGE = os.environ.get("E2E_SERVER_IMAGE", "fleet-external-server:e2e")
HELM = os.environ.get("HELM", "helm")
WORKDIR = Path(os.environ.get("E2E_WORKDIR", "/tmp"))
RESOURCE = yaml.safe_load((ROOT / "e2e" / "externalserver.yaml").read_text())
NAME = RESOURCE["metadata"]["name"]
COMPANY = RESOURCE["spec"]["company"]
BROKER = f"{RESOURCE['spec']['broker']['host']}:{RESOURCE['spec']['broker']['port']}"

pytestmark = pytest.mark.skipif("KUBECONFIG" not in os.environ, reason="run through e2e/run.sh")


# --- helpers ------------------------------------------------------------------------------------------


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["kubectl", *args], input=input, capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result


def get(kind: str, name: str, ns: str = NS) -> dict[str, Any] | None:
    result = kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(result.stderr)
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


def items(kind: str, selector: str, ns: str = NS) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(
        kubectl("get", kind, "-n", ns, "-l", selector, "-o", "json").stdout
    )["items"]
    return out


def apply(obj: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 180, interval: float = 2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def status(name: str = NAME) -> dict[str, Any]:
    return ((get("externalserver", name) or {}).get("status")) or {}


def conditions(st: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in st.get("conditions") or []}


def shard_deployments(name: str = NAME) -> dict[str, dict[str, Any]]:
    selector = f"app.kubernetes.io/managed-by=external-server-operator,app.kubernetes.io/instance={name}"
    return {d["metadata"]["name"]: d for d in items("deployment", selector)}


def expected_shards(cars: list[str], shards: int) -> set[int]:
    return {shard_of(car, shards) for car in cars}


def wait_ready(generation: int, shards: set[int], name: str = NAME) -> dict[str, Any]:
    """Status of ``generation``: config valid, every shard Deployment there and ready."""
    want = {f"{name}-shard-{s}" for s in shards}

    def ready() -> dict[str, Any] | None:
        st = status(name)
        cond = conditions(st)
        ok = (
            st.get("observedGeneration") == generation
            and cond.get("ConfigValid") == "True"
            and cond.get("Ready") == "True"
            and (st.get("shards") or {}).get("ready") == len(want)
            and set(shard_deployments(name)) == want
        )
        return st if ok else None

    result: dict[str, Any] = wait_for(
        f"{name} generation {generation} ready on shards {sorted(shards)}", ready
    )
    return result


def server_status_via_service(name: str = NAME) -> dict[str, Any] | None:
    """GET /status of a server pod through the API server's service proxy."""
    result = kubectl(
        "get", "--raw", f"/api/v1/namespaces/{NS}/services/{name}:8080/proxy/status", check=False
    )
    if result.returncode != 0:
        return None
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def run_simulator(job: str, cars: list[str], duration: int = 30) -> None:
    """Start the fleet simulator as a Job (gateway side of the protocol) against the dev broker."""
    kubectl("delete", "job", job, "-n", NS, "--ignore-not-found", "--wait=true")
    apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": job,
                "namespace": NS,
                "labels": {"app.kubernetes.io/name": "fleet-simulator"},
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": duration + 120,
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": "fleet-simulator"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": False,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
                        "containers": [
                            {
                                "name": "simulator",
                                "image": SERVER_IMAGE,
                                "imagePullPolicy": "IfNotPresent",
                                "command": [
                                    "python",
                                    "-m",
                                    "external_server.simulator",
                                    "--broker",
                                    BROKER,
                                    "--company",
                                    COMPANY,
                                    "--cars",
                                    ",".join(cars),
                                    "--duration",
                                    str(duration),
                                ],
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            }
                        ],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        }
    )


def wait_job_succeeded(job: str, timeout: float = 180) -> None:
    def finished() -> str | None:
        obj = get("job", job) or {}
        st = obj.get("status") or {}
        if st.get("succeeded"):
            return "succeeded"
        if st.get("failed"):
            logs = kubectl("logs", f"job/{job}", "-n", NS, check=False).stdout
            raise AssertionError(f"simulator Job {job} failed (a car never connected):\n{logs[-3000:]}")
        return None

    wait_for(f"simulator Job {job} to finish", finished, timeout=timeout)
    print(kubectl("logs", f"job/{job}", "-n", NS, check=False).stdout[-2000:])


def cars_running(cars: list[str], shards: int, name: str = NAME) -> dict[str, Any] | None:
    """The resource's status and the server's own /status both show every car in normal
    communication (RUNNING) on the shard the operator assigned."""
    st = status(name)
    by_car = {c["name"]: c for c in st.get("carStatuses") or []}
    ok = all(
        by_car.get(car, {}).get("state") == "RUNNING" and by_car[car].get("shard") == shard_of(car, shards)
        for car in cars
    )
    if not ok or (st.get("cars") or {}).get("connected", 0) < len(cars):
        return None
    return st


# --- the scenario -----------------------------------------------------------------------------------


def test_operator_runs_with_the_chart_configuration() -> None:
    (dep,) = items("deployment", "app.kubernetes.io/component=operator")
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert (dep["status"].get("availableReplicas") or 0) == 1
    (pod,) = items("pod", "app.kubernetes.io/component=operator")
    (c,) = pod["spec"]["containers"]
    assert f"--namespace={NS}" in c["args"]
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-external-server"
    broker = items("deployment", "app.kubernetes.io/component=dev-broker")
    assert broker and (broker[0]["status"].get("availableReplicas") or 0) == 1


def test_external_server_becomes_ready() -> None:
    apply(RESOURCE)
    cars = [c["name"] for c in RESOURCE["spec"]["cars"]]
    st = wait_ready(generation=1, shards=expected_shards(cars, 1))
    assert st["shards"] == {"desired": 1, "ready": 1}
    (pod,) = items("pod", f"app.kubernetes.io/name=external-server,app.kubernetes.io/instance={NAME}")
    (c,) = pod["spec"]["containers"]
    assert c["image"] == SERVER_IMAGE
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert server_status_via_service() is not None


def test_simulated_car_reaches_normal_communication() -> None:
    run_simulator("sim-car-a", ["car_a"])
    st = wait_for(
        "car_a RUNNING in the ExternalServer's status", lambda: cars_running(["car_a"], 1), timeout=120
    )
    print(json.dumps(st, indent=2))
    doc = server_status_via_service() or {}
    assert doc["company"] == COMPANY and doc["broker"]["connected"] is True
    assert doc["cars"]["car_a"]["state"] in ("RUNNING", "INITIALIZED")
    kubectl("get", "exs", "-n", NS, "-o", "wide")
    wait_job_succeeded("sim-car-a")


def test_scale_to_two_shards() -> None:
    cars = ["car_a", "car_b"]
    assert expected_shards(cars, 2) == {0, 1}, "the e2e cars must land on different shards"
    kubectl("patch", "externalserver", NAME, "-n", NS, "--type=merge", "-p", '{"spec":{"shards":2}}')
    st = wait_ready(generation=2, shards={0, 1})
    assert st["shards"] == {"desired": 2, "ready": 2}
    run_simulator("sim-two-cars", cars)
    wait_for("both cars RUNNING on their shards", lambda: cars_running(cars, 2), timeout=120)
    wait_job_succeeded("sim-two-cars")


def test_update_rolls_out_the_new_config() -> None:
    before = {
        n: d["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        for n, d in shard_deployments().items()
    }
    patch = {
        "spec": {
            "modules": [
                {
                    "id": 1000,
                    "library": "/opt/external-server/modules/libexample.so",
                    "config": {"echo_every": 2},
                }
            ],
            "logging": {"level": "DEBUG"},
        }
    }
    kubectl("patch", "externalserver", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))
    wait_ready(generation=3, shards={0, 1})
    after = {
        n: d["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        for n, d in shard_deployments().items()
    }
    assert set(after) == set(before) and all(after[n] != before[n] for n in after), "every shard rolled"
    for shard in (0, 1):
        cm = get("configmap", f"{NAME}-shard-{shard}-config") or {}
        config = json.loads(cm["data"]["config.json"])
        assert config["common_modules"]["1000"]["config"] == {"echo_every": 2}
        assert config["logging"]["console"]["level"] == "DEBUG"
    run_simulator("sim-after-update", ["car_a", "car_b"])
    wait_for("both cars RUNNING after the update", lambda: cars_running(["car_a", "car_b"], 2), timeout=120)
    wait_job_succeeded("sim-after-update")


def test_delete_removes_the_children() -> None:
    kubectl("delete", "externalserver", NAME, "-n", NS, "--wait=true", "--timeout=60s")
    wait_for("the shard Deployments garbage-collected", lambda: not shard_deployments(), timeout=120)
    assert not items("configmap", f"app.kubernetes.io/instance={NAME}")
    assert get("service", NAME) is None


def test_external_server_from_helm_values_and_uninstall() -> None:
    """An ExternalServer rendered by the chart; `helm uninstall` runs the pre-delete cleanup Job
    (deletes it while the operator still runs, so its finalizer is removed)."""
    values = yaml.safe_load((ROOT / "e2e" / "values.yaml").read_text())
    values["externalServers"] = [
        {
            "name": "from-values",
            "spec": {
                "company": "values_company",
                "modules": RESOURCE["spec"]["modules"],
                "cars": [{"name": "car_v"}],
            },
        }
    ]
    path = WORKDIR / "values-with-server.yaml"
    path.write_text(yaml.safe_dump(values))
    chart = str(ROOT / "charts" / "external-server")
    subprocess.run(
        [HELM, "upgrade", RELEASE, chart, "-n", NS, "-f", str(path), "--wait", "--timeout", "5m"], check=True
    )
    wait_ready(generation=1, shards={0}, name="from-values")
    subprocess.run([HELM, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"], check=True)
    assert get("externalserver", "from-values") is None
    wait_for(
        "from-values' children garbage-collected", lambda: not shard_deployments("from-values"), timeout=120
    )
    assert not items("deployment", "app.kubernetes.io/component=operator")
