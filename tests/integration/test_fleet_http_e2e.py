"""End to end with the fleet_http module (docs/http-bridge.md §4.15).

car → mosquitto → server → HTTP API → car.

A simulated car (CarClient) talks to the production CompanyServer on a real
mosquitto; the server loads libfleet_http_transparent.so / libfleet_http_io.so
through its ctypes binding, and the modules talk to the HTTP API test double
(tests/support/http_api_double.py, T_api = 1 s). Statuses must show up in the API,
and commands POSTed to the API must reach the car as Commands within 5 s (the
integration suite's bound). The POST → car latency of a few commands is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from external_server.app import CompanyServer
from external_server.cli import CliOptions
from external_server.config.loading import load_config
from external_server.device import Device
from external_server.session.state import CarState
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from mosquitto_broker import MosquittoBroker
from support.fleet_http_module import (
    COMPANY,
    REQUIRE_REAL_PARTS,
    build_fleet_http,
    library_path,
    module_config,
)
from support.http_api_double import FleetHttpApiDouble, message
from support.waiting import wait_until

pytestmark = pytest.mark.broker

TRANSPARENT = Device(3, 1, "test_device_1", "Test_Device_1")
BUTTON = Device(2, 3, "button", "Button")
DELIVERY_BOUND_S = 5.0


@pytest.fixture(scope="module")
def fleet_http_built() -> None:
    result = build_fleet_http()
    if not result.built:
        reason = f"fleet_http modules not built: {result.output}"
        if REQUIRE_REAL_PARTS:
            pytest.fail(f"{reason}; FLEET_REQUIRE_REAL_PARTS=1 requires them")
        pytest.skip(reason)


@pytest.fixture
def api() -> Iterator[FleetHttpApiDouble]:
    with FleetHttpApiDouble(t_api_s=1.0) as double:
        yield double


def config_document(broker_port: int, api_url: str, cars: tuple[str, ...]) -> dict[str, Any]:
    modules = {
        str(module_id): {
            "lib_path": str(library_path(module_id)),
            "config": module_config(api_url),
            "timeout_ms": 200,
        }
        for module_id in (2, 3)
    }
    return {
        "company_name": COMPANY,
        "external_communication": {
            "protocol": "MQTT",
            "server_address": "127.0.0.1",
            "server_port": broker_port,
            "timeout_ms": 5000,
        },
        "timeout": 2.0,
        "send_invalid_command": False,
        "sleep_duration_after_connection_refused": 0.1,
        "common_modules": {},
        "cars": {car: {"specific_modules": modules} for car in cars},
        "logging": {
            "console": {"level": "INFO", "use": True},
            "file": {"level": "INFO", "use": False, "path": ""},
        },
    }


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, broker_port: int, api_url: str, cars: tuple[str, ...]
) -> AsyncIterator[CompanyServer]:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config_document(broker_port, api_url, cars)))
    options = CliOptions(config_path=config_path, http_port=0, http_host="127.0.0.1")
    server = CompanyServer(load_config(config_path), options)
    server.build()
    task = asyncio.create_task(server.serve(), name="fleet-http-e2e-server")
    try:
        assert server.connection is not None
        assert await server.connection.wait_connected(10), "server did not connect to the broker"
        yield server
    finally:
        server.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


async def bring_up(server: CompanyServer, car: CarClient, session: str) -> None:
    """Connect with both devices, first statuses, answer the first commands: the car is RUNNING."""
    car.send_connect(session, [TRANSPARENT, BUTTON])
    await car.expect("connectResponse")
    car.send_status(session, ext.Status.CONNECTING, 1, TRANSPARENT, b'{"content":"x","timestamp":111}')
    await car.expect("statusResponse")
    car.send_status(session, ext.Status.CONNECTING, 2, BUTTON, b'[[1,0],[0,1],{"butPr":0}]')
    await car.expect("statusResponse")
    for _ in range(2):
        command = await car.expect("command")
        car.send_command_response(session, command.command.messageCounter)
    await wait_until(lambda: server.cars[car.car].session.state == CarState.RUNNING)


async def post_command(api: FleetHttpApiDouble, car: str, device: Device, data: Any) -> None:
    body = [message(device.module, device.device_type, device.role, device.name, data)]
    status, answer = await asyncio.to_thread(api.post_commands, COMPANY, car, body)
    assert status == 200, answer


async def expect_command(car: CarClient, session: str, timeout_s: float = DELIVERY_BOUND_S) -> ext.Command:
    received = await car.expect("command", timeout=timeout_s)
    car.send_command_response(session, received.command.messageCounter)
    return received.command


async def test_single_car_status_and_commands(
    fleet_http_built: None,
    mosquitto: MosquittoBroker,
    api: FleetHttpApiDouble,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with (
        serving(tmp_path, mosquitto.port, api.base_url, ("car_a",)) as server,
        CarClient(mosquitto.address, COMPANY, "car_a") as car,
    ):
        await bring_up(server, car, "s1")
        stored = api.stored("status", COMPANY, "car_a")
        assert {"content": "x", "timestamp": 111} in [s["payload"]["data"] for s in stored]
        assert [[1, 0], [0, 1], {"butPr": 0}] in [s["payload"]["data"] for s in stored]
        transparent = next(s for s in stored if s["device_id"]["module_id"] == 3)
        assert transparent["device_id"] == {
            "module_id": 3,
            "type": 1,
            "role": "test_device_1",
            "name": "Test_Device_1",
        }

        await post_command(api, "car_a", BUTTON, [{"outNum": 3, "actType": 2}])
        command = await expect_command(car, "s1")
        assert command.deviceCommand.commandData == b'[{"outNum":3,"actType":2}]'
        device = command.deviceCommand.device
        assert (device.module, device.deviceType, device.deviceRole, device.deviceName) == (
            2,
            3,
            "button",
            "Button",
        )

        latencies = []
        for index in range(6):
            await asyncio.sleep(0.55)  # slower than the request-frequency guard's 3 polls per second
            started = time.perf_counter()
            await post_command(api, "car_a", TRANSPARENT, {"n": index})
            command = await expect_command(car, "s1")
            latencies.append(time.perf_counter() - started)
            assert command.deviceCommand.commandData == json.dumps({"n": index}).replace(" ", "").encode()
            assert command.deviceCommand.device.deviceRole == "test_device_1"
        median_ms, max_ms = statistics.median(latencies) * 1000, max(latencies) * 1000
        with capsys.disabled():
            print(
                f"\nfleet_http e2e: command POST → Command at the car: median {median_ms:.1f} ms,"
                f" max {max_ms:.1f} ms over {len(latencies)} commands"
            )
        assert max(latencies) < DELIVERY_BOUND_S


async def test_two_cars_stay_isolated(
    fleet_http_built: None, mosquitto: MosquittoBroker, api: FleetHttpApiDouble, tmp_path: Path
) -> None:
    async with (
        serving(tmp_path, mosquitto.port, api.base_url, ("car_a", "car_b")) as server,
        CarClient(mosquitto.address, COMPANY, "car_a") as car_a,
        CarClient(mosquitto.address, COMPANY, "car_b") as car_b,
    ):
        await asyncio.gather(bring_up(server, car_a, "a"), bring_up(server, car_b, "b"))
        await post_command(api, "car_b", TRANSPARENT, "for car_b")
        command = await expect_command(car_b, "b")
        assert command.deviceCommand.commandData == b'"for car_b"'
        await post_command(api, "car_a", TRANSPARENT, "for car_a")
        command = await expect_command(car_a, "a")
        assert command.deviceCommand.commandData == b'"for car_a"'
        assert await car_a.receive(timeout=1.5) is None
        assert await car_b.receive(timeout=0.1) is None
