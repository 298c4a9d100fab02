"""The real server process (``python -m external_server``) with a generated config."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from .broker import free_port
from .procstat import pin

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SO = ROOT / "build" / "modules" / "libexample.so"
COMPANY = "bench"
EXAMPLE_MODULE = 1000
NORMAL_END_RESETS = frozenset({"all_devices_disconnected", "no_connect"})
"""Reset reasons that are not failures here: a clean end of a simulator run unplugs every device, and a
car the benchmark does not drive yet gives up waiting for its Connect after the session timeout."""
WAITING_STATES = frozenset({"UNINITIALIZED", "CONNECTED"})
"""Car session states between sessions (CONNECTED = broker up, waiting for the car's Connect)."""


def car_names(count: int, first: int = 0) -> list[str]:
    return [f"car_{i}" for i in range(first, first + count)]


DEFAULT_MODULE_WAIT_MS = 1000
"""The module's ``timeout_ms`` (how long each car's waiting thread blocks in ``wait_for_command``)."""


def config_document(
    broker_port: int, cars: int, module_wait_ms: int = DEFAULT_MODULE_WAIT_MS, log_dir: Path | None = None
) -> dict[str, Any]:
    """A server config for ``cars`` cars sharing the example module 1000 (``echo_every`` 0)."""
    return {
        "company_name": COMPANY,
        "external_communication": {
            "protocol": "MQTT",
            "server_address": "127.0.0.1",
            "server_port": broker_port,
            "timeout_ms": 30000,
        },
        "timeout": 30,
        "send_invalid_command": False,
        "sleep_duration_after_connection_refused": 0.5,
        "common_modules": {
            str(EXAMPLE_MODULE): {
                "lib_path": str(EXAMPLE_SO),
                "config": {"echo_every": 0},
                "timeout_ms": module_wait_ms,
            }
        },
        "cars": {car: {} for car in car_names(cars)},
        "logging": {
            "console": {"level": "INFO", "use": True},
            "file": {"level": "INFO", "use": log_dir is not None, "path": str(log_dir or "")},
        },
    }


class ServerProcess:
    """Start, query (``/status``) and stop one server process; output goes to ``log_path``."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        broker_port: int,
        cars: int,
        module_wait_ms: int = DEFAULT_MODULE_WAIT_MS,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.cpus = cpus
        self.module_wait_ms = module_wait_ms
        self.name = name
        self.cars = cars
        self.config_path = workdir / f"server-{name}.json"
        self.log_path = workdir / f"server-{name}.log"
        self.http_port = free_port()
        self.broker_port = broker_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait until ``/readyz`` says ready; the seconds that took."""
        if not EXAMPLE_SO.is_file():
            raise RuntimeError(f"{EXAMPLE_SO} is missing: run `make modules` first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            json.dumps(config_document(self.broker_port, self.cars, self.module_wait_ms))
        )
        command = [
            sys.executable,
            "-m",
            "external_server",
            "-c",
            str(self.config_path),
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
        ]
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        pin(self.process.pid, self.cpus)  # before its threads start: they inherit it
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log_tail()}")
            if self._ready():
                return time.monotonic() - started
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout_s:g} s: {self.log_tail()}")

    def _get(self, path: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _ready(self) -> bool:
        try:
            code, _ = self._get("/readyz", 1.0)
        except OSError:
            return False
        return code == 200

    def status(self, timeout_s: float = 20.0) -> dict[str, Any] | None:
        """The ``/status`` document, or None when the server does not answer."""
        try:
            code, body = self._get("/status", timeout_s)
        except OSError:
            return None
        if code != 200:
            return None
        document: dict[str, Any] = json.loads(body)
        return document

    def metrics(self, timeout_s: float = 20.0) -> str | None:
        """The Prometheus ``/metrics`` text, or None when the server does not answer."""
        try:
            code, body = self._get("/metrics", timeout_s)
        except OSError:
            return None
        return body.decode(errors="replace") if code == 200 else None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        return process.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def reset_counts(status: dict[str, Any] | None) -> Counter[str]:
    """Session resets by reason, summed over all cars of a ``/status`` document."""
    total: Counter[str] = Counter()
    if not status:
        return total
    for car in status.get("cars", {}).values():
        total.update(car.get("resets", {}))
    return total


def abnormal(resets: Counter[str]) -> int:
    """Resets other than the ones a clean end of a run causes."""
    return sum(count for reason, count in resets.items() if reason not in NORMAL_END_RESETS)
