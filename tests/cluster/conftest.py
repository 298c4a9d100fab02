"""Fixtures of the cluster tests: one control plane and one operator process per session.

The binaries are found through KUBEBUILDER_ASSETS (the envtest convention: a directory
with etcd, kube-apiserver and kube-controller-manager); when it is unset, the project's own
cache (tools/envtest/ensure.sh) is tried. Missing binaries skip the tests, or fail them
when FLEET_REQUIRE_REAL_PARTS=1 (CI).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest
from kube_envtest import CRD_FILE, Cluster, FakeStatusServer, Operator, find_assets, find_kubectl


def _missing(reason: str) -> None:
    if os.environ.get("FLEET_REQUIRE_REAL_PARTS") == "1":
        pytest.fail(f"{reason} (FLEET_REQUIRE_REAL_PARTS=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assets = find_assets()
    if assets is None:
        _missing(
            "cluster tests need etcd, kube-apiserver and kube-controller-manager v1.20.2: "
            "export KUBEBUILDER_ASSETS=$(tools/envtest/ensure.sh)"
        )
    if find_kubectl(assets) is None or shutil.which("openssl") is None:
        _missing("cluster tests need kubectl (on PATH, $KUBECTL or in KUBEBUILDER_ASSETS) and openssl")
    assert assets is not None
    started = time.monotonic()
    c = Cluster(tmp_path_factory.mktemp("envtest"), assets)
    try:
        c.start()
        c.kubectl("apply", "-f", str(CRD_FILE))
        c.kubectl(
            "wait", "--for=condition=Established", "--timeout=30s", "crd/externalservers.fleetprotocol.io"
        )
        print(f"\nenvtest control plane up in {time.monotonic() - started:.1f}s (logs: {c.workdir})")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def status_server() -> Iterator[FakeStatusServer]:
    server = FakeStatusServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def operator(cluster: Cluster, status_server: FakeStatusServer) -> Iterator[Operator]:
    op = Operator(cluster, status_server.port)
    op.start()
    yield op
    op.stop()
