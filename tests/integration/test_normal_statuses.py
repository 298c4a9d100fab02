"""Normal communication — statuses (protocol.md §4.8.2, §4.9, §4.10; checklist §8.9 items 138–165).

Every test runs a real server on a real broker with the example module and plays the
car with :class:`CarClient`. "On the API" in the checklist means "forwarded to the
module": observed through the example module's counters and a spy that records the
arguments of the module calls. A status that must not be answered is checked with a
sentinel: the car sends an answerable status right after it, and the next message it
receives must be the sentinel's response (the server handles messages in order).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from external_server.device import Device
from external_server.modules.abi import DISCONNECT_ANNOUNCED
from external_server.session.state import CarState
from external_server.wire import ExternalProtocol_pb2 as ext
from mosquitto_broker import MosquittoBroker
from sequence_helpers import (
    CAR,
    CONNECTING,
    DEVICE_1,
    DEVICE_2,
    DISCONNECT,
    ERROR,
    EXAMPLE_MODULE,
    FOREIGN_MODULE_DEVICE,
    NEW_DEVICE,
    RUNNING,
    SESSION_ID,
    T_S,
    UNSUPPORTED_DEVICE,
    UNSUPPORTED_TYPE,
    WAIT_S,
    connect_sequence,
    expect_status_responses,
    install_spy,
    logged,
    serve_car,
    status_response_bytes,
    wait_for_reset,
)

pytestmark = pytest.mark.broker


async def test_disconnect_of_registered_device_answered_and_unregistered(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 item 138: DISCONNECT of a registered device → exact StatusResponse, device unregistered."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        spy = install_spy(monkeypatch, server)
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        counter = normal.next_status_counter
        car.send_status(SESSION_ID, DISCONNECT, counter, DEVICE_1, b"bye")
        response = await car.expect("statusResponse", WAIT_S)
        assert response.SerializeToString() == status_response_bytes(SESSION_ID, counter)
        session = server.session(CAR)
        # the response goes out first; the device leaves the registry once device_disconnected returned
        await server.wait_until(lambda: not session.registry.is_registered(DEVICE_1), what="unregistered")
        assert session.registry.is_registered(DEVICE_2)
        assert spy.snapshot()["disconnected"] == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
        assert spy.snapshot()["statuses"][-1] == (b"bye", DEVICE_1)
        assert server.counters(CAR)["devices"] == 1
        assert session.state == CarState.RUNNING


async def test_repeated_disconnect_with_same_counter_has_no_effect(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.9 item 139: the same DISCONNECT sent twice: the second is ignored (counter < E, WARNING)."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        counter = normal.next_status_counter
        car.send_status(SESSION_ID, DISCONNECT, counter, DEVICE_1)
        car.send_status(SESSION_ID, DISCONNECT, counter, DEVICE_1)
        car.send_status(SESSION_ID, RUNNING, counter + 1, DEVICE_2)
        await expect_status_responses(car, [counter, counter + 1])
        await server.wait_counter(CAR, "disconnects", 1)
        assert server.counters(CAR)["disconnects"] == 1
        assert server.counters(CAR)["statuses"] == 2 + 2  # first statuses + DISCONNECT + RUNNING
        assert logged(
            caplog,
            f"Status with counter {counter} smaller than expected value {counter + 1} is ignored.",
            logging.WARNING,
        )
        assert server.session(CAR).registry.devices() == [DEVICE_2]
        assert server.session(CAR).state == CarState.RUNNING


async def test_running_status_answered_and_device_stays_registered(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """§8.9 item 140: RUNNING (counter 1) of a registered device → StatusResponse{id, OK, 1}; the
    device stays registered.

    Counter 1 although the first status already used 1: the baseline is adopted from the first
    normal-communication status whatever its value (design.md, protocol.md §10.6).
    """
    async with serve_car(mosquitto, tmp_path) as (server, car):
        await connect_sequence(server, car, [DEVICE_1])
        car.send_status(SESSION_ID, RUNNING, 1, DEVICE_1, b"{}")
        response = await car.expect("statusResponse", WAIT_S)
        assert response.SerializeToString() == status_response_bytes(SESSION_ID, 1)
        assert server.session(CAR).registry.devices() == [DEVICE_1]
        assert server.session(CAR).state == CarState.RUNNING


async def test_error_message_forwarded_exactly_and_status_answered(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 items 141, 165: RUNNING with errorMessage "error" → forward_error_message gets exactly
    b"error" and the StatusResponse is still {id, OK, counter}."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        counter = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, counter, DEVICE_1, b"status", error_message=b"error")
        response = await car.expect("statusResponse", WAIT_S)
        assert response.SerializeToString() == status_response_bytes(SESSION_ID, counter)
        await server.wait_counter(CAR, "error_messages", 1)
        assert spy.snapshot()["error_messages"] == [(b"error", DEVICE_1)]
        assert spy.snapshot()["statuses"] == [(b"status", DEVICE_1)]


async def test_in_order_statuses_answered_in_order(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """§8.9 item 142: statuses 1, 2, 3 → responses 1, 2, 3."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        await connect_sequence(server, car, [DEVICE_1])
        for counter in (1, 2, 3):
            car.send_status(SESSION_ID, RUNNING, counter, DEVICE_1)
        await expect_status_responses(car, [1, 2, 3])
        await server.wait_counter(CAR, "statuses", 1 + 3)


