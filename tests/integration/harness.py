"""An in-process company server on a real broker with the real example module.

The server is the production :class:`CompanyServer` (real MQTT connection, real
``.so`` through ctypes, real threads); running it in the test's event loop lets
tests look at what the module saw (its counters) and at the session's state.
Process-level behaviour (CLI, signals, exit codes) is tested with a subprocess
in ``test_server_process.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from external_server.app import CompanyServer
from external_server.cli import CliOptions
from external_server.config.loading import load_config
from external_server.device import Device
from external_server.session.car_session import CarSession
from external_server.session.state import CarState
from opentelemetry.sdk.metrics import MeterProvider
from support.example_module import EXAMPLE_SO, command_file_content, counters, drop_command_file
from support.waiting import wait_until

COMPANY = "company_x"


def server_config_document(
    *,
    broker_port: int,
    cars: Mapping[str, Mapping[int, Mapping[str, Any]]],
    response_timeout_s: float = 1.0,
    session_timeout_s: float = 3.0,
    reconnect_delay_s: float = 0.1,
    send_invalid_command: bool = False,
    company: str = COMPANY,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """A config in the current file format; ``cars`` maps car → {module id: module config}."""
    return {
        "company_name": company,
        "external_communication": {
            "protocol": "MQTT",
            "server_address": "127.0.0.1",
            "server_port": broker_port,
            "timeout_ms": int(session_timeout_s * 1000),
        },
        "timeout": response_timeout_s,
        "send_invalid_command": send_invalid_command,
        "sleep_duration_after_connection_refused": reconnect_delay_s,
        "common_modules": {},
        "cars": {
            car: {
                "specific_modules": {
                    str(module_id): {"lib_path": str(EXAMPLE_SO), "config": dict(config), "timeout_ms": 50}
                    for module_id, config in modules.items()
                }
            }
            for car, modules in cars.items()
        },
        "logging": {
            "console": {"level": "DEBUG", "use": True},
            "file": {"level": "DEBUG", "use": log_path is not None, "path": str(log_path or "")},
        },
    }


@dataclass
class ServerUnderTest:
    server: CompanyServer
    task: asyncio.Task[None]
    command_dirs: dict[str, Path] = field(default_factory=dict)

    def session(self, car: str) -> CarSession:
        return self.server.cars[car].session

    def counters(self, car: str, module_id: int = 1000) -> dict[str, int]:
        for runtime in self.server.cars[car].runtimes:
            if runtime.module_id == module_id:
                return counters(runtime.context).as_dict()
        raise KeyError(module_id)

    def inject_command(self, car: str, device: Device, data: bytes) -> None:
        """A command the module will produce (through its command_dir)."""
        name = f"{time.monotonic_ns():020d}.cmd"
        drop_command_file(self.command_dirs[car], name, command_file_content(device, data))

    async def wait_until(
        self, predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition"
    ) -> None:
        await wait_until(predicate, timeout_s, what)

    async def wait_state(self, car: str, state: CarState, timeout_s: float = 5.0) -> None:
        await self.wait_until(lambda: self.session(car).state == state, timeout_s)

    async def wait_counter(self, car: str, name: str, value: int, timeout_s: float = 5.0) -> None:
        await self.wait_until(lambda: self.counters(car)[name] >= value, timeout_s)

    async def stop(self) -> None:
        self.server.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 20)


async def start_server(
    tmp_path: Path,
    broker_port: int,
    cars: tuple[str, ...] = ("car_a",),
    module_config: Mapping[str, Any] | None = None,
    meter_provider: MeterProvider | None = None,
    car_module_config: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> ServerUnderTest:
    """Build and serve a server for ``cars`` (each with its own example-module context and command dir)."""
    command_dirs: dict[str, Path] = {}
    car_modules: dict[str, dict[int, dict[str, Any]]] = {}
    for car in cars:
        command_dir = tmp_path / f"commands-{car}"
        command_dir.mkdir(exist_ok=True)
        command_dirs[car] = command_dir
        car_modules[car] = {
            1000: {
                "command_dir": str(command_dir),
                "command_dir_poll_ms": 5,
                **(module_config or {}),
                **(car_module_config or {}).get(car, {}),
            }
        }
    document = server_config_document(broker_port=broker_port, cars=car_modules, **options)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(document))
    config = load_config(config_path)
    server = CompanyServer(
        config, CliOptions(config_path=config_path, http_host="127.0.0.1", http_port=0), meter_provider
    )
    server.build()
    task = asyncio.create_task(server.serve(), name="server-under-test")
    assert server.connection is not None
    if not await server.connection.wait_connected(10):
        server.request_stop()
        await task
        raise AssertionError("server did not connect to the broker")
    return ServerUnderTest(server, task, command_dirs)
