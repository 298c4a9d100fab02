"""Build, load and observe the fleet_http modules (lib/modules/fleet_http) from tests and tools.

``build_fleet_http()`` runs the module Makefile; when the libcurl / jansson headers
are missing the Makefile prints a "skipping fleet_http" line and builds nothing,
and ``require_fleet_http()`` turns that into a pytest skip with that reason (a
failure under FLEET_REQUIRE_REAL_PARTS=1).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from external_server.device import Device
from external_server.modules import ModuleContext, ModuleLibrary, build_init_config
from external_server.modules.abi import OK

ROOT = Path(__file__).resolve().parents[2]
MODULE_SRC = ROOT / "lib" / "modules" / "fleet_http"
MODULES_OUT = ROOT / "build" / "modules"
MODULE_NAMES = {1: "mission", 2: "io", 3: "transparent"}
COMPANY = "company_x"
REQUIRE_REAL_PARTS = os.environ.get("FLEET_REQUIRE_REAL_PARTS") == "1"

STAT_NAMES = (
    "status_calls",
    "status_ok",
    "status_rejected",
    "status_failed",
    "status_requests",
    "status_retries",
    "duplicate_retries",
    "breaker_opened",
    "breaker_rejections",
    "prime_requests",
    "sweep_requests",
    "poll_requests",
    "poll_failures",
    "guard_delays",
    "commands_received",
    "commands_other",
    "commands_invalid",
    "commands_duplicate",
    "commands_popped",
    "queued",
    "devices",
    "primed",
)


class Stats(ctypes.Structure):
    """struct fleet_http_stats of lib/modules/fleet_http/fleet_http.h."""

    _fields_ = [*((name, ctypes.c_uint64) for name in STAT_NAMES), ("cursor", ctypes.c_int64)]

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in (*STAT_NAMES, "cursor")}


def library_path(module_id: int, variant: str = "") -> Path:
    return MODULES_OUT / f"libfleet_http_{MODULE_NAMES[module_id]}{variant}.so"


@dataclass(frozen=True)
class BuildResult:
    built: bool
    output: str


def build_fleet_http(*targets: str) -> BuildResult:
    """Run the module Makefile (incremental); ``built`` is False when it skipped for missing headers."""
    run = subprocess.run(
        ["make", "--no-print-directory", "-C", str(MODULE_SRC), f"OUT={MODULES_OUT}", *targets],
        check=False,
        capture_output=True,
        text=True,
    )
    output = run.stdout + run.stderr
    if run.returncode != 0:
        raise RuntimeError(f"building fleet_http failed (exit {run.returncode}):\n{output}")
    return BuildResult("skipping fleet_http" not in output, output.strip())


def stats(context: ModuleContext) -> dict[str, int]:
    function = context.library.cdll["fleet_http_get_stats"]
    function.argtypes = [ctypes.c_void_p, ctypes.POINTER(Stats)]
    function.restype = ctypes.c_int
    out = Stats()
    assert function(context.pointer, ctypes.byref(out)) == OK
    return out.as_dict()


def module_config(api_url: str, **overrides: str | int) -> dict[str, str | int]:
    """The §4 setup config (ints as strings, as deployed) plus overrides."""
    config: dict[str, str | int] = {
        "api_url": api_url,
        "api_key": "DefaultKey",
        "max_requests_threshold_count": "3",
        "max_requests_threshold_period_ms": "1000",
        "delay_after_threshold_reached_ms": "500",
        "retry_requests_delay_ms": "220",
    }
    config.update(overrides)
    return config


def init_context(
    library: ModuleLibrary, api_url: str, car: str = "car_a", company: str = COMPANY, **overrides: str | int
) -> ModuleContext:
    return library.init(build_init_config(company, car, module_config(api_url, **overrides)))


def device(
    module_id: int, device_type: int = 1, role: str = "test_device_1", name: str = "Test_Device_1"
) -> Device:
    return Device(module_id, device_type, role, name)
