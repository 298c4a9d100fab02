"""C-level checks of the fleet_http modules: the Makefile's skip rule and a ThreadSanitizer stress run.

The stress driver (lib/modules/fleet_http/stress.c, built by ``make tsan``) runs
two contexts under the server's threading model against the HTTP API test double
while this test POSTs commands; TSan must report nothing, every command must
arrive once and in order, and destroy() must return within a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from support.fleet_http_module import (
    COMPANY,
    MODULE_SRC,
    MODULES_OUT,
    REQUIRE_REAL_PARTS,
    build_fleet_http,
)
from support.http_api_double import FleetHttpApiDouble, message

COMMANDS_PER_CAR = 150


def _make(out: Path, *args: str, require: bool = False) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "FLEET_REQUIRE_REAL_PARTS"}
    if require:
        env["FLEET_REQUIRE_REAL_PARTS"] = "1"
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(MODULE_SRC), f"OUT={out}", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )


def test_makefile_skips_without_dev_headers(tmp_path: Path) -> None:
    """`make modules` on a machine without libcurl/jansson headers: one line, exit 0, nothing built."""
    run = _make(tmp_path, "PROBE_HEADERS=curl/curl.h fleet_http_no_such_header.h")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "skipping fleet_http: install libcurl4-openssl-dev libjansson-dev"
    assert list(tmp_path.iterdir()) == []


def test_makefile_fails_without_dev_headers_in_ci(tmp_path: Path) -> None:
    run = _make(tmp_path, "PROBE_HEADERS=fleet_http_no_such_header.h", require=True)
    assert run.returncode != 0
    assert "FLEET_REQUIRE_REAL_PARTS=1" in run.stderr


@pytest.fixture(scope="module")
def stress_binary() -> Path:
    result = build_fleet_http("tsan")
    if not result.built:
        reason = f"fleet_http not built: {result.output}"
        if REQUIRE_REAL_PARTS:
            pytest.fail(f"{reason}; FLEET_REQUIRE_REAL_PARTS=1 requires it")
        pytest.skip(reason)
    return MODULES_OUT / "fleet_http_stress_tsan"


def _run_stress(command: list[str], api: FleetHttpApiDouble) -> tuple[int, str, str]:
    env = {**os.environ, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66 second_deadlock_stack=1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None and process.stderr is not None
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr or []))
    reader.start()
    first = process.stdout.readline()
    if first.strip() == "ready":
        for index in range(COMMANDS_PER_CAR):
            for car in ("car_a", "car_b"):
                body = [message(3, 1, "stress_device", "Stress", [index])]
                assert api.post_commands(COMPANY, car, body)[0] == 200
    try:
        rest, _ = process.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        process.kill()
        rest, _ = process.communicate()
    reader.join(10)
    return process.returncode, first + rest, "".join(stderr_lines)


def test_thread_sanitizer_stress(stress_binary: Path) -> None:
    with FleetHttpApiDouble(t_api_s=1.0) as api:
        command = [str(stress_binary), api.base_url, str(COMMANDS_PER_CAR)]
        returncode, stdout, stderr = _run_stress(command, api)
        if "unexpected memory mapping" in stderr and shutil.which("setarch"):
            # Kernels with high mmap entropy break TSan's shadow layout; without ASLR it runs.
            returncode, stdout, stderr = _run_stress(["setarch", os.uname().machine, "-R", *command], api)
    assert "WARNING: ThreadSanitizer" not in stderr, stderr
    assert returncode == 0, stdout + stderr
    assert "stress ok" in stdout
