"""Normal communication — Connect, session timer, broker loss (protocol.md §4.8.1, §4.8.4, §4.12–§4.14;
checklist §8.10 items 166–173).

Item 168 is STALE (the reference resets instead, §4.8.1) and has no test; item 169 describes a
reference internal that cannot happen here (skipped with the reason below). The exact timing of
the session timer S is covered by the session core's fake-clock unit tests; here the session timer
tests assert what a busy machine cannot break: which timer ended the session, that it did not end
before its deadline (times taken before the cause, so only lower bounds), and whether a message
moved the session's deadline (``session.core.session_deadline``), never an upper bound on a delay.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest
from external_server.device import Device
from external_server.modules.abi import DISCONNECT_TIMEOUT
from external_server.session.state import CarState
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import ServerUnderTest
from mosquitto_broker import MosquittoBroker
from sequence_helpers import (
    CAR,
    DEVICE_1,
    DEVICE_2,
    NEW_DEVICE,
    RUNNING,
    S_S,
    SESSION_ID,
    T_S,
    WAIT_S,
    car_records,
    connect_sequence,
    expect_status_responses,
    install_spy,
    logged,
    serve_car,
    wait_for_reset,
)

pytestmark = pytest.mark.broker

SILENCE_S = 0.3
"""How long the car stays quiet before the message that does (or does not) restart the session timer."""


def _already_logged_bytes(session_id: str) -> bytes:
    return ext.ExternalServer(
        connectResponse=ext.ConnectResponse(sessionId=session_id, type=ext.ConnectResponse.ALREADY_LOGGED)
    ).SerializeToString()


async def _wait_fresh_phase_a(server: ServerUnderTest, within_s: float = 0.5) -> None:
    """Wait until a run has just entered phase A, so a Connect sent now meets its T budget."""
    session = server.session(CAR)
    await server.wait_until(
        lambda: (
            session.state == CarState.CONNECTED
            and time.monotonic() - (session.stats.state_since or 0.0) < within_s
        ),
        15.0,
    )


async def test_connect_with_current_id_answered_already_logged(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.10 item 166: a Connect with the current id in RUNNING state → INFO "already existing
    session" and exactly ConnectResponse{id, ALREADY_LOGGED}; the session goes on unchanged."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        car.send_connect(SESSION_ID, [DEVICE_1, DEVICE_2])
        response = await car.expect("connectResponse", WAIT_S)
        assert response.SerializeToString() == _already_logged_bytes(SESSION_ID)
        assert logged(caplog, "already existing session", logging.INFO)
        session = server.session(CAR)
        assert session.registry.devices() == [DEVICE_1]
        assert session.state == CarState.RUNNING
        car.send_status(SESSION_ID, RUNNING, normal.next_status_counter, DEVICE_1)
        await expect_status_responses(car, [normal.next_status_counter])
        assert not session.stats.resets
        assert server.counters(CAR)["connects"] == 1


async def test_connect_with_other_id_resets_unanswered_and_is_dropped(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.10 item 167 (+ §4.8.1, §4.14 row 10): a Connect with another id in RUNNING state → no WARNING
    other than the reset itself, the Connect is not answered and not kept (the next phase A
    times out); a repeated Connect then starts a new session."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        await connect_sequence(server, car, [DEVICE_1])
        session = server.session(CAR)
        caplog.clear()
        car.send_connect("other", [DEVICE_1])
        await wait_for_reset(server, car)
        warnings = [r for r in car_records(caplog, logging.WARNING) if r.name == "external_server.car"]
        assert [r.getMessage() for r in warnings if "not matching current one" not in r.getMessage()] == []
        assert len(warnings) == 1
        assert "Session reset (new_session)" in warnings[0].getMessage()
        assert session.stats.resets["new_session"] == 1
        assert car.pending() == 0  # no ConnectResponse for the new id
        # The new Connect was discarded with the clean-up: the next phase A gets nothing.
        assert await car.receive_disconnect_notification(T_S * 2 + 2.0)
        assert session.stats.resets["no_connect"] >= 1
        assert car.pending() == 0
        await _wait_fresh_phase_a(server)
        await connect_sequence(server, car, [DEVICE_1], session_id="other")
        assert session.session_id == "other"


# §8.10 item 169 (an event signalled without a queued message) has no equivalent here: every received
# car message is its own event, so the "no message" error cannot arise (§4.14 row 16: practically
# unreachable). Its nearest observable behaviour, §4.8.4, is tested in test_normal_statuses.py.


async def test_message_of_unknown_type_ignored(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§4.8.4 and §2.1 (closest observable neighbour of item 169): an empty payload (no oneof member) →
    WARNING "unknown type", an unparsable payload → WARNING, both ignored; the session goes on."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        car.send(b"")
        car.send(b"\xff\xff\xff")
        car.send_status(SESSION_ID, RUNNING, normal.next_status_counter, DEVICE_1)
        await expect_status_responses(car, [normal.next_status_counter])
        assert logged(caplog, "Received message of unknown type. Ignoring.", logging.WARNING)
        assert logged(caplog, "not a valid ExternalClient", logging.WARNING)
        assert server.session(CAR).state == CarState.RUNNING


def _current_deadline(server: ServerUnderTest) -> float:
    deadline = server.session(CAR).core.session_deadline
    assert deadline is not None, "no session deadline: not in normal communication"
    return deadline


async def _wait_processed(server: ServerUnderTest, before: int) -> None:
    """Wait until the session took one more car message off its queue than ``before``."""
    stats = server.session(CAR).stats
    await server.wait_until(lambda: sum(stats.messages_in.values()) > before, WAIT_S, "message taken")


def _messages_in(server: ServerUnderTest) -> int:
    return sum(server.session(CAR).stats.messages_in.values())


async def test_session_timeout_without_messages(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§8.10 item 170 (+ §4.13.7): no message in normal communication → SESSION_TIMEOUT reset after S;
    clean-up tells the module device_disconnected(timeout) for every device, in registration order,
    with the stored copy (priority 0, §4.9) although the Connect announced priority 2."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        spy = install_spy(monkeypatch, server)
        await connect_sequence(server, car, [DEVICE_1.with_priority(2), DEVICE_2.with_priority(2)])
        deadline = _current_deadline(server)
        await wait_for_reset(server, car, timeout_s=S_S + 10.0)
        assert time.monotonic() >= deadline  # not before S of silence (the exact S: core unit tests)
        session = server.session(CAR)
        assert dict(session.stats.resets) == {"session_timeout": 1}
        assert logged(caplog, "Session timeout", logging.WARNING)
        assert spy.snapshot()["disconnected"] == [
            (DISCONNECT_TIMEOUT, DEVICE_1),
            (DISCONNECT_TIMEOUT, DEVICE_2),
        ]
        assert server.counters(CAR)["devices"] == 0


async def _send_refresh(car: CarClient, kind: str, counter: int) -> None:
    if kind == "status":
        car.send_status(SESSION_ID, RUNNING, counter, DEVICE_1)
        await expect_status_responses(car, [counter])
    elif kind == "ignored_status":  # released by the order checker, then ignored (device not connected)
        car.send_status(SESSION_ID, RUNNING, counter, NEW_DEVICE)
    else:  # a CommandResponse of the current session; nothing pending, so it releases nothing
        car.send_command_response(SESSION_ID, 99)


@pytest.mark.parametrize("kind", ["status", "ignored_status", "command_response"])
async def test_current_session_message_restarts_session_timer(
    mosquitto: MosquittoBroker, tmp_path: Path, kind: str
) -> None:
    """§8.10 item 171 (+ §4.12): a status (even one that is then ignored) or a command response with the
    current session id → the session deadline moves to S after that message; the timeout comes then,
    not before. The car stays silent for a moment first, so the new deadline is measurably later."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        first_deadline = _current_deadline(server)
        before = _messages_in(server)
        await asyncio.sleep(SILENCE_S)  # the scenario: a quiet moment before the refreshing message
        sent_at = time.monotonic()
        await _send_refresh(car, kind, normal.next_status_counter)
        await _wait_processed(server, before)
        refreshed = _current_deadline(server)
        assert refreshed >= first_deadline + SILENCE_S  # restarted from the message, not from RUNNING
        assert refreshed >= sent_at + S_S
        await wait_for_reset(server, car, timeout_s=S_S + 10.0)
        assert time.monotonic() >= refreshed  # not at the first deadline
        assert dict(server.session(CAR).stats.resets) == {"session_timeout": 1}


