"""Many cars of one company on one server process and one shared MQTT connection (docs/protocol.md §7, §8.12).

Each car has its own session and its own example-module context; these tests check
that identical session ids and devices in different cars do not interfere, that
twenty cars run their sessions concurrently, and that one car's flood, reset or
slow module does not keep another car from its answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from external_server.app import default_client_id
from external_server.device import Device
from external_server.modules.context import ModuleContext
from external_server.session.state import CarState
from external_server.simulator import Fleet, FleetConfig, GatewayState, GatewayTimings, car_names
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, ServerUnderTest, start_server
from mosquitto_broker import MosquittoBroker
from process_helpers import connect_sequence, expect_status_response, kind_of

pytestmark = pytest.mark.broker

DEVICE = Device(1000, 0, "test", "T")
BUTTON = Device(1000, 0, "button", "io button")
TRANSPARENT = Device(1000, 0, "transparent", "teleop")


async def _answer_commands_until(
    car: CarClient, session_id: str, predicate: Callable[[ext.Command], bool], timeout_s: float
) -> ext.Command:
    """Answer every Command OK until one satisfies ``predicate``; other message kinds are not expected."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{car.car}: no matching command within {timeout_s} s"
        message = await car.expect("command", remaining)
        car.send_command_response(session_id, message.command.messageCounter)
        if predicate(message.command):
            return message.command


def _carries(data: bytes) -> Callable[[ext.Command], bool]:
    return lambda command: command.deviceCommand.commandData == data


