"""Fixtures of the chart tests: a real Helm 3 binary and, for the install tests, a real control
plane (the envtest binaries of tests/cluster).

Helm comes from $HELM, the cache that tools/helm/ensure.sh fills, or PATH; the control plane from
KUBEBUILDER_ASSETS or tools/envtest/ensure.sh's cache. Missing parts skip the tests with the
command that provides them, or fail them when FLEET_REQUIRE_REAL_PARTS=1 (CI).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chart_helpers import CHART, Helm, find_helm
from kube_envtest import Cluster, find_assets, find_kubectl


def _missing(reason: str) -> None:
    if os.environ.get("FLEET_REQUIRE_REAL_PARTS") == "1":
        pytest.fail(f"{reason} (FLEET_REQUIRE_REAL_PARTS=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def helm_binary() -> str:
    binary = find_helm()
    if binary is None:
        _missing("chart tests need a Helm 3 binary: export HELM=$(tools/helm/ensure.sh)")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def helm(helm_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Helm without a cluster (lint, template)."""
    return Helm(helm_binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def chart_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane of its own (the chart installs the CRD itself)."""
    assets = find_assets()
    if assets is None:
        _missing(
            "chart install tests need etcd, kube-apiserver and kube-controller-manager v1.20.2: "
            "export KUBEBUILDER_ASSETS=$(tools/envtest/ensure.sh)"
        )
    if find_kubectl(assets) is None or shutil.which("openssl") is None:
        _missing("chart install tests need kubectl (on PATH, $KUBECTL or in KUBEBUILDER_ASSETS) and openssl")
    assert assets is not None
    started = time.monotonic()
    c = Cluster(tmp_path_factory.mktemp("chart-envtest"), assets)
    try:
        c.start()
        print(f"\nchart envtest control plane up in {time.monotonic() - started:.1f}s (logs: {c.workdir})")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def cluster_helm(helm: Helm, chart_cluster: Cluster) -> Helm:
    """Helm talking to the envtest API server as its admin."""
    return helm.with_kubeconfig(chart_cluster.kubeconfig)


@pytest.fixture(scope="session")
def crd_installed(chart_cluster: Cluster) -> Path:
    """The chart's CRD applied (for server-side dry runs before any install)."""
    crd = CHART / "crds" / "externalserver.yaml"
    chart_cluster.kubectl("apply", "-f", str(crd))
    chart_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/externalservers.fleetprotocol.io"
    )
    return crd