@pytest.mark.parametrize("kind", ["connect_same_id", "foreign_status", "foreign_command_response"])
async def test_other_messages_do_not_restart_session_timer(
    mosquitto: MosquittoBroker, tmp_path: Path, kind: str
) -> None:
    """§4.8.1 and §4.12: a Connect with the current id, and statuses / command responses of another
    session, do not restart the session timer: the deadline set when normal communication started
    stays, and the timeout comes then (not S after the message)."""
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        deadline = _current_deadline(server)
        before = _messages_in(server)
        await asyncio.sleep(SILENCE_S)  # the scenario: a quiet moment, so a restart would show
        if kind == "connect_same_id":
            car.send_connect(SESSION_ID, [DEVICE_1])
            assert (await car.expect("connectResponse", WAIT_S)).connectResponse.type == (
                ext.ConnectResponse.ALREADY_LOGGED
            )
        elif kind == "foreign_status":
            car.send_status("foreign", RUNNING, normal.next_status_counter, DEVICE_1)
        else:
            car.send_command_response("foreign", 0)
        await _wait_processed(server, before)
        assert server.session(CAR).state == CarState.RUNNING
        assert _current_deadline(server) == deadline  # not restarted by that message
        await wait_for_reset(server, car, timeout_s=S_S + 10.0)
        assert time.monotonic() >= deadline
        assert dict(server.session(CAR).stats.resets) == {"session_timeout": 1}