async def test_out_of_order_statuses_released_in_counter_order(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 items 143, 158: after the baseline c, statuses c+2, c+3 are held (not answered, not
    forwarded); once c+1 arrives, c+1, c+2, c+3 are answered and forwarded in counter order.

    (The checklist's "2, 3, 1" assumes a preset baseline; here the first normal status sets it.)
    """
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, c, DEVICE_1, b"s0")
        await expect_status_responses(car, [c])
        car.send_status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"s2")
        car.send_status(SESSION_ID, RUNNING, c + 3, DEVICE_1, b"s3")
        checker = server.session(CAR).core.status_checker
        await server.wait_until(lambda: checker.held_counters() == [c + 2, c + 3])
        assert car.pending() == 0
        assert spy.snapshot()["statuses"] == [(b"s0", DEVICE_1)]
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"s1")
        await expect_status_responses(car, [c + 1, c + 2, c + 3])
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 4)
        assert [data for data, _ in spy.snapshot()["statuses"]] == [b"s0", b"s1", b"s2", b"s3"]
        assert server.session(CAR).state == CarState.RUNNING


async def test_status_with_foreign_session_id_ignored(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 item 144: "id"/c, "unknown_id"/c+1, "id"/c+1 → responses c and c+1 only."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, c, DEVICE_1, b"a")
        car.send_status("unknown_id", RUNNING, c + 1, DEVICE_1, b"foreign")
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"b")
        car.send_status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"c")  # sentinel: nothing in between
        await expect_status_responses(car, [c, c + 1, c + 2])
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 3)
        assert [data for data, _ in spy.snapshot()["statuses"]] == [b"a", b"b", b"c"]


async def test_foreign_session_status_neither_answered_nor_filling_a_gap(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.9 item 145: a status whose session id differs gets no StatusResponse and is logged.

    Closest observable form of "a released status whose session id differs": the foreign
    status carries exactly the missing counter, yet it is never released (it does not fill
    the gap) and never answered. It is logged (at INFO here; the checklist's WARNING comes
    from a reference code path where foreign statuses reach the order checker).
    """
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        c = normal.next_status_counter
        session = server.session(CAR)
        car.send_status(SESSION_ID, RUNNING, c, DEVICE_1)
        car.send_status(SESSION_ID, RUNNING, c + 2, DEVICE_1)
        car.send_status("unknown_id", RUNNING, c + 1, DEVICE_1)
        await expect_status_responses(car, [c])
        await server.wait_until(lambda: session.stats.ignored["foreign_session"] == 1)
        assert session.core.status_checker.held_counters() == [c + 2]
        assert car.pending() == 0
        assert any("different session id" in r.getMessage().lower() for r in caplog.records)
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1)
        await expect_status_responses(car, [c + 1, c + 2])


async def test_status_from_unconfigured_module(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§8.9 item 146: status of module 1001 (not configured) → WARNING "unknown module", no response."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, c, FOREIGN_MODULE_DEVICE, b"foreign")
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
        await expect_status_responses(car, [c + 1])
        assert logged(caplog, "from unknown module 1001", logging.WARNING)
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 1)
        assert spy.snapshot()["statuses"] == [(b"mine", DEVICE_1)]
        assert server.session(CAR).state == CarState.RUNNING


@pytest.mark.parametrize("state", [CONNECTING, RUNNING], ids=["connecting", "running"])
async def test_status_of_unsupported_device_type(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    state: ext.Status.DeviceState,
) -> None:
    """§8.9 items 147, 162: CONNECTING or RUNNING of a type the module does not support →
    WARNING "not supported", no response, not forwarded, not connected."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, state, c, UNSUPPORTED_DEVICE, b"unsupported")
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
        await expect_status_responses(car, [c + 1])
        assert logged(caplog, f"type {UNSUPPORTED_TYPE} is not supported by module 1000", logging.WARNING)
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 1)
        assert spy.snapshot()["statuses"] == [(b"mine", DEVICE_1)]
        assert spy.snapshot()["connected"] == []
        assert not server.session(CAR).registry.is_registered(UNSUPPORTED_DEVICE)


async def test_running_status_of_registered_device_forwarded_once(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 items 148, 153: a RUNNING status of the registered device is forwarded once (payload and
    device as sent) and answered."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, c, DEVICE_1, b'{"speed": 3}')
        await expect_status_responses(car, [c])
        await server.wait_counter(CAR, "statuses", 2)
        assert server.counters(CAR)["statuses"] == 2  # the first status + this one
        assert spy.snapshot()["statuses"] == [(b'{"speed": 3}', DEVICE_1)]


async def test_connecting_status_registers_new_device(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 items 149, 159: CONNECTING of a new supported device → device_connected (priority 0),
    registered, forwarded after the first device's status, answered."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        announced = NEW_DEVICE.with_priority(5)
        car.send_status(SESSION_ID, RUNNING, c, DEVICE_1, b"first device")
        car.send_status(SESSION_ID, CONNECTING, c + 1, announced, b"button")
        await expect_status_responses(car, [c, c + 1])
        assert server.session(CAR).registry.devices() == [DEVICE_1, NEW_DEVICE]
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 2)
        assert spy.snapshot()["statuses"] == [(b"first device", DEVICE_1), (b"button", announced)]
        connected = spy.snapshot()["connected"]
        assert connected == [NEW_DEVICE]
        assert connected[0].priority == 0
        assert server.counters(CAR)["connects"] == 2


async def test_running_status_of_unregistered_device(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§8.9 items 150, 160: RUNNING of a not-connected device → INFO "not connected", no response,
    not forwarded, not registered."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, c, NEW_DEVICE, b"button")
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
        await expect_status_responses(car, [c + 1])
        assert logged(caplog, "is not connected. Ignoring status.", logging.INFO)
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 1)
        assert spy.snapshot()["statuses"] == [(b"mine", DEVICE_1)]
        assert server.session(CAR).registry.devices() == [DEVICE_1]


async def test_disconnect_of_unregistered_device(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§8.9 item 151: DISCONNECT of a not-connected device → INFO "already disconnected", no response,
    no module call."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, DISCONNECT, c, NEW_DEVICE)
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
        await expect_status_responses(car, [c + 1])
        assert logged(caplog, "already disconnected", logging.INFO)
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 1)
        assert spy.snapshot()["disconnected"] == []
        assert server.session(CAR).state == CarState.RUNNING


async def test_disconnect_of_last_device_unregisters_then_resets(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§8.9 item 152 (+ §4.8.2 step 3): the connected device's DISCONNECT unregisters it
    (device_disconnected announced, once); it was the last one, so after the StatusResponse the
    session resets ("all devices disconnected")."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, DISCONNECT, c, DEVICE_1)
        await expect_status_responses(car, [c])
        await wait_for_reset(server, car)
        session = server.session(CAR)
        assert dict(session.stats.resets) == {"all_devices_disconnected": 1}
        assert logged(caplog, "All devices have been disconnected, restarting server.", logging.WARNING)
        assert len(session.registry) == 0
        assert spy.snapshot()["disconnected"] == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
        assert server.counters(CAR)["devices"] == 0


async def test_connecting_of_unsupported_type_after_running(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 item 154: RUNNING (c) of the registered device and CONNECTING (c+1) of an unsupported-type
    device of the same module → only the first is forwarded (and answered)."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, c, DEVICE_1, b"running")
        car.send_status(SESSION_ID, CONNECTING, c + 1, UNSUPPORTED_DEVICE, b"unsupported")
        car.send_status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"sentinel")
        await expect_status_responses(car, [c, c + 2])
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 2)
        assert [data for data, _ in spy.snapshot()["statuses"]] == [b"running", b"sentinel"]


async def test_statuses_of_disconnected_device_not_forwarded(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 item 155: after device 1's DISCONNECT, RUNNING statuses alternating between the devices →
    only device 2's two statuses reach the module (and are answered)."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, DISCONNECT, c, DEVICE_1, b"d1 bye")
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"d1 a")
        car.send_status(SESSION_ID, RUNNING, c + 2, DEVICE_2, b"d2 a")
        car.send_status(SESSION_ID, RUNNING, c + 3, DEVICE_1, b"d1 b")
        car.send_status(SESSION_ID, RUNNING, c + 4, DEVICE_2, b"d2 b")
        await expect_status_responses(car, [c, c + 2, c + 4])
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 3)
        assert spy.snapshot()["statuses"] == [(b"d1 bye", DEVICE_1), (b"d2 a", DEVICE_2), (b"d2 b", DEVICE_2)]
        assert server.session(CAR).state == CarState.RUNNING


async def test_device_reconnects_after_disconnect(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """§8.9 item 156: DISCONNECT then CONNECTING of device 1 and further RUNNING statuses → no failure,
    all answered, device 1 registered again."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        c = normal.next_status_counter
        car.send_status(SESSION_ID, DISCONNECT, c, DEVICE_1)
        car.send_status(SESSION_ID, CONNECTING, c + 1, DEVICE_1)
        car.send_status(SESSION_ID, RUNNING, c + 2, DEVICE_1)
        car.send_status(SESSION_ID, RUNNING, c + 3, DEVICE_2)
        await expect_status_responses(car, [c, c + 1, c + 2, c + 3])
        session = server.session(CAR)
        assert {device.key for device in session.registry.devices()} == {DEVICE_1.key, DEVICE_2.key}
        assert server.counters(CAR)["connects"] == 3
        assert server.counters(CAR)["disconnects"] == 1
        assert session.state == CarState.RUNNING
        assert not session.stats.resets


async def test_all_devices_disconnected_then_new_session_continues_command_counter(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 item 157 (+ §4.11): both devices DISCONNECT → reset; a new sequence "new_id" with first-status
    counters 2, 3 gets first commands 2, 3 (the counter is never reset) and its RUNNING status (4)
    reaches the module."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        assert normal.first_command_counters == (0, 1)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, DISCONNECT, c, DEVICE_1)
        car.send_status(SESSION_ID, DISCONNECT, c + 1, DEVICE_2)
        await expect_status_responses(car, [c, c + 1])
        await wait_for_reset(server, car)
        spy = install_spy(monkeypatch, server)
        second = await connect_sequence(
            server, car, [DEVICE_1, DEVICE_2], session_id="new_id", first_status_counter=2
        )
        assert second.first_command_counters == (2, 3)
        car.send_status("new_id", RUNNING, 4, DEVICE_1, b"after reconnect")
        await expect_status_responses(car, [4], session_id="new_id")
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 3)
        assert spy.snapshot()["statuses"][-1] == (b"after reconnect", DEVICE_1)


async def test_unfilled_gap_resets_and_next_session_works(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§8.9 item 164 (+ §4.10, §4.13.6): statuses c and c+2, nothing for longer than T → STATUS_TIMEOUT
    reset (the held c+2 is never forwarded); a new sequence "new_id" works and its RUNNING status
    reaches the module."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        sent_before = time.monotonic()  # the gap's timer starts after this (when c + 2 arrives)
        car.send_status(SESSION_ID, RUNNING, c, DEVICE_1, b"kept")
        car.send_status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"held")
        await expect_status_responses(car, [c])
        await wait_for_reset(server, car, timeout_s=T_S + 10.0)
        session = server.session(CAR)
        assert dict(session.stats.resets) == {"status_timeout": 1}
        assert time.monotonic() - sent_before >= T_S  # not before T (the exact T: core unit tests)
        assert logged(caplog, f"Status with counter {c + 1} is missing.", logging.WARNING)
        assert [data for data, _ in spy.snapshot()["statuses"]] == [b"kept"]
        await connect_sequence(server, car, [DEVICE_1], session_id="new_id")
        car.send_status("new_id", RUNNING, 2, DEVICE_1, b"new session")
        await expect_status_responses(car, [2], session_id="new_id")
        await server.wait_until(lambda: spy.snapshot()["statuses"][-1] == (b"new session", DEVICE_1))


async def test_empty_error_message_not_forwarded(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 item 163: an explicitly empty errorMessage is not forwarded; a non-empty one is, with its
    content."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, c, DEVICE_1, b"one", error_message=b"")
        await expect_status_responses(car, [c])
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 1)
        assert server.counters(CAR)["error_messages"] == 0
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"two", error_message=b"STATUS_ERROR text")
        await expect_status_responses(car, [c + 1])
        await server.wait_counter(CAR, "error_messages", 1)
        assert spy.snapshot()["error_messages"] == [(b"STATUS_ERROR text", DEVICE_1)]