async def test_same_session_id_and_device_in_two_cars(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """Items 191, 194: both cars RUNNING with session "id" and the same device; each first status
    reaches its own car's module context (its bytes come back only to that car as an echo command)."""
    server = await start_server(
        tmp_path, mosquitto.port, cars=("car_a", "car_b"), module_config={"echo_every": 1}
    )
    try:
        async with (
            CarClient(mosquitto.address, COMPANY, "car_a") as car_a,
            CarClient(mosquitto.address, COMPANY, "car_b") as car_b,
        ):
            payloads = {"car_a": b'{"car":"a"}', "car_b": b'{"car":"b"}'}
            sequences = await asyncio.gather(
                connect_sequence(car_a, "id", [DEVICE], status_data=lambda _: payloads["car_a"]),
                connect_sequence(car_b, "id", [DEVICE], status_data=lambda _: payloads["car_b"]),
            )
            for name in ("car_a", "car_b"):
                await server.wait_state(name, CarState.RUNNING)
                assert server.session(name).session_id == "id"
                assert server.counters(name)["statuses"] == 1
                assert server.counters(name)["connects"] == 1
            # echo_every=1: the module context that got the first status queues a command with its
            # bytes. It is the first command (if the module was quick) or a later one.
            for client, commands in zip((car_a, car_b), sequences, strict=True):
                own = payloads[client.car]
                if commands[0].deviceCommand.commandData != own:
                    echoed = await _answer_commands_until(client, "id", _carries(own), 5.0)
                    assert echoed.deviceCommand.device.deviceRole == DEVICE.role
            for client, other in ((car_a, payloads["car_b"]), (car_b, payloads["car_a"])):
                for message in client.history:
                    if kind_of(message) == "command":
                        assert message.command.deviceCommand.commandData != other
    finally:
        await server.stop()


async def test_only_one_car_connected(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """Items 192, 195: only car_a connects: car_a RUNNING, car_b not; car_b's statuses reach nothing."""
    server = await start_server(tmp_path, mosquitto.port, cars=("car_a", "car_b"))
    try:
        async with (
            CarClient(mosquitto.address, COMPANY, "car_a") as car_a,
            CarClient(mosquitto.address, COMPANY, "car_b") as car_b,
        ):
            await connect_sequence(car_a, "id", [DEVICE])
            await server.wait_state("car_a", CarState.RUNNING)
            for counter in (2, 3):
                car_a.send_status("id", ext.Status.RUNNING, counter, DEVICE, b'{"car":"a"}')
                car_b.send_status("id", ext.Status.RUNNING, counter, DEVICE, b'{"car":"b"}')
            await expect_status_response(car_a, "id", 2)
            await expect_status_response(car_a, "id", 3)
            await server.wait_counter("car_a", "statuses", 3)  # the first status + 2 RUNNING
            assert await car_b.receive(1.5) is None
            assert server.session("car_b").state != CarState.RUNNING
            assert server.counters("car_b")["statuses"] == 0
            assert server.counters("car_b")["connects"] == 0
            assert server.session("car_a").state == CarState.RUNNING
    finally:
        await server.stop()


async def test_commands_reach_the_right_car_and_device(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """Item 196: commands for both devices of both cars: each car gets exactly its two, right devices."""
    server = await start_server(tmp_path, mosquitto.port, cars=("car_a", "car_b"))
    devices = [TRANSPARENT, BUTTON]
    try:
        async with (
            CarClient(mosquitto.address, COMPANY, "car_a") as car_a,
            CarClient(mosquitto.address, COMPANY, "car_b") as car_b,
        ):
            cars = {"car_a": car_a, "car_b": car_b}
            first = await asyncio.gather(*(connect_sequence(car, "id", devices) for car in cars.values()))
            assert all([c.messageCounter for c in commands] == [0, 1] for commands in first)
            for name in cars:
                await server.wait_state(name, CarState.RUNNING)
            for name in cars:
                for device in devices:
                    server.inject_command(name, device, f"{name}->{device.role}".encode())
            for name, car in cars.items():
                received = [(await car.expect("command", 5.0)).command for _ in devices]
                for command in received:
                    car.send_command_response("id", command.messageCounter)
                assert sorted(c.messageCounter for c in received) == [2, 3]  # per-car counters (§7)
                got = {
                    (c.deviceCommand.device.deviceRole, c.deviceCommand.device.deviceName): (
                        c.deviceCommand.commandData
                    )
                    for c in received
                }
                assert got == {
                    (device.role, device.name): f"{name}->{device.role}".encode() for device in devices
                }
                assert all(c.sessionId == "id" and c.deviceCommand.device.module == 1000 for c in received)
            for name, car in cars.items():
                assert await car.receive(0.5) is None, f"{name} got an extra message"
                await server.wait_counter(name, "acks", 2)
    finally:
        await server.stop()


async def test_twenty_cars_at_once(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """Twenty gateways start together, complete their sequences and exchange statuses concurrently."""
    cars = car_names(20)
    server = await start_server(tmp_path, mosquitto.port, cars=cars)
    timings = GatewayTimings(
        connect_response_timeout_s=2.0,
        status_response_timeout_s=10.0,
        reconnect_delay_s=0.3,
        disconnect_wait_s=2.0,
        drain_timeout_s=5.0,
    )
    config = FleetConfig(
        broker=mosquitto.address,
        company=COMPANY,
        cars=cars,
        devices_per_car=2,
        rate_hz=10.0,
        statuses_per_car=20,
        timings=timings,
    )
    fleet = Fleet(config)
    try:
        await fleet.start()
        assert await fleet.wait_all_connected(30.0), [
            (g.car, g.state.value, dict(g.stats.failures)) for g in fleet.gateways
        ]
        # all twenty in normal communication at the same moment, on both sides
        await server.wait_until(
            lambda: all(server.session(car).state == CarState.RUNNING for car in cars), 10.0
        )
        assert all(gateway.state is GatewayState.CONNECTED for gateway in fleet.gateways)
        await asyncio.wait_for(fleet.wait(), 60.0)
        module_counters = {car: server.counters(car) for car in cars}
    finally:
        await fleet.close()
        await server.stop()
    for gateway in fleet.gateways:
        stats = gateway.stats
        assert stats.sessions >= 1, gateway.car
        assert stats.statuses_sent >= 20, (gateway.car, stats)
        assert stats.statuses_answered == stats.statuses_sent, (gateway.car, stats)
        assert stats.status_timeouts == 0, (gateway.car, stats)
        assert stats.commands_received >= 2, (gateway.car, stats)
    # one MQTT connection for all twenty cars: MQTT 3.1.1 (p2), clean session (c1), keepalive 15 s
    client_id = default_client_id(server.server.config)
    connects = [line for line in mosquitto.log_path.read_text().splitlines() if f" as {client_id} " in line]
    assert len(connects) == 1, connects
    assert connects[0].endswith("(p2, c1, k15).")
    for car, module in module_counters.items():
        assert module["connects"] >= 2, (car, module)
        assert module["statuses"] >= 22, (car, module)  # 2 first statuses + 20 of normal communication


async def test_flood_of_one_car_does_not_starve_another(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """car_a sends thousands of statuses at once; car_b keeps getting its StatusResponses meanwhile."""
    flood = 2000
    server = await start_server(tmp_path, mosquitto.port, cars=("car_a", "car_b"))
    try:
        async with (
            CarClient(mosquitto.address, COMPANY, "car_a") as car_a,
            CarClient(mosquitto.address, COMPANY, "car_b") as car_b,
        ):
            await asyncio.gather(
                connect_sequence(car_a, "a", [DEVICE]), connect_sequence(car_b, "b", [DEVICE])
            )
            for car in ("car_a", "car_b"):
                await server.wait_state(car, CarState.RUNNING)
            for counter in range(2, 2 + flood):
                car_a.send_status("a", ext.Status.RUNNING, counter, DEVICE, b'{"flood":true}')
            # car_b: one status at a time, each must be answered (generous bound) while car_a floods
            for counter in range(2, 12):
                car_b.send_status("b", ext.Status.RUNNING, counter, DEVICE, b"{}")
                await expect_status_response(car_b, "b", counter, timeout_s=10.0)
            assert server.session("car_b").state == CarState.RUNNING
            # and the flood itself is answered completely, in order
            for counter in range(2, 2 + flood):
                await expect_status_response(car_a, "a", counter, timeout_s=20.0)
            assert server.session("car_a").state == CarState.RUNNING
            assert server.session("car_a").stats.dropped_overflow == 0
            await server.wait_counter("car_a", "statuses", 1 + flood, timeout_s=10.0)
            assert server.counters("car_b")["statuses"] == 11
    finally:
        await server.stop()


async def test_reset_of_one_car_does_not_disturb_another(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """car_a's session is reset (new Connect, then silence); car_b keeps its session and its answers."""
    server = await start_server(tmp_path, mosquitto.port, cars=("car_a", "car_b"))
    try:
        async with (
            CarClient(mosquitto.address, COMPANY, "car_a") as car_a,
            CarClient(mosquitto.address, COMPANY, "car_b") as car_b,
        ):
            await asyncio.gather(
                connect_sequence(car_a, "a1", [DEVICE]), connect_sequence(car_b, "b", [DEVICE])
            )
            for car in ("car_a", "car_b"):
                await server.wait_state(car, CarState.RUNNING)
            car_a.send_connect("a2", [DEVICE])  # another session id in normal communication → reset
            assert await car_a.receive_disconnect_notification(5.0)
            counter = 2
            resets_a = server.session("car_a").stats.resets
            deadline = time.monotonic() + 20.0  # a guard against a hang, not a speed bound
            # car_b keeps talking until car_a has also failed a phase A (T = 1 s) after the reset
            while sum(resets_a.values()) < 2 or counter < 5:
                assert time.monotonic() < deadline, f"car_a: no phase A timeout: {dict(resets_a)}"
                car_b.send_status("b", ext.Status.RUNNING, counter, DEVICE, b"{}")
                await expect_status_response(car_b, "b", counter, timeout_s=5.0)
                counter += 1
                await asyncio.sleep(0.1)  # the scenario: a car sending ten statuses a second
            assert server.session("car_a").stats.resets["new_session"] == 1
            assert sum(server.session("car_a").stats.resets.values()) >= 2  # + phase A timeouts
            assert server.session("car_b").state == CarState.RUNNING
            assert sum(server.session("car_b").stats.resets.values()) == 0
            assert car_b.notification_count == 0
            assert server.server.connection is not None and server.server.connection.connect_count == 1
            assert server.counters("car_b")["disconnects"] == 0
            assert server.counters("car_a")["disconnects"] >= 1  # clean-up: device_disconnected(timeout)
    finally:
        await server.stop()


async def test_blocked_module_of_one_car_does_not_block_another(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """car_a's module blocks in forward_status; car_b's statuses are still answered meanwhile.

    The example module cannot block on its own, so car_a's (real) context is wrapped
    with a forward_status that waits for an event first.
    """
    server = await start_server(tmp_path, mosquitto.port, cars=("car_a", "car_b"))
    release = threading.Event()
    try:
        async with (
            CarClient(mosquitto.address, COMPANY, "car_a") as car_a,
            CarClient(mosquitto.address, COMPANY, "car_b") as car_b,
        ):
            await asyncio.gather(
                connect_sequence(car_a, "a", [DEVICE]), connect_sequence(car_b, "b", [DEVICE])
            )
            for car in ("car_a", "car_b"):
                await server.wait_state(car, CarState.RUNNING)
            _block_forward_status(server, "car_a", release)
            car_a.send_status("a", ext.Status.RUNNING, 2, DEVICE, b"{}")
            for counter in range(2, 7):
                car_b.send_status("b", ext.Status.RUNNING, counter, DEVICE, b"{}")
                await expect_status_response(car_b, "b", counter, timeout_s=5.0)
            assert car_a.pending() == 0  # still blocked in the module
            release.set()
            await expect_status_response(car_a, "a", 2, timeout_s=5.0)
            assert server.session("car_a").state == CarState.RUNNING
    finally:
        release.set()
        await server.stop()


def _block_forward_status(server: ServerUnderTest, car: str, release: threading.Event) -> None:
    context: ModuleContext = server.server.cars[car].runtimes[0].context
    original = context.forward_status

    def blocking(data: bytes, device: Device) -> int:
        release.wait(10.0)
        return original(data, device)

    context.forward_status = blocking  # type: ignore[method-assign]
