"""Helpers of the chart tests: the Helm binary, rendering, and the operator run under the
chart's ServiceAccount identity against the envtest control plane (tests/cluster/kube_envtest.py).

Everything listens on 127.0.0.1 only; every process is started here and stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

from kube_envtest import Cluster, free_port, wait_for  # noqa: E402

CHART = ROOT / "charts" / "external-server"
EXAMPLES = CHART / "examples"
TRY_OUT = EXAMPLES / "try-out.yaml"
FULL = EXAMPLES / "full-values.yaml"
HELM_VERSION = "3.17.2"
#: The operator's server-pod selector label (render.APP_NAME): nothing the chart renders may use it.
SERVER_APP_NAME = "external-server"
#: API versions Kubernetes 1.20 serves that the chart may use.
K8S_120_APIS = {
    "v1",
    "apps/v1",
    "rbac.authorization.k8s.io/v1",
    "batch/v1",
    "coordination.k8s.io/v1",
    "fleetprotocol.io/v1alpha1",
}


def find_helm() -> str | None:
    """$HELM, else the binary tools/helm/ensure.sh caches, else a Helm 3 on PATH."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    candidates = [
        os.environ.get("HELM"),
        str(cache / "fleet-external-server" / "helm" / HELM_VERSION / "helm"),
        shutil.which("helm"),
    ]
    for c in candidates:
        if not c or not os.access(c, os.X_OK):
            continue
        out = subprocess.run(
            [c, "version", "--template", "{{.Version}}"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.startswith("v3."):
            return c
    return None


class HelmError(AssertionError):
    pass


class Helm:
    """The helm CLI with its own cache/config/data directories (nothing of the user's)."""

    def __init__(self, binary: str, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.home = home
        self.kubeconfig = kubeconfig
        for d in ("cache", "config", "data"):
            (home / d).mkdir(parents=True, exist_ok=True)

    def with_kubeconfig(self, kubeconfig: Path) -> Helm:
        return Helm(self.binary, self.home, kubeconfig)

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        # Without a cluster no kubeconfig at all: `helm template` and `lint` must not need one.
        env["KUBECONFIG"] = str(self.kubeconfig) if self.kubeconfig else str(self.home / "no-kubeconfig")
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template(
        self,
        *,
        release: str = "fleet",
        namespace: str = "fleet",
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        args = ["template", release, str(CHART), "--namespace", namespace, *extra]
        for v in values:
            args += ["-f", str(v)]
        for s in sets:
            args += ["--set", s]
        return [d for d in yaml.safe_load_all(self.run(*args).stdout) if d]

    def template_text(self, *args: str) -> str:
        return self.run("template", *args).stdout


def by_kind(docs: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def one(docs: Iterable[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


# --- the operator under the chart's ServiceAccount ------------------------------------------------


def service_account_kubeconfig(cluster: Cluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig authenticating as system:serviceaccount:<namespace>:<name> with a token the
    API server issues (TokenRequest), the way the operator's pod authenticates in a cluster."""
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()
    assert token, "empty ServiceAccount token"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "envtest",
                "cluster": {
                    "server": f"https://127.0.0.1:{cluster.port}",
                    "certificate-authority": str(cluster.certs / "ca.crt"),
                },
            }
        ],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "envtest", "user": name, "namespace": namespace}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ChartOperator:
    """The operator as a local subprocess, started with the command line and environment of the
    chart's operator Deployment (read from the API server) and the ServiceAccount's token.

    Only the liveness address is moved to loopback on a free port, and the status port to a port
    where nothing listens (no pod runs without a kubelet)."""

    def __init__(self, cluster: Cluster, deployment: dict[str, Any], kubeconfig: Path, log_name: str) -> None:
        self.cluster = cluster
        self.deployment = deployment
        self.kubeconfig = kubeconfig
        self.log_name = log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.liveness_port = 0

    def argv(self) -> list[str]:
        (container,) = self.deployment["spec"]["template"]["spec"]["containers"]
        args = [
            a for a in container.get("args", []) if not a.startswith(("--liveness-host", "--liveness-port"))
        ]
        script = Path(sys.executable).parent / "external-server-operator"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "external_server_operator"]
        return [*command, *args, "--liveness-host=127.0.0.1", f"--liveness-port={self.liveness_port}"]

    def env(self) -> dict[str, str]:
        (container,) = self.deployment["spec"]["template"]["spec"]["containers"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "EXTERNAL_SERVER"))}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["EXTERNAL_SERVER_OPERATOR_STATUS_PORT"] = str(free_port())
        env["EXTERNAL_SERVER_OPERATOR_STATUS_TIMEOUT"] = "1"
        return env

    def start(self) -> None:
        self.liveness_port = free_port()
        self.proc = self.cluster.procs.start(self.log_name, self.argv(), env=self.env())

        def alive() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited:\n{self.log()[-4000:]}")
            try:
                url = f"http://127.0.0.1:{self.liveness_port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for("the operator's liveness endpoint", alive, timeout=30, on_timeout=self.log()[-4000:])

    def stop(self) -> None:
        if self.proc is not None:
            self.cluster.procs.stop(self.proc)
            self.proc = None

    def log(self) -> str:
        path = self.cluster.workdir / f"{self.log_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def forbidden_lines(log: str) -> list[str]:
    """Lines of an operator log that report a permission the operator lacked.

    Every form of the denial (kopf's APIForbiddenError, the API's "is forbidden" message, the
    client's "Reason: Forbidden") names it; a bare "403" would also match timestamps and ports.
    """
    return [line for line in log.splitlines() if "forbidden" in line.lower()]


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)