async def test_status_in_error_state_ignored(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§4.8.2 step 2.3: a status in ERROR state → WARNING "unknown state", not forwarded, no response."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, ERROR, c, DEVICE_1, b"error state")
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
        await expect_status_responses(car, [c + 1])
        assert logged(caplog, f"unknown state: {int(ERROR)}", logging.WARNING)
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 1)
        assert spy.snapshot()["statuses"] == [(b"mine", DEVICE_1)]
        assert server.session(CAR).registry.devices() == [DEVICE_1]


async def test_connecting_of_device_refused_by_module(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§4.8.2 step 2.3 (CONNECTING, device_connected non-OK): not registered, not answered, ERROR logged."""
    caplog.set_level(logging.INFO, logger="external_server")
    refused = Device(EXAMPLE_MODULE, 0, "refused", "Refused")
    async with serve_car(mosquitto, tmp_path, module_config={"reject_roles": "refused"}) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        c = normal.next_status_counter
        car.send_status(SESSION_ID, CONNECTING, c, refused)
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1)
        await expect_status_responses(car, [c + 1])
        assert not server.session(CAR).registry.is_registered(refused)
        assert logged(caplog, "refused device", logging.ERROR)
        assert server.counters(CAR)["statuses"] == 1 + 1


async def test_connecting_of_registered_device_is_answered(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """design.md decision (protocol.md §10.2, §4.15 #2): a CONNECTING status of an already registered
    device is forwarded and answered (the reference leaves it unanswered); no second device_connected."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, CONNECTING, c, DEVICE_1, b"again")
        response = await car.expect("statusResponse", WAIT_S)
        assert response.SerializeToString() == status_response_bytes(SESSION_ID, c)
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 1)
        assert spy.snapshot()["statuses"] == [(b"again", DEVICE_1)]
        assert spy.snapshot()["connected"] == []
        assert server.session(CAR).registry.devices() == [DEVICE_1]


async def test_baseline_adopted_unconditionally_in_later_session(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """design.md decision (protocol.md §4.10, §10.6): the first normal status sets the baseline
    whatever its counter — even 0 in a later session (the reference would ignore it: 0 < E = 1)."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        car.send_status(SESSION_ID, DISCONNECT, normal.next_status_counter, DEVICE_1)
        await expect_status_responses(car, [normal.next_status_counter])
        await wait_for_reset(server, car)
        await connect_sequence(server, car, [DEVICE_1], session_id="second")
        car.send_status("second", RUNNING, 0, DEVICE_1)
        car.send_status("second", RUNNING, 1, DEVICE_1)
        await expect_status_responses(car, [0, 1], session_id="second")


async def test_duplicate_held_status_dropped(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """design.md decision (protocol.md §4.10 duplicates, §10.8): a second held status with the same
    counter is dropped with a WARNING (the reference crashes and resets); the first copy is
    released, forwarded and answered once."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, c, DEVICE_1, b"s0")
        car.send_status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"s2")
        car.send_status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"s2 again")
        await expect_status_responses(car, [c])
        session = server.session(CAR)
        await server.wait_until(lambda: session.stats.ignored["duplicate_status_counter"] == 1)
        assert logged(caplog, "duplicate", logging.WARNING)
        car.send_status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"s1")
        car.send_status(SESSION_ID, RUNNING, c + 3, DEVICE_1, b"s3")
        await expect_status_responses(car, [c + 1, c + 2, c + 3])
        await server.wait_until(lambda: len(spy.snapshot()["statuses"]) == 4)
        assert [data for data, _ in spy.snapshot()["statuses"]] == [b"s0", b"s1", b"s2", b"s3"]
        assert session.state == CarState.RUNNING
        assert not session.stats.resets


