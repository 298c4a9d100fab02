"""Smoke test of the in-process harness: one car completes the happy path of Appendix A.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from external_server.device import Device
from external_server.session.state import CarState
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, start_server
from mosquitto_broker import MosquittoBroker

pytestmark = pytest.mark.broker

DEVICE = Device(1000, 0, "test", "T")


async def test_happy_path_one_device(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """§8.8 items 95, 104, 111, 114, 119: Connect → OK, first status answered, empty first command 0."""
    server = await start_server(tmp_path, mosquitto.port)
    try:
        async with CarClient(mosquitto.address, COMPANY, "car_a") as car:
            car.send_connect("id", [DEVICE])
            response = await car.expect("connectResponse")
            assert response.SerializeToString() == bytes.fromhex("0a040a026964")
            car.send_status("id", ext.Status.CONNECTING, 1, DEVICE, b"{}")
            status_response = await car.expect("statusResponse")
            assert status_response.statusResponse.messageCounter == 1
            command = await car.expect("command")
            assert command.command.messageCounter == 0
            assert command.command.deviceCommand.commandData == b""
            assert command.command.deviceCommand.device.deviceRole == "test"
            car.send_command_response("id", 0)
            await server.wait_state("car_a", CarState.RUNNING)
            car.send_status("id", ext.Status.RUNNING, 2, DEVICE, b"{}")
            assert (await car.expect("statusResponse")).statusResponse.messageCounter == 2
            await server.wait_counter("car_a", "statuses", 2)
    finally:
        await server.stop()
