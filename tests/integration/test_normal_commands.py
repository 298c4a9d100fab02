"""Normal communication — commands and command responses (protocol.md §4.8.3, §4.8.5, §4.11;
checklist §8.11 items 174–190).

Module commands are produced by the real example module: the harness drops a command file
into the module's ``command_dir`` and the module's waiting thread hands it to the server.
The first commands of a fresh server take counters 0..N-1, so the first module command of
normal communication gets counter N (the checklist's unit-level "counter 0" assumes no first
commands were sent).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from external_server.device import Device
from external_server.modules.abi import DISCONNECT_ANNOUNCED
from external_server.session.state import CarState
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from external_server.wire import InternalProtocol_pb2 as internal
from harness import ServerUnderTest
from mosquitto_broker import MosquittoBroker
from sequence_helpers import (
    CAR,
    CONNECTING,
    DEVICE_1,
    DEVICE_2,
    EXAMPLE_MODULE,
    RUNNING,
    SESSION_ID,
    T_S,
    UNCONFIGURED_MODULE,
    WAIT_S,
    connect_sequence,
    expect_status_responses,
    install_spy,
    logged,
    serve_car,
    wait_for_reset,
)

pytestmark = pytest.mark.broker

DEVICE_NOT_CONNECTED = ext.CommandResponse.DEVICE_NOT_CONNECTED
GHOST = Device(EXAMPLE_MODULE, 0, "ghost", "Ghost")


def _command_bytes(session_id: str, counter: int, device: Device, data: bytes) -> bytes:
    return ext.ExternalServer(
        command=ext.Command(
            sessionId=session_id,
            messageCounter=counter,
            deviceCommand=internal.DeviceCommand(device=device.to_proto(), commandData=data),
        )
    ).SerializeToString()


async def _expect_command(car: CarClient, counter: int, session_id: str = SESSION_ID) -> ext.Command:
    message = await car.expect("command", WAIT_S)
    assert message.command.sessionId == session_id
    assert message.command.messageCounter == counter
    return message.command


async def _wait_pending(server: ServerUnderTest, counters: list[int]) -> None:
    """Wait until exactly these commands are pending (and not because a reset emptied the list)."""
    session = server.session(CAR)
    tracker = session.command_tracker
    await server.wait_until(lambda: [command.counter for command in tracker.pending()] == counters)
    assert not session.stats.resets, f"unexpected reset: {dict(session.stats.resets)}"


async def test_module_command_published_exactly(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """§8.11 item 174: a module command for a registered device → exactly Command{id, N, {device, "cmd"}}."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        server.inject_command(CAR, DEVICE_1, b"cmd")
        message = await car.expect("command", WAIT_S)
        assert message.SerializeToString() == _command_bytes(
            SESSION_ID, normal.next_command_counter, DEVICE_1, b"cmd"
        )


@pytest.mark.parametrize("send_invalid_command", [True, False], ids=["send_invalid", "drop_invalid"])
async def test_command_with_other_module_number(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture, send_invalid_command: bool
) -> None:
    """§8.11 item 175: a command of module 1000's queue whose device says module 1001 → WARNING; published
    iff ``send_invalid_command`` (when dropped it takes no counter)."""
    caplog.set_level(logging.INFO, logger="external_server")
    invalid = Device(UNCONFIGURED_MODULE, 0, "other_module", "Other")
    async with serve_car(mosquitto, tmp_path, send_invalid_command=send_invalid_command) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        counter = normal.next_command_counter
        server.inject_command(CAR, invalid, b"invalid")
        server.inject_command(CAR, DEVICE_1, b"valid")
        if send_invalid_command:
            command = await _expect_command(car, counter)
            assert command.deviceCommand.device.module == UNCONFIGURED_MODULE
            assert command.deviceCommand.commandData == b"invalid"
            assert logged(caplog, "module mismatch", logging.WARNING)
            valid = await _expect_command(car, counter + 1)
            # §10.8: acknowledging the invalid one (no module 1001 to ack to) must not break the session
            car.send_command_response(SESSION_ID, counter)
            car.send_command_response(SESSION_ID, counter + 1)
        else:
            valid = await _expect_command(car, counter)
            assert logged(caplog, "different module number; dropped", logging.WARNING)
            car.send_command_response(SESSION_ID, counter)
        assert valid.deviceCommand.commandData == b"valid"
        await _wait_pending(server, [])
        await server.wait_counter(CAR, "acks", 1)
        assert server.session(CAR).state == CarState.RUNNING


