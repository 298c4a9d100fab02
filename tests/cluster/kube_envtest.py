"""Helpers of the cluster tests: a real Kubernetes control plane (etcd + kube-apiserver +
kube-controller-manager v1.20.2; no scheduler, no kubelet), the operator as a real
subprocess, kubectl, and a stand-in for the server pods' /status endpoint.

Everything listens on 127.0.0.1 only; every process is started here and stopped here, by PID.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "charts" / "external-server" / "crds" / "externalserver.yaml"
K8S_VERSION = "1.20.2"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
CONTROLLERS = (
    "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route,-attachdetach,"
    "-persistentvolume-binder,-persistentvolume-expander,-ttl,-bootstrapsigner,-tokencleaner"
)
#: Seconds between the operator's status refreshes in the tests.
STATUS_INTERVAL = 2.0
#: The leader-election Lease every test operator competes for.
LEASE_NAMESPACE, LEASE_NAME = "default", "external-server-operator"


def find_assets() -> Path | None:
    env = os.environ.get("KUBEBUILDER_ASSETS")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    candidates = [Path(env)] if env else [cache / "fleet-external-server" / "envtest" / K8S_VERSION]
    for d in candidates:
        if all(os.access(d / b, os.X_OK) for b in BINARIES):
            return d
    return None


def find_kubectl(assets: Path | None) -> str | None:
    """$KUBECTL, else kubectl on PATH, else the one an upstream envtest asset dir carries."""
    candidates = [os.environ.get("KUBECTL"), shutil.which("kubectl")]
    if assets is not None:
        candidates.append(str(assets / "kubectl"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters), SA key pair."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=envtest-ca", cwd=d,
    )  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n"
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subj, ext in (
        ("server", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=envtest-admin", "client.ext"),
    ):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subj, cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", ext, cwd=d,
        )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


class Processes:
    """Processes this fixture started; stopped by PID, in reverse order."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    @staticmethod
    def stop_one(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        self.stop_one(proc)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop_one(proc)
        self.procs.clear()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class KubectlError(AssertionError):
    pass


class Cluster:
    """The running control plane and helpers to talk to it through kubectl."""

    def __init__(self, workdir: Path, assets: Path) -> None:
        self.workdir = workdir
        self.assets = assets
        self.certs = workdir / "certs"
        self.kubeconfig = workdir / "kubeconfig"
        self.procs = Processes(workdir)
        self.port = 0
        self.kubectl_path = find_kubectl(assets) or "kubectl"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.certs.mkdir()
        make_certs(self.certs)
        c = self.certs
        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        etcd = self.procs.start(
            "etcd",
            [
                str(self.assets / "etcd"),
                "--name=envtest",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=envtest=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
        )
        apiserver = self.procs.start(
            "kube-apiserver",
            [
                str(self.assets / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                "--insecure-port=0",
                f"--tls-cert-file={c / 'server.crt'}",
                f"--tls-private-key-file={c / 'server.key'}",
                f"--client-ca-file={c / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={c / 'sa.pub'}",
                f"--service-account-signing-key-file={c / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
            ],
        )
        self._write_kubeconfig()
        self._wait_ready([etcd, apiserver])
        self.procs.start(
            "kube-controller-manager",
            [
                str(self.assets / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                "--port=0",
                f"--service-account-private-key-file={c / 'sa.key'}",
                f"--root-ca-file={c / 'ca.crt'}",
                "--use-service-account-credentials=false",
                f"--controllers={CONTROLLERS}",
            ],
        )

    def _write_kubeconfig(self) -> None:
        c = self.certs
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "envtest",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.port}",
                        "certificate-authority": str(c / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {"client-certificate": str(c / "admin.crt"), "client-key": str(c / "admin.key")},
                }
            ],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "admin"}}],
            "current-context": "envtest",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        ctx.load_cert_chain(str(self.certs / "admin.crt"), str(self.certs / "admin.key"))
        return ctx

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/merge-patch+json"
    ) -> Any:
        """A direct API call as the admin (for what kubectl of any version cannot do)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": content_type},
        )
        with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as r:
            return json.loads(r.read() or b"null")

    def _wait_ready(self, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
        ctx = self._ssl()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.procs:
                if p in procs and p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.procs.log_tail(name)}")
            url = f"https://127.0.0.1:{self.port}/readyz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready:\n{self.procs.log_tail('kube-apiserver')}")

    def stop(self) -> None:
        self.procs.stop_all()

    # --- kubectl ---------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def apply(
        self, obj: dict[str, Any] | str, check: bool = True, client_validation: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """kubectl apply; ``client_validation=False`` leaves all checking to the API server."""
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj, sort_keys=False)
        flags = [] if client_validation else ["--validate=false"]
        return self.kubectl("apply", *flags, "-f", "-", input=text, check=check)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        ns = ["-n", namespace] if namespace else []
        result = self.kubectl("get", kind, name, *ns, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise KubectlError(result.stderr)
        obj: dict[str, Any] = json.loads(result.stdout)
        return obj

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        sel = ["-l", selector] if selector else []
        result = self.kubectl("get", kind, "-n", namespace, *sel, "-o", "json")
        items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
        return items

    def namespace(self, name: str) -> str:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name


def wait_for(
    what: str, fn: Callable[[], Any], timeout: float = 30, interval: float = 0.25, on_timeout: str = ""
) -> Any:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}\n{on_timeout}")


class FakeStatusServer:
    """Stands in for the server pods' HTTP endpoint: GET /status returns ``document``."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"cars": {}}
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200 if self.path == "/status" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Operator:
    """The operator as a real subprocess against the envtest cluster."""

    def __init__(
        self, cluster: Cluster, status_port: int, log_name: str = "operator", identity: str = "operator"
    ) -> None:
        self.cluster = cluster
        self.status_port = status_port
        self.log_name = log_name
        #: Prefix of its leader-election identity (the operator appends a random suffix).
        self.identity = identity
        self.proc: subprocess.Popen[bytes] | None = None
        self.liveness_port = 0
        self.starts = 0

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "external-server-operator"
        if script.exists():
            return [str(script)]
        return [sys.executable, "-m", "external_server_operator"]

    def start(self) -> None:
        self.starts += 1
        self.liveness_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "EXTERNAL_SERVER_OPERATOR_STATUS_INTERVAL": str(STATUS_INTERVAL),
            "EXTERNAL_SERVER_OPERATOR_STATUS_PORT": str(self.status_port),
            "EXTERNAL_SERVER_OPERATOR_STATUS_TIMEOUT": "1",
            "EXTERNAL_SERVER_IMAGE": "registry.invalid/fleet-external-server:test",
            "EXTERNAL_SERVER_OPERATOR_LEASE_NAMESPACE": LEASE_NAMESPACE,
            "EXTERNAL_SERVER_OPERATOR_LEASE_NAME": LEASE_NAME,
            "EXTERNAL_SERVER_OPERATOR_IDENTITY": self.identity,
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = self.cluster.procs.start(
            self.log_name,
            [
                *self.command(),
                "--all-namespaces",
                "--liveness-host=127.0.0.1",
                f"--liveness-port={self.liveness_port}",
                *(["--verbose"] if os.environ.get("FLEET_TEST_OPERATOR_VERBOSE") == "1" else []),
            ],
            env=env,
        )

        def alive() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited:\n{self.cluster.procs.log_tail(self.log_name)}")
            try:
                url = f"http://127.0.0.1:{self.liveness_port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for("the operator's liveness endpoint", alive, timeout=30, on_timeout=self.log())

    def stop(self) -> None:
        if self.proc is not None:
            self.cluster.procs.stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.cluster.workdir / f"{self.log_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""
