"""Latency figures of a fleet_http module against the HTTP API test double, on loopback.

  .venv/bin/python lib/modules/fleet_http/measure_latency.py [--statuses N] [--commands N]
      [--spacing-ms MS] [--guard-count C] [--module 1|2|3]

1. Status round trip: N sequential forward_status() calls through the project's
   ctypes binding (JSON parse, POST /status, 200); p50 / p99 / max.
2. Command delivery: a waiter thread runs the server's loop (wait_for_command(1000)
   then pop_command until empty) while the main thread POSTs one command every
   --spacing-ms; latency = pop time minus the time just before the POST; p50 /
   p99 / max. The request-frequency guard (§2.6) is set by --guard-count with the
   deployed 1000/500/220 ms timings (0 = off): with commands closer than ~500 ms
   apart it throttles the poller by design, which shows in the figures.

The API test double runs in its own process (so its Python threads do not compete
with the measuring process for the GIL). Builds the modules first (make); exits 1
if they could not be built.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))

from external_server.device import Device  # noqa: E402
from external_server.modules import OK, ModuleLibrary, build_init_config  # noqa: E402
from support.fleet_http_module import COMPANY, build_fleet_http, library_path, module_config  # noqa: E402
from support.http_api_double import http_request, message  # noqa: E402

DOUBLE = ROOT / "tests" / "support" / "http_api_double.py"

DEVICES = {
    1: Device(1, 1, "autonomy", "Autonomy"),
    2: Device(2, 3, "button", "Button"),
    3: Device(3, 1, "dev", "Dev"),
}
STATUSES = {
    1: b'{"state":"DRIVE","telemetry":{"speed":1.5,"position":{"latitude":49.2}},"nextStop":null}',
    2: b'[[1,0,1],[0,1,0],{"butPr":0}]',
    3: b'{"content":"measure","timestamp":111}',
}
COMMANDS = {
    1: lambda i: {"action": "START", "route": "r", "stops": [{"name": f"stop {i}"}]},
    2: lambda i: [{"outNum": i, "actType": 1}],
    3: lambda i: {"n": i},
}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(name: str, values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (
        f"{name}: n={len(ms)} p50={percentile(ms, 0.5):.2f} ms p99={percentile(ms, 0.99):.2f} ms "
        f"max={max(ms):.2f} ms mean={statistics.fmean(ms):.2f} ms"
    )


def measure(module_id: int, statuses: int, commands: int, spacing_s: float, guard_count: int) -> list[str]:
    library = ModuleLibrary.load(library_path(module_id))
    device = DEVICES[module_id]
    lines = []
    double = subprocess.Popen(
        [sys.executable, str(DOUBLE), "--port", "0", "--t-api", "5"], stdout=subprocess.PIPE, text=True
    )
    assert double.stdout is not None
    api_url = double.stdout.readline().strip()
    try:
        config = module_config(api_url, max_requests_threshold_count=str(guard_count))
        context = library.init(build_init_config(COMPANY, "car_a", config))
        try:
            status_times = []
            for _ in range(statuses):
                started = time.perf_counter()
                if (
                    context.forward_status(STATUSES[module_id], device) != OK
                ):  # the first one makes the car known
                    raise SystemExit("forward_status failed")
                status_times.append(time.perf_counter() - started)
            lines.append(summary("forward_status round trip", status_times))

            popped_at: dict[str, float] = {}
            stop = threading.Event()

            def worker() -> None:
                while not stop.is_set():
                    if context.wait_for_command(1000) != OK:
                        continue
                    while True:
                        command = context.pop_command()
                        if not command.ok:
                            break
                        popped_at[command.data.decode()] = time.perf_counter()
                        if command.remaining == 0:
                            break

            thread = threading.Thread(target=worker)
            thread.start()
            time.sleep(0.5)
            posted_at: dict[str, float] = {}
            for index in range(commands):
                data = COMMANDS[module_id](index)
                key = json.dumps(data, sort_keys=True, separators=(",", ":"))
                if module_id == 2:
                    key = json.dumps(data, separators=(",", ":"))
                posted_at[key] = time.perf_counter()
                body = [message(device.module, device.device_type, device.role, device.name, data)]
                status, answer = http_request(api_url, "POST", f"/command/{COMPANY}/car_a", body)
                if status != 200:
                    raise SystemExit(f"POST /command failed: {status} {answer}")
                time.sleep(spacing_s)
            deadline = time.monotonic() + 10
            while len(popped_at) < commands and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            thread.join()
            missing = set(posted_at) - set(popped_at)
            if missing:
                raise SystemExit(f"{len(missing)} command(s) never popped")
            delivery = [popped_at[key] - posted_at[key] for key in posted_at]
            guard = f"guard {guard_count}/1000/500/220" if guard_count else "guard off"
            lines.append(
                summary(f"command POST -> pop ({guard}, one every {spacing_s * 1000:.0f} ms)", delivery)
            )
        finally:
            context.destroy()
    finally:
        double.terminate()
        double.wait(10)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--module", type=int, choices=(1, 2, 3), default=3)
    parser.add_argument("--statuses", type=int, default=1000, help=">= 1 (the API needs a status first)")
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--spacing-ms", type=float, default=20.0)
    parser.add_argument("--guard-count", type=int, default=0)
    args = parser.parse_args(argv)
    if not build_fleet_http().built:
        print("measure_latency: the fleet_http modules could not be built (missing -dev packages?)")
        return 1
    print(f"fleet_http latency, module {args.module}, HTTP API test double on 127.0.0.1:")
    for line in measure(args.module, args.statuses, args.commands, args.spacing_ms / 1000, args.guard_count):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