async def test_status_right_after_last_command_response_is_processed(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """protocol.md §4.8 note, §10.7 (design.md: process leftovers in order): a status sent right behind
    the last first-command response is answered without waiting for another message."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        car.send_connect(SESSION_ID, [DEVICE_1])
        await car.expect("connectResponse", WAIT_S)
        car.send_status(SESSION_ID, CONNECTING, 1, DEVICE_1)
        await expect_status_responses(car, [1])
        command = await car.expect("command", WAIT_S)
        car.send_command_response(SESSION_ID, command.command.messageCounter)
        car.send_status(SESSION_ID, RUNNING, 2, DEVICE_1)
        await expect_status_responses(car, [2])
        assert server.session(CAR).state == CarState.RUNNING


async def test_identity_ignores_name_and_priority(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.9: identity is (module, type, role): statuses carrying another name and priority belong to the
    registered device; forward_status and DISCONNECT's device_disconnected get the device exactly as
    carried by the status."""
    renamed = Device(DEVICE_1.module, DEVICE_1.device_type, DEVICE_1.role, "Renamed", 3)
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1, DEVICE_2])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, RUNNING, c, renamed, b"renamed")
        car.send_status(SESSION_ID, DISCONNECT, c + 1, renamed, b"bye")
        await expect_status_responses(car, [c, c + 1])
        await server.wait_until(lambda: server.session(CAR).registry.devices() == [DEVICE_2])
        snapshot = spy.snapshot()  # unregistered after device_disconnected returned: all recorded
        assert snapshot["statuses"] == [(b"renamed", renamed), (b"bye", renamed)]
        assert snapshot["disconnected"] == [(DISCONNECT_ANNOUNCED, renamed)]
        assert snapshot["disconnected"][0][1].priority == 3
        assert server.counters(CAR)["disconnects"] == 1