async def test_empty_command_published_with_warning(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.11 item 176: a module command with empty data is published, with a WARNING."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        server.inject_command(CAR, DEVICE_1, b"")
        command = await _expect_command(car, normal.next_command_counter)
        assert command.deviceCommand.commandData == b""
        assert logged(caplog, "empty command", logging.WARNING)


async def test_command_for_unregistered_device_published_with_warning(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§8.11 item 177 (+ §4.8.3 step 3): a module command for a device that is not registered is still
    published, with a WARNING containing "not connected"; its response is acknowledged to the module
    although the device is not registered."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        server.inject_command(CAR, GHOST, b"boo")
        command = await _expect_command(car, normal.next_command_counter)
        assert command.deviceCommand.device.deviceRole == GHOST.role
        assert command.deviceCommand.commandData == b"boo"
        assert logged(caplog, "not connected", logging.WARNING)
        car.send_command_response(SESSION_ID, normal.next_command_counter)
        await server.wait_until(lambda: spy.snapshot()["acks"] == [(b"boo", GHOST)])
        assert not server.session(CAR).registry.is_registered(GHOST)


async def test_response_releases_pending_command(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.11 items 178, 181: a command sent in normal communication is pending; its CommandResponse
    releases it (nothing pending) and the module gets command_ack with the command."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        counter = normal.next_command_counter
        server.inject_command(CAR, DEVICE_1, b"cmd")
        await _expect_command(car, counter)
        await _wait_pending(server, [counter])
        car.send_command_response(SESSION_ID, counter)
        await _wait_pending(server, [])
        await server.wait_counter(CAR, "acks", 1)
        assert spy.snapshot()["acks"] == [(b"cmd", DEVICE_1)]
        assert server.counters(CAR)["acks"] == 1  # the server-generated first command is not acked


async def test_released_response_is_logged_at_info(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.11 item 181: a CommandResponse for the pending command is logged (INFO) while it is handled."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        counter = normal.next_command_counter
        server.inject_command(CAR, DEVICE_1, b"cmd")
        await _expect_command(car, counter)
        await _wait_pending(server, [counter])
        caplog.clear()
        car.send_command_response(SESSION_ID, counter)
        await server.wait_counter(CAR, "acks", 1)
        records = [
            record
            for record in caplog.records
            if record.name.startswith("external_server.car") and record.levelno >= logging.INFO
        ]
        assert records, "no INFO record for the accepted command response"


async def test_foreign_session_response_then_right_one(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.11 items 179, 183: a response with another session id → INFO containing "session id", the
    command stays pending; the right response then releases it; no failure."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        counter = normal.next_command_counter
        session = server.session(CAR)
        server.inject_command(CAR, DEVICE_1, b"cmd")
        await _expect_command(car, counter)
        car.send_command_response("other_session", counter)
        await server.wait_until(lambda: session.stats.ignored["foreign_session"] == 1)
        assert logged(caplog, "session id", logging.INFO)
        await _wait_pending(server, [counter])
        assert server.counters(CAR)["acks"] == 0
        car.send_command_response(SESSION_ID, counter)
        await _wait_pending(server, [])
        await server.wait_counter(CAR, "acks", 1)
        assert session.state == CarState.RUNNING
        assert not session.stats.resets


async def test_unanswered_command_resets_and_new_session_works(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.11 items 180, 190 (+ §4.13.5): no response for T → COMMAND_RESPONSE_TIMEOUT reset (the pending
    command gets no command_ack); a new sequence with "new_id" works (its first command continues
    the counter) and its RUNNING status reaches the module."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        counter = normal.next_command_counter
        sent_before = time.monotonic()  # the command's timer starts after this
        server.inject_command(CAR, DEVICE_1, b"never answered")
        await _expect_command(car, counter)
        await wait_for_reset(server, car, timeout_s=T_S + 10.0)
        session = server.session(CAR)
        # the command timer ended the session, not the session timer S (the core tests time both)
        assert dict(session.stats.resets) == {"command_response_timeout": 1}
        assert time.monotonic() - sent_before >= T_S
        assert spy.snapshot()["acks"] == []
        second = await connect_sequence(server, car, [DEVICE_1], session_id="new_id")
        assert second.first_command_counters == (counter + 1,)
        car.send_status("new_id", RUNNING, 2, DEVICE_1, b"new session")
        await expect_status_responses(car, [2], session_id="new_id")
        await server.wait_until(lambda: spy.snapshot()["statuses"][-1:] == [(b"new session", DEVICE_1)])


async def test_response_without_pending_command(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.11 item 182: a response while no command is pending → INFO containing "no commands"; ignored."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        car.send_command_response(SESSION_ID, 42)
        car.send_status(SESSION_ID, RUNNING, normal.next_status_counter, DEVICE_1)
        await expect_status_responses(car, [normal.next_status_counter])
        assert logged(caplog, "no commands", logging.INFO)
        assert server.counters(CAR)["acks"] == 0
        assert server.session(CAR).state == CarState.RUNNING


async def test_response_with_wrong_counter_keeps_command_pending(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.11 item 184: pending command c, response c+1 → INFO containing "counter", c stays pending."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        counter = normal.next_command_counter
        server.inject_command(CAR, DEVICE_1, b"cmd")
        await _expect_command(car, counter)
        car.send_command_response(SESSION_ID, counter + 1)
        car.send_status(SESSION_ID, RUNNING, normal.next_status_counter, DEVICE_1)
        await expect_status_responses(car, [normal.next_status_counter])
        assert logged(caplog, f"counter {counter + 1}", logging.INFO)
        await _wait_pending(server, [counter])
        assert server.counters(CAR)["acks"] == 0
        car.send_command_response(SESSION_ID, counter)
        await _wait_pending(server, [])


async def test_device_not_connected_unregisters_that_device(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.11 item 185 (+ §4.8.3 steps 2–3): devices 1, 2 and a command to device 1; DEVICE_NOT_CONNECTED
    for it → device 1 unregistered (device_disconnected announced), device 2 stays, the command is
    still acknowledged to the module."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        spy = install_spy(monkeypatch, server)
        counter = normal.next_command_counter
        server.inject_command(CAR, DEVICE_1, b"cmd")
        await _expect_command(car, counter)
        car.send_command_response(SESSION_ID, counter, DEVICE_NOT_CONNECTED)
        await _wait_pending(server, [])
        session = server.session(CAR)
        assert session.registry.devices() == [DEVICE_2]
        await server.wait_until(lambda: spy.snapshot()["acks"] == [(b"cmd", DEVICE_1)])
        assert spy.snapshot()["disconnected"] == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
        assert session.state == CarState.RUNNING


async def test_device_not_connected_for_newer_pending_command(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.11 item 186: commands c, c+1 to device 1; DEVICE_NOT_CONNECTED(c+1) (not the oldest) →
    device 1 unregistered anyway; c+1 is only early-acknowledged until c is answered."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        spy = install_spy(monkeypatch, server)
        c = normal.next_command_counter
        server.inject_command(CAR, DEVICE_1, b"first")
        server.inject_command(CAR, DEVICE_1, b"second")
        await _expect_command(car, c)
        await _expect_command(car, c + 1)
        car.send_command_response(SESSION_ID, c + 1, DEVICE_NOT_CONNECTED)
        session = server.session(CAR)
        await server.wait_until(lambda: not session.registry.is_registered(DEVICE_1))
        assert session.registry.devices() == [DEVICE_2]
        await _wait_pending(server, [c, c + 1])
        assert spy.snapshot()["acks"] == []
        car.send_command_response(SESSION_ID, c)
        await _wait_pending(server, [])
        await server.wait_until(lambda: len(spy.snapshot()["acks"]) == 2)
        assert spy.snapshot()["acks"] == [(b"first", DEVICE_1), (b"second", DEVICE_1)]


async def test_device_not_connected_for_unknown_counter(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.11 item 187: commands c, c+1; DEVICE_NOT_CONNECTED(c+2) → nothing unregistered, nothing released."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        c = normal.next_command_counter
        server.inject_command(CAR, DEVICE_1, b"first")
        server.inject_command(CAR, DEVICE_1, b"second")
        await _expect_command(car, c)
        await _expect_command(car, c + 1)
        car.send_command_response(SESSION_ID, c + 2, DEVICE_NOT_CONNECTED)
        car.send_status(SESSION_ID, RUNNING, normal.next_status_counter, DEVICE_1)
        await expect_status_responses(car, [normal.next_status_counter])
        assert logged(caplog, f"unknown command counter {c + 2}", logging.INFO)
        assert server.session(CAR).registry.devices() == [DEVICE_1, DEVICE_2]
        await _wait_pending(server, [c, c + 1])
        assert server.counters(CAR)["disconnects"] == 0


async def test_device_not_connected_of_last_device_resets_on_next_status(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """§4.8.3 step 5: DEVICE_NOT_CONNECTED for the only device does not reset at once; the next status
    of the current session detects "all devices disconnected" and resets."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        counter = normal.next_command_counter
        server.inject_command(CAR, DEVICE_1, b"cmd")
        await _expect_command(car, counter)
        car.send_command_response(SESSION_ID, counter, DEVICE_NOT_CONNECTED)
        session = server.session(CAR)
        await server.wait_counter(CAR, "acks", 1)
        assert len(session.registry) == 0
        assert session.state == CarState.RUNNING
        assert car.pending() == 0
        car.send_status(SESSION_ID, RUNNING, normal.next_status_counter, DEVICE_1)
        await wait_for_reset(server, car)
        assert dict(session.stats.resets) == {"all_devices_disconnected": 1}
        assert car.pending() == 0  # the status of the unregistered device was not answered


async def test_command_carries_the_device_name_and_role(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """§8.11 item 188: a command produced after the sequence reaches the car with the device's role and
    name (here the second of two devices)."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        server.inject_command(CAR, DEVICE_2, b"to device 2")
        command = await _expect_command(car, normal.next_command_counter)
        device = command.deviceCommand.device
        assert (device.module, device.deviceType, device.deviceRole, device.deviceName) == (
            DEVICE_2.module,
            DEVICE_2.device_type,
            DEVICE_2.role,
            DEVICE_2.name,
        )
        assert command.deviceCommand.commandData == b"to device 2"


async def test_commands_sent_without_waiting_for_responses(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.11 item 189 (+ §4.8.5, §4.11): three commands at once, only the response to the second one
    sent → the car still receives all three (counters 1, 2, 3); later responses 1 then 3 release
    1, 2 and then 3 (early acknowledgement)."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        assert normal.next_command_counter == 1
        spy = install_spy(monkeypatch, server)
        for data in (b"a", b"b", b"c"):
            server.inject_command(CAR, DEVICE_1, data)
        first = await _expect_command(car, 1)
        second = await _expect_command(car, 2)
        # The module may hand the three over in separate batches: answer 2 only once it is pending.
        car.send_command_response(SESSION_ID, 2)
        third = await _expect_command(car, 3)
        assert [first.deviceCommand.commandData, second.deviceCommand.commandData] == [b"a", b"b"]
        assert third.deviceCommand.commandData == b"c"
        await server.wait_until(lambda: server.session(CAR).command_tracker.early_acknowledgements() == {2})
        assert spy.snapshot()["acks"] == []
        car.send_command_response(SESSION_ID, 1)
        await _wait_pending(server, [3])
        car.send_command_response(SESSION_ID, 3)
        await _wait_pending(server, [])
        await server.wait_until(lambda: len(spy.snapshot()["acks"]) == 3)
        assert [data for data, _ in spy.snapshot()["acks"]] == [b"a", b"b", b"c"]


async def test_commands_queued_during_connect_sequence_are_flushed(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """design.md decision (protocol.md §4.8 note, §10.7): a module command queued while the connect
    sequence waits for the first command responses is sent as soon as normal communication starts,
    without waiting for another command-available signal."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        car.send_connect(SESSION_ID, [DEVICE_1])
        await car.expect("connectResponse", WAIT_S)
        car.send_status(SESSION_ID, CONNECTING, 1, DEVICE_1)
        await expect_status_responses(car, [1])
        first = await _expect_command(car, 0)
        server.inject_command(CAR, DEVICE_1, b"queued meanwhile")
        session = server.session(CAR)
        queue = session.core.command_queues[EXAMPLE_MODULE]
        await server.wait_until(lambda: len(queue) == 1)  # handed to the session during phase D
        assert car.pending() == 0
        car.send_command_response(SESSION_ID, first.messageCounter)
        command = await _expect_command(car, 1)
        assert command.deviceCommand.commandData == b"queued meanwhile"
        assert session.state == CarState.RUNNING


async def test_unreleased_first_command_times_out_in_normal_communication(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """protocol.md §4.7 and §4.11 (REF-QUIRK fixed, §10.7): phase D counts any current-session response;
    answering first command 1 twice leaves command 0 pending, and its timer stays effective in normal
    communication → COMMAND_RESPONSE_TIMEOUT reset T after it was sent."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        car.send_connect(SESSION_ID, [DEVICE_1, DEVICE_2])
        await car.expect("connectResponse", WAIT_S)
        car.send_status(SESSION_ID, CONNECTING, 1, DEVICE_1)
        car.send_status(SESSION_ID, CONNECTING, 2, DEVICE_2)
        await expect_status_responses(car, [1, 2])
        await _expect_command(car, 0)
        await _expect_command(car, 1)
        car.send_command_response(SESSION_ID, 1)
        car.send_command_response(SESSION_ID, 1)
        await server.wait_state(CAR, CarState.RUNNING, WAIT_S)
        await _wait_pending(server, [0, 1])
        await wait_for_reset(server, car, timeout_s=T_S + 10.0)
        # command 0's timer (T after it was sent) ended the session, not the session timer S
        assert dict(server.session(CAR).stats.resets) == {"command_response_timeout": 1}


async def test_early_acknowledgement_does_not_stop_older_command_timer(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """§4.11: commands c, c+1; only c+1 is answered → c+1 waits as an early acknowledgement and c's timer
    still expires → COMMAND_RESPONSE_TIMEOUT reset T after c was sent."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        c = normal.next_command_counter
        sent_before = time.monotonic()  # c's timer starts after this
        server.inject_command(CAR, DEVICE_1, b"older")
        server.inject_command(CAR, DEVICE_1, b"newer")
        await _expect_command(car, c)
        await _expect_command(car, c + 1)
        car.send_command_response(SESSION_ID, c + 1)  # restarts the session timer S: S is later still
        tracker = server.session(CAR).command_tracker
        await server.wait_until(lambda: tracker.early_acknowledgements() == {c + 1})
        await wait_for_reset(server, car, timeout_s=T_S + 10.0)
        assert time.monotonic() - sent_before >= T_S
        assert dict(server.session(CAR).stats.resets) == {"command_response_timeout": 1}
        assert server.counters(CAR)["acks"] == 0


async def test_device_not_connected_for_an_unregistered_device_leaves_the_module_alone(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/protocol.md §4.8.3 step 2: DEVICE_NOT_CONNECTED for a command to a device the server never
    registered releases the command (command_ack) but does not call ``device_disconnected``: there is
    nothing to disconnect (the reference called it and logged the module's NOT_OK; dropped on purpose,
    docs/design.md). The NOT_OK log text itself is checked on the session core."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        counter = normal.next_command_counter
        server.inject_command(CAR, GHOST, b"boo")
        await _expect_command(car, counter)
        car.send_command_response(SESSION_ID, counter, DEVICE_NOT_CONNECTED)
        await server.wait_until(lambda: len(spy.snapshot()["acks"]) == 1)
        assert spy.snapshot()["disconnected"] == []
        assert server.session(CAR).registry.devices() == [DEVICE_1]
        assert server.session(CAR).state == CarState.RUNNING
        assert not server.session(CAR).stats.module_errors
        assert not logged(caplog, "not among connected devices", logging.WARNING)