async def test_broker_loss_resets_session_and_reconnect_works(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§8.10 items 172, 173 (+ §4.14 row 15): the broker stops mid-session → "Unexpected disconnection"
    reset, state leaves RUNNING (ERROR, then waiting for the broker), the MQTT client is not
    connected, devices get device_disconnected(timeout); once the broker is back a new connect
    sequence works without restarting the server, and the command counter continues."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        spy = install_spy(monkeypatch, server)
        normal = await connect_sequence(server, car, [DEVICE_1])
        session = server.session(CAR)
        connection = server.server.connection
        assert connection is not None
        mosquitto.stop()
        await server.wait_until(lambda: session.stats.resets["broker_lost"] == 1, WAIT_S)
        assert session.state in {CarState.ERROR, CarState.UNINITIALIZED}
        assert not connection.connected
        assert logged(caplog, "Unexpected disconnection of MQTT client", logging.WARNING)
        await server.wait_until(lambda: spy.snapshot()["disconnected"] == [(DISCONNECT_TIMEOUT, DEVICE_1)])
        assert len(session.registry) == 0
        await server.wait_state(CAR, CarState.UNINITIALIZED, WAIT_S)  # waits for the broker, no busy loop

        mosquitto.start()
        assert await connection.wait_connected(15.0)
        assert await car.connection.wait_connected(15.0)
        await _wait_fresh_phase_a(server)
        second = await connect_sequence(server, car, [DEVICE_1], session_id="after_outage")
        assert second.first_command_counters == (normal.next_command_counter,)
        car.send_status("after_outage", RUNNING, 2, DEVICE_1, b"back")
        await expect_status_responses(car, [2], session_id="after_outage")
        await server.wait_until(lambda: spy.snapshot()["statuses"][-1] == (b"back", DEVICE_1))


async def test_publish_failure_in_normal_communication_logged_at_error(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§4.14 row 8 (with §8.10 item 173's broker loss): the broker goes away while the server is
    forwarding a status, so publishing its StatusResponse fails → session reset, logged at ERROR."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with serve_car(mosquitto, tmp_path) as (server, car):
        normal = await connect_sequence(server, car, [DEVICE_1])
        runtime = server.server.cars[CAR].runtimes[0]
        context = runtime.context
        original = context.forward_status
        entered, gate = threading.Event(), threading.Event()

        def gated_forward_status(data: bytes, device: Device) -> int:
            entered.set()
            gate.wait(10.0)  # holds the session inside the module call (on the module thread pool)
            return original(data, device)

        monkeypatch.setattr(context, "forward_status", gated_forward_status)
        connection = server.server.connection
        assert connection is not None
        session = server.session(CAR)
        try:
            car.send_status(SESSION_ID, RUNNING, normal.next_status_counter, DEVICE_1)
            await server.wait_until(entered.is_set)
            mosquitto.stop()
            await server.wait_until(lambda: not connection.connected)
        finally:
            gate.set()
        await server.wait_until(lambda: bool(session.stats.resets))
        assert dict(session.stats.resets) == {"publish_failed": 1}
        resets = [r for r in car_records(caplog, logging.WARNING) if "Session reset" in r.getMessage()]
        assert [r.levelno for r in resets] == [logging.ERROR]
