"""A slow or failing module harms only its own car (issue 3 items 2 and 9, docs/protocol.md §4.14 note)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from external_server.device import Device
from external_server.session.state import CarState
from external_server.simulator.car_client import CarClient, create_car_clients
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, ServerUnderTest, start_server
from mosquitto_broker import MosquittoBroker

pytestmark = pytest.mark.broker

DEVICE = Device(1000, 0, "test", "T")


async def _connect(server: ServerUnderTest, car: CarClient, session_id: str) -> None:
    car.send_connect(session_id, [DEVICE])
    await car.expect("connectResponse")
    car.send_status(session_id, ext.Status.CONNECTING, 1, DEVICE, b"{}")
    await car.expect("statusResponse", timeout=10)
    command = await car.expect("command", timeout=10)
    car.send_command_response(session_id, command.command.messageCounter)
    await server.wait_state(car.car, CarState.RUNNING, timeout_s=10)


async def test_a_module_blocked_in_forward_status_does_not_delay_another_car(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """car_a's module sleeps 2 s in every forward_status; car_b still gets each answer at once."""
    server = await start_server(
        tmp_path,
        mosquitto.port,
        cars=("car_a", "car_b"),
        response_timeout_s=5.0,
        session_timeout_s=20.0,
        car_module_config={"car_a": {"forward_delay_ms": 2000}},
    )
    try:
        async with create_car_clients(mosquitto.address, COMPANY, ["car_a", "car_b"]) as cars:
            slow, fast = cars["car_a"], cars["car_b"]
            await asyncio.gather(_connect(server, slow, "a"), _connect(server, fast, "b"))
            slow.send_status("a", ext.Status.RUNNING, 2, DEVICE, b"{}")
            # the first status went through; the second is now blocked inside the module
            await server.wait_until(lambda: server.counters("car_a")["statuses"] == 1)
            loop = asyncio.get_running_loop()
            for counter in range(2, 7):
                started = loop.time()
                fast.send_status("b", ext.Status.RUNNING, counter, DEVICE, b"{}")
                response = await fast.expect("statusResponse", timeout=1.5)
                assert response.statusResponse.messageCounter == counter
                assert loop.time() - started < 1.5
            assert slow.pending() == 0, "car_a's status is still inside its module"
            assert (await slow.expect("statusResponse", timeout=5)).statusResponse.messageCounter == 2
    finally:
        await server.stop()


async def test_a_module_returning_errors_is_logged_counted_and_the_car_still_served(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """forward_status returning NOT_OK (-1) is only logged (§5.3): the StatusResponse still goes out."""
    caplog.set_level(logging.ERROR, logger="external_server")
    server = await start_server(tmp_path, mosquitto.port, module_config={"forward_result": -1})
    try:
        async with CarClient(mosquitto.address, COMPANY, "car_a") as car:
            await _connect(server, car, "id")
            car.send_status("id", ext.Status.RUNNING, 2, DEVICE, b"{}")
            assert (await car.expect("statusResponse")).statusResponse.messageCounter == 2
            stats = server.session("car_a").stats
            assert stats.module_errors["forward_status"] == 2  # the first status and this one
            assert server.session("car_a").state == CarState.RUNNING
            assert any("forward_status of module 1000 failed" in r.getMessage() for r in caplog.records)
    finally:
        await server.stop()