async def test_first_device_of_module_registered_again_discards_stale_commands(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """§4.8.2 step 2.3 (CONNECTING: the module's first registered device discards its buffered commands,
    fix 131bf52) with §4.8.3 step 5: after DEVICE_NOT_CONNECTED left module 1000 without a device, a
    command it produced is buffered; device 1's CONNECTING registers it again and drops that command,
    so the next command the car receives is a fresh one."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        counter = normal.next_command_counter
        session = server.session(CAR)
        server.inject_command(CAR, DEVICE_1, b"to be answered DEVICE_NOT_CONNECTED")
        command = await car.expect("command", WAIT_S)
        assert command.command.messageCounter == counter
        car.send_command_response(SESSION_ID, counter, ext.CommandResponse.DEVICE_NOT_CONNECTED)
        await server.wait_until(lambda: len(session.registry) == 0)
        server.inject_command(CAR, DEVICE_1, b"stale")
        queue = session.core.command_queues[EXAMPLE_MODULE]
        await server.wait_until(lambda: len(queue) == 1)  # buffered: no device of the module registered
        assert car.pending() == 0
        c = normal.next_status_counter
        car.send_status(SESSION_ID, CONNECTING, c, DEVICE_1, b"back")
        await expect_status_responses(car, [c])
        assert session.registry.devices() == [DEVICE_1]
        server.inject_command(CAR, DEVICE_1, b"fresh")
        fresh = await car.expect("command", WAIT_S)
        assert fresh.command.deviceCommand.commandData == b"fresh"
        assert fresh.command.messageCounter == counter + 1
        assert session.state == CarState.RUNNING


async def test_new_device_connecting_then_running(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.9 item 161: CONNECTING (c) then RUNNING (c+1) of a new device → both reach the module (3 statuses
    in total with the first device's first status) and both are answered."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        spy = install_spy(monkeypatch, server)
        c = normal.next_status_counter
        car.send_status(SESSION_ID, CONNECTING, c, NEW_DEVICE, b"connecting")
        car.send_status(SESSION_ID, RUNNING, c + 1, NEW_DEVICE, b"running")
        await expect_status_responses(car, [c, c + 1])
        await server.wait_counter(CAR, "statuses", 3)
        assert server.counters(CAR)["statuses"] == 3
        assert spy.snapshot()["statuses"] == [(b"connecting", NEW_DEVICE), (b"running", NEW_DEVICE)]
        assert server.session(CAR).registry.devices() == [DEVICE_1, NEW_DEVICE]
