"""e2e/run.sh where it cannot run: one SKIP line and exit 0 (a failure when FLEET_E2E_REQUIRED=1).

The e2e scenario itself needs Docker and kind (e2e/run.sh, `make e2e`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "e2e" / "run.sh"


def run(path: str, **env: str) -> subprocess.CompletedProcess[str]:
    """run.sh with PATH = ``path`` only (what the machine has installed does not matter)."""
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(RUN)],
        env={**os.environ, "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def bare_bin(tmp_path: Path) -> Path:
    """A PATH directory with only what run.sh needs before its checks."""
    bin_dir = tmp_path / "bare"
    bin_dir.mkdir()
    for tool in ("dirname",):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return bin_dir


@pytest.fixture
def fake_bin(bare_bin: Path) -> Path:
    """bare_bin plus a docker whose daemon is unreachable; no kind."""
    bin_dir = bare_bin
    docker = bin_dir / "docker"
    docker.write_text('#!/bin/sh\necho "Cannot connect to the Docker daemon" >&2\nexit 1\n')
    docker.chmod(0o755)
    return bin_dir


def test_skips_without_docker(bare_bin: Path) -> None:
    result = run(str(bare_bin))
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == "SKIP: e2e: docker is not installed (the e2e suite builds images and runs kind)"
    )


def test_skips_without_a_docker_daemon(fake_bin: Path) -> None:
    result = run(str(fake_bin))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SKIP: e2e: no Docker daemon is reachable")


def test_required_e2e_fails_instead(fake_bin: Path) -> None:
    result = run(str(fake_bin), FLEET_E2E_REQUIRED="1")
    assert result.returncode == 1
    assert "FAIL: no Docker daemon is reachable" in result.stderr and "SKIP" not in result.stdout


def test_skips_without_kind(fake_bin: Path) -> None:
    (fake_bin / "docker").write_text("#!/bin/sh\nexit 0\n")
    result = run(str(fake_bin))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SKIP: e2e: kind is not installed")
