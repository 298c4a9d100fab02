"""The connect sequence on the pure session core: phases A–D, clean-up, resets, pause D, stop, broker.

Deterministic twins of tests/integration/test_connect_sequence.py (checklist docs/protocol.md §8.7
and §8.8, items 90–137): a :class:`CoreRig` plays the driver with a fake clock (time moves only
through ``rig.advance``) and a :class:`ScriptedModule`; the tests assert on what the core emits —
decoded publishes, the module calls it asked for, SessionEnded reasons and levels, stats, states and
armed deadlines. T = 1 s, S = 3 s, D = 0.5 s; the rig's clock starts at 100.0.

Item → unit test (integration test it mirrors in brackets when the name differs):

  90        test_new_core_is_uninitialized
  91        test_no_broker_no_run_until_it_is_up (the "Could not connect" log is the transport's)
  92        test_no_connect_fails_phase_a_after_t
  93        test_connect_without_first_status_fails_and_disconnects_devices
  94        test_missing_first_command_response_fails
  95, 104   test_full_sequence_reaches_initialized
  96        test_first_status_not_connecting_fails
  97        test_device_not_connected_first_response_keeps_device
  98        test_unsupported_type_device_in_connect_is_not_registered
  99, 115   test_three_devices_first_statuses_and_responses
  100, 122  test_first_statuses_in_other_order_than_connect
  101       test_first_command_responses_out_of_order
  102       test_missing_first_status_with_command_responses_fails
  103, 112  test_unsupported_devices_only_still_get_ok_then_no_devices_failure
  105       test_first_status_forwarded_once
  106       test_unsupported_type_first_status_fails_without_forwarding
  107       test_only_unsupported_listed_device_status_fails
  108       test_first_statuses_forwarded_in_arrival_order
  109       test_unlisted_device_first_status_forwarded_but_not_answered
  110       test_connect_without_devices_or_session_id_gets_no_response
  111, 113  test_connect_registers_supported_devices_and_answers_ok
  114       test_first_status_answered_with_its_counter
  116       test_only_listed_device_status_answered
  117       test_new_run_after_first_status_timeout_uses_new_session
  118       test_same_session_id_repeated_after_missing_first_response
  119       test_empty_first_command_is_server_generated
  120       test_queued_command_is_the_first_command,
            test_command_produced_in_device_connected_is_first_command
  121       test_only_oldest_of_three_queued_commands_is_used
  123       test_one_queued_command_per_device_in_queue_order
  124       test_queued_command_for_unregistered_device_is_dropped
  125       test_status_instead_of_first_command_response_then_silence_fails
  126       test_response_with_unmatched_counter_counts_but_command_times_out
  127       test_response_of_another_session_then_silence_fails
  128       test_first_status_payload_reaches_module
  129       test_second_connect_before_first_status_fails
  130       test_same_first_status_twice_forwarded_once
  131       test_commands_waiting_before_connect_are_discarded
  132       test_server_retries_after_missing_connect
  133       test_new_session_after_missing_first_status
  134       test_new_session_after_missing_first_command_response
  135       test_unknown_module_first_status_is_ignored
  136       test_same_session_id_accepted_after_session_timeout
  137       test_commands_posted_while_no_car_connected_do_not_reach_the_car

Integration tests whose unit twin has another name: test_new_car_server_is_uninitialized →
test_new_core_is_uninitialized; test_unreachable_broker_logs_could_not_connect_and_retries →
test_no_broker_no_run_until_it_is_up; test_no_connect_fails_phase_a_with_error_state →
test_no_connect_fails_phase_a_after_t; test_first_statuses_answered_with_their_counters →
test_first_status_answered_with_its_counter; test_command_queued_on_device_connect_is_the_first_command
→ test_command_produced_in_device_connected_is_first_command (and ..._survives_a_slow_drain).

The integration file's unnumbered tests (§4.4 steps 1–2, duplicate/refused devices in a Connect,
§4.5 steps 1, 4 and 6, §4.7 step 1, §10.7, the stale-command rule, the Connect kept during the pause)
have twins here under the same names; issue 11 item 2 (commands produced during ``device_connected``
are always seen by phase C) is test_command_produced_in_device_connected_is_first_command. Clean-up,
pause D, stop, broker loss and publish failures during the sequence are at the end of the file.
"""

from __future__ import annotations

import logging

import pytest
from external_server.abi_codes import DISCONNECT_TIMEOUT
from external_server.commands import QueuedCommand
from external_server.device import Device
from external_server.session.events import (
    CommandAck,
    DeviceConnected,
    DeviceDisconnected,
    DrainCommands,
    ForwardStatus,
    IsDeviceTypeSupported,
    ModuleCommands,
)
from external_server.session.state import CarState
from external_server.wire import ExternalProtocol_pb2 as ext
from support.session_core import (
    MODULE,
    CoreRig,
    ScriptedModule,
    kinds,
    logged,
    reset_record,
)

T = 1.0
S = 3.0
D = 0.5
START = 100.0

A = Device(MODULE, 0, "test", "T")
B = Device(MODULE, 0, "second", "B")
C = Device(MODULE, 0, "third", "C")
UNSUPPORTED_TYPE = Device(MODULE, 123456, "odd", "U")
UNKNOWN_MODULE = Device(1100, 0, "foreign", "F")

CONNECTING = ext.Status.CONNECTING
RUNNING = ext.Status.RUNNING
DISCONNECT = ext.Status.DISCONNECT


def connect_phase(rig: CoreRig, session_id: str, devices: list[Device]) -> None:
    """Send the Connect and take the ConnectResponse OK it must get."""
    rig.connect(session_id, devices)
    out = rig.take()
    assert kinds(out) == ["connectResponse"]
    assert out[0].connectResponse.sessionId == session_id
    assert out[0].connectResponse.type == ext.ConnectResponse.OK


def status_counters(out: list[ext.ExternalServer]) -> list[int]:
    return [m.statusResponse.messageCounter for m in out if m.WhichOneof("MessageType") == "statusResponse"]


def commands_of(out: list[ext.ExternalServer]) -> list[ext.Command]:
    return [m.command for m in out if m.WhichOneof("MessageType") == "command"]


def keys(devices: list[Device]) -> list[tuple[int, int, str]]:
    return [device.key for device in devices]


def queued(device: Device, data: bytes) -> QueuedCommand:
    return QueuedCommand(data, device)


# --------------------------------------------------------------------------------------
# §8.7 — initial state and broker
# --------------------------------------------------------------------------------------


def test_new_core_is_uninitialized() -> None:
    """Checklist item 90 (docs/protocol.md §4.2, §4.3): a new session without the broker has no
    registered device, session id "", state UNINITIALIZED, publishes nothing, calls no module and arms
    no deadline. (Module creation and the read-only ``state`` belong to the driver / the reference.)"""
    rig = CoreRig(broker_connected=False)
    assert rig.core.state == CarState.UNINITIALIZED
    assert rig.states == [CarState.UNINITIALIZED]
    assert rig.core.session_id == ""
    assert rig.core.registry.devices() == []
    assert rig.take() == []
    assert rig.module.calls == []
    assert rig.armed is None
    assert sum(rig.core.stats.resets.values()) == 0


def test_no_broker_no_run_until_it_is_up() -> None:
    """Checklist item 91 (docs/protocol.md §4.3, §4.14 row 1): without a broker no run starts — the
    core stays UNINITIALIZED however long it waits (no reset, no notification, no deadline); once the
    broker is up the run begins (CONNECTED, phase A deadline armed at now + T). The "Could not
    connect" WARNING is logged by the shared connection, not by the session core."""
    rig = CoreRig(broker_connected=False)
    rig.advance(10 * T)
    assert rig.core.state == CarState.UNINITIALIZED
    assert rig.resets == [] and rig.notifications == 0 and rig.armed is None
    rig.broker(True)
    assert rig.states == [CarState.UNINITIALIZED, CarState.CONNECTED]
    assert rig.armed == rig.now + T


# --------------------------------------------------------------------------------------
# §8.8 — phase A (Connect)
# --------------------------------------------------------------------------------------


def test_no_connect_fails_phase_a_after_t(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 92 (docs/protocol.md §4.4 step 3, §4.14 row 2, §4.3): with a broker but no Connect
    the run fails exactly T after phase A began (WARNING "Connect message has not been received"),
    state ERROR, only the disconnect notification goes out, and after the pause D a new run starts
    (UNINITIALIZED → CONNECTED)."""
    rig = CoreRig()
    assert rig.core.state == CarState.CONNECTED
    assert rig.armed == START + T
    rig.advance(T / 2)
    assert rig.resets == []
    rig.advance(T / 2)
    assert rig.reset_reasons() == ["no_connect"]
    assert rig.resets[0].level == logging.WARNING
    assert rig.states[-1] == CarState.ERROR
    assert rig.notifications == 1
    assert rig.take() == []
    assert rig.core.session_id == ""
    record = reset_record(caplog.records, "no_connect")
    assert record.levelno == logging.WARNING
    assert "Connect message has not been received" in record.getMessage()
    assert rig.armed == START + T + D  # the pause
    rig.advance(D)
    assert rig.states[-3:] == [CarState.ERROR, CarState.UNINITIALIZED, CarState.CONNECTED]
    assert rig.armed == START + T + D + T


def test_phase_a_discards_non_connect_messages(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.4 step 2 and §4.12 (phase A row), §2.1: statuses, command responses, empty
    and undecodable payloads before the Connect are discarded (INFO / WARNING) without ending the run;
    the Connect that follows is accepted in the same run."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    rig.status("old", RUNNING, 7, A)
    rig.command_response("old", 3)
    rig.send_raw(b"")
    rig.send_raw(b"\x0a\x05ab")  # field 1 announces 5 bytes, only 2 follow: undecodable
    connect_phase(rig, "id", [A])
    assert rig.resets == []
    assert logged(caplog.records, "Discarding status message while waiting for connect.", logging.INFO)
    assert logged(
        caplog.records, "Discarding command_response message while waiting for connect.", logging.INFO
    )
    assert logged(caplog.records, "not a valid ExternalClient", logging.WARNING)
    assert rig.core.registry.devices() == [A]
    assert rig.module.forwarded() == []


def test_phase_a_budget_holds_while_other_messages_keep_arriving() -> None:
    """docs/protocol.md §4.4 step 1: the phase A budget T is checked after each discarded message,
    so a car that keeps sending statuses but no Connect is reset at the first discard after T (here
    1.5 T), not later — and not at T, because each read waits up to T."""
    rig = CoreRig()
    rig.advance(0.75 * T)
    rig.status("spam", RUNNING, 1, A)
    rig.advance(0.75 * T)  # now 1.5 T after the start, the second read's deadline is 1.75 T
    assert rig.resets == []
    rig.status("spam", RUNNING, 2, A)
    assert rig.reset_reasons() == ["no_connect"]
    assert rig.now == START + 1.5 * T
    assert rig.module.forwarded() == []


@pytest.mark.parametrize(
    ("session_id", "devices"),
    [pytest.param("id", [], id="no-devices"), pytest.param("", [A], id="empty-session-id")],
)
def test_connect_without_devices_or_session_id_gets_no_response(
    caplog: pytest.LogCaptureFixture, session_id: str, devices: list[Device]
) -> None:
    """Checklist item 110 (docs/protocol.md §4.4 steps 4–5, §4.14 row 3): a Connect with an empty device
    list (or an empty session id) registers nothing, gets no ConnectResponse and fails the run at once
    (WARNING)."""
    rig = CoreRig()
    rig.connect(session_id, devices)
    assert rig.reset_reasons() == ["invalid_connect"]
    assert rig.now == START
    assert rig.take() == []
    assert rig.module.connected() == []
    assert rig.core.registry.devices() == []
    assert rig.core.stats.sessions_started == 0
    assert reset_record(caplog.records, "invalid_connect").levelno == logging.WARNING


@pytest.mark.parametrize("devices", [pytest.param([A], id="one"), pytest.param([A, B], id="two")])
def test_connect_registers_supported_devices_and_answers_ok(devices: list[Device]) -> None:
    """Checklist items 111 and 113 (docs/protocol.md §4.4 step 6, §2.4): supported devices are
    registered in Connect order (``device_connected`` with priority 0) and exactly
    ``ConnectResponse{sessionId:"id", OK}`` is published."""
    rig = CoreRig()
    rig.connect("id", [device.with_priority(4) for device in devices])
    out = rig.take()
    assert [message.SerializeToString() for message in out] == [bytes.fromhex("0a040a026964")]
    assert rig.core.registry.devices() == devices
    assert rig.module.connected() == devices
    assert all(device.priority == 0 for device in rig.module.connected())
    assert rig.core.session_id == "id"
    assert rig.core.stats.sessions_started == 1


@pytest.mark.parametrize(
    "device",
    [
        pytest.param(Device(MODULE, 1251, "odd", "U"), id="unsupported-type"),
        pytest.param(Device(1100, 0, "x"), id="unconfigured-module"),
    ],
)
def test_unsupported_devices_only_still_get_ok_then_no_devices_failure(
    caplog: pytest.LogCaptureFixture, device: Device
) -> None:
    """Checklist items 112 and 103 (docs/protocol.md §4.4 step 6, §4.6 step 1, §4.14 row 7): a device of
    an unsupported type (1251) or of an unconfigured module (1100) is not registered, the car still
    gets ConnectResponse OK, and phase C then fails at once with "All devices have been disconnected"
    (no StatusResponse, no Command)."""
    rig = CoreRig()
    connect_phase(rig, "id", [device])
    assert rig.reset_reasons() == ["no_devices"]
    assert rig.now == START
    assert rig.take() == []
    assert rig.module.connected() == []
    assert logged(caplog.records, "Ignoring device", logging.WARNING)
    record = reset_record(caplog.records, "no_devices")
    assert "All devices have been disconnected" in record.getMessage()
    assert record.levelno == logging.WARNING
    if device.module == MODULE:  # the configured module was asked; an unknown one cannot be
        assert rig.module.named(IsDeviceTypeSupported) == [IsDeviceTypeSupported(1251)]
    else:
        assert rig.module.calls == []


def test_duplicate_device_in_connect_is_registered_once() -> None:
    """docs/protocol.md §4.4 step 6 and §4.9: a device listed twice in the Connect (same
    module/type/role, another name) is registered once, with the name first seen; one first status
    completes phase B and the one first command carries that name."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, Device(MODULE, 0, "test", "other name")])
    assert rig.core.registry.devices() == [A]
    assert rig.module.connected() == [A]
    rig.status("id", CONNECTING, 1, A)
    out = rig.take()
    assert status_counters(out) == [1]
    assert [command.deviceCommand.device.deviceName for command in commands_of(out)] == ["T"]


def test_device_refused_by_module_is_not_registered(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.4 step 6 and §4.14 (module return codes): a device whose ``device_connected``
    returns non-OK is logged at ERROR and not registered; the others are, and the sequence completes
    with one command for the registered device only."""
    refused = Device(MODULE, 0, "refused", "R")
    rig = CoreRig(modules={MODULE: ScriptedModule(refused_roles={"refused"})})
    connect_phase(rig, "id", [refused, A])
    assert rig.module.connected() == [refused, A]
    assert rig.core.registry.devices() == [A]
    assert logged(caplog.records, "refused device", logging.ERROR)
    assert rig.core.stats.module_errors["device_connected"] == 1
    rig.status("id", CONNECTING, 1, A)
    out = rig.take()
    assert status_counters(out) == [1]
    commands = commands_of(out)
    assert [command.deviceCommand.device.deviceRole for command in commands] == ["test"]
    rig.command_response("id", commands[0].messageCounter)
    assert rig.core.state == CarState.RUNNING


# --------------------------------------------------------------------------------------
# §8.8 — phase B (first statuses)
# --------------------------------------------------------------------------------------


def test_connect_without_first_status_fails_and_disconnects_devices(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 93 (docs/protocol.md §4.5 step 1, §4.13, §4.14 row 4): a Connect but no first
    status → the run fails T after the Connect (WARNING "First status from device has not been
    received"), state ERROR (never INITIALIZED), each registered device gets
    ``device_disconnected(timeout)`` in the clean-up, in registration order, and the registry is
    emptied; nothing but the ConnectResponse reaches the car."""
    rig = CoreRig()
    rig.advance(0.25)
    start = len(rig.states)
    connect_phase(rig, "id", [A, B])
    rig.advance(T - 0.125)
    assert rig.resets == []
    rig.advance(0.125)
    assert rig.reset_reasons() == ["first_status"]
    assert rig.now == START + 0.25 + T
    assert CarState.ERROR in rig.states_since(start)
    assert CarState.INITIALIZED not in rig.states_since(start)
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, A), (DISCONNECT_TIMEOUT, B)]
    assert rig.core.registry.devices() == []
    assert rig.take() == []
    record = reset_record(caplog.records, "first_status")
    assert record.levelno == logging.WARNING
    assert "First status from device has not been received" in record.getMessage()


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(ext.Status.DISCONNECT, id="DISCONNECT"),
        pytest.param(ext.Status.RUNNING, id="RUNNING"),
        pytest.param(ext.Status.ERROR, id="ERROR"),
    ],
)
def test_first_status_not_connecting_fails(
    caplog: pytest.LogCaptureFixture, state: ext.Status.DeviceState
) -> None:
    """Checklist item 96 (docs/protocol.md §4.5 step 5, §4.14 row 5): a first status in DISCONNECT (also
    RUNNING, ERROR) state fails the run at once: ERROR log "must contain CONNECTING state", state
    ERROR, no StatusResponse, nothing forwarded. (CONNECTING is accepted: see the happy paths.)"""
    rig = CoreRig()
    start = len(rig.states)
    connect_phase(rig, "id", [A])
    rig.status("id", state, 1, A)
    assert rig.reset_reasons() == ["first_status"]
    assert rig.now == START
    assert rig.take() == []
    assert CarState.ERROR in rig.states_since(start)
    assert rig.module.forwarded() == []
    assert logged(caplog.records, "must contain CONNECTING state", logging.ERROR)
    assert reset_record(caplog.records, "first_status").levelno == logging.WARNING


def test_first_status_answered_with_its_counter() -> None:
    """Checklist item 114 (docs/protocol.md §4.5 step 6, §2.4): Connect + one CONNECTING status with
    counter 0 → the car receives ConnectResponse and then exactly ``StatusResponse{id, OK, 0}``."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 0, A, b"{}")
    out = rig.take()
    assert kinds(out) == ["statusResponse", "command"]
    assert out[0].SerializeToString() == bytes.fromhex("12040a026964")


@pytest.mark.parametrize(
    "counters", [pytest.param([0, 1, 2], id="0-1-2"), pytest.param([0, 1, 1], id="0-1-1-duplicate")]
)
def test_three_devices_first_statuses_and_responses(counters: list[int]) -> None:
    """Checklist items 115 and 99 (docs/protocol.md §4.5: first-status counters are not checked): three
    supported devices, first statuses with counters 0,1,2 (or 0,1,1) → StatusResponses with the same
    counters, then commands 0,1,2; responses 0,1,2 → all registered, INITIALIZED then RUNNING."""
    rig = CoreRig()
    start = len(rig.states)
    connect_phase(rig, "id", [A, B, C])
    for counter, device in zip(counters, [A, B, C], strict=True):
        rig.status("id", CONNECTING, counter, device)
    out = rig.take()
    assert kinds(out) == ["statusResponse"] * 3 + ["command"] * 3
    assert status_counters(out) == counters
    commands = commands_of(out)
    assert [command.messageCounter for command in commands] == [0, 1, 2]
    for counter in (0, 1, 2):
        rig.command_response("id", counter)
    assert rig.states_since(start)[-2:] == [CarState.INITIALIZED, CarState.RUNNING]
    assert rig.core.registry.devices() == [A, B, C]


def test_first_statuses_in_other_order_than_connect() -> None:
    """Checklist items 100 and 122 (docs/protocol.md §4.5, §4.6 steps 4–5): first statuses arriving in
    another order than the Connect list complete the sequence; with empty module queues the three
    first commands are empty and follow the registration (Connect) order with counters 0,1,2."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, B, C])
    for counter, device in [(1, C), (2, A), (3, B)]:
        rig.status("id", CONNECTING, counter, device)
    out = rig.take()
    assert status_counters(out) == [1, 2, 3]
    commands = commands_of(out)
    assert [command.deviceCommand.device.deviceRole for command in commands] == ["test", "second", "third"]
    assert [command.messageCounter for command in commands] == [0, 1, 2]
    assert all(command.deviceCommand.commandData == b"" for command in commands)
    for command in commands:
        rig.command_response("id", command.messageCounter)
    assert CarState.INITIALIZED in rig.states
    assert rig.core.state == CarState.RUNNING


def test_missing_first_status_with_command_responses_fails() -> None:
    """Checklist item 102 (docs/protocol.md §4.5 step 1): three devices but only two first statuses,
    then command responses → the non-Status message fails phase B at once (not after T); two
    StatusResponses were sent, no Command, never INITIALIZED."""
    rig = CoreRig()
    start = len(rig.states)
    connect_phase(rig, "id", [A, B, C])
    rig.status("id", CONNECTING, 1, A)
    rig.status("id", CONNECTING, 2, B)
    assert status_counters(rig.take()) == [1, 2]
    rig.command_response("id", 0)
    assert rig.reset_reasons() == ["first_status"]
    assert rig.now == START
    assert rig.take() == []
    assert CarState.INITIALIZED not in rig.states_since(start)
    assert rig.module.forwarded() == []


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            ext.ExternalClient(commandResponse=ext.CommandResponse(sessionId="id")), id="command-response"
        ),
        pytest.param(ext.ExternalClient(), id="empty-message"),
        pytest.param(ext.ExternalClient(connect=ext.Connect(sessionId="other")), id="connect"),
    ],
)
def test_non_status_in_phase_b_fails(message: ext.ExternalClient) -> None:
    """docs/protocol.md §4.5 step 1, §4.12 (phase B row) and §4.14 row 4: a CommandResponse, an empty
    message or a Connect where a first status is expected fails the run at once; nothing is
    forwarded or answered."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.send(message)
    assert rig.reset_reasons() == ["first_status"]
    assert rig.now == START
    assert rig.take() == []
    assert rig.module.forwarded() == []


def test_phase_b_ignores_status_of_another_session(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.5 step 4 and §4.12 (phase B row): a first status with another session id is
    ignored (INFO), not answered, not counted and not forwarded; the right one then completes B."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("other", CONNECTING, 5, A, b"foreign")
    assert rig.take() == []
    rig.status("id", CONNECTING, 1, A, b"mine")
    out = rig.take()
    assert status_counters(out) == [1]
    assert len(commands_of(out)) == 1
    assert rig.module.forwarded() == [(b"mine", A)]
    assert logged(caplog.records, "Ignoring status with different session ID 'other'", logging.INFO)


@pytest.mark.parametrize(
    "error_message",
    [pytest.param(b"failure", id="error-message"), pytest.param(b"", id="empty-error-message")],
)
def test_first_status_forwarded_once(error_message: bytes) -> None:
    """Checklist item 105 (docs/protocol.md §4.5 step 8): the registered device's first status is
    forwarded exactly once — after its StatusResponse and before the first command is published —
    with its error message only when that is non-empty."""
    rig = CoreRig()
    rig.hold_calls = lambda call: isinstance(call.call, ForwardStatus)
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A, b"{}", error_message)
    assert kinds(rig.take()) == ["statusResponse"]  # the command waits for the forwarding
    assert [held.call for held in rig.held] == [ForwardStatus(b"{}", error_message, A)]
    rig.hold_calls = lambda call: False
    rig.release_held()
    commands = commands_of(rig.take())
    assert len(commands) == 1
    rig.command_response("id", commands[0].messageCounter)
    assert rig.core.state == CarState.RUNNING
    assert rig.module.forwarded() == [(b"{}", A)]
    assert rig.module.forwarded_errors() == ([(error_message, A)] if error_message else [])


def test_unsupported_type_first_status_fails_without_forwarding(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 106 (docs/protocol.md §4.5 steps 1 and 3): a first status from a device of an
    unsupported type, then nothing → it is ignored (WARNING), not forwarded, and the phase fails when
    the next read (at most T) ends: T after the ignored status."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.advance(0.5)
    rig.status("id", CONNECTING, 1, UNSUPPORTED_TYPE)
    assert logged(caplog.records, "type not supported", logging.WARNING)
    assert rig.armed == rig.now + T
    rig.advance(T - 0.125)
    assert rig.resets == []
    rig.advance(0.125)
    assert rig.reset_reasons() == ["first_status"]
    assert rig.now == START + 0.5 + T
    assert rig.take() == []
    assert rig.module.forwarded() == []


def test_only_unsupported_listed_device_status_fails() -> None:
    """Checklist item 107 (docs/protocol.md §4.5 step 3): the Connect lists a supported and an
    unsupported-type device, only the unsupported device's status arrives → nothing forwarded,
    phase B fails after T."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, UNSUPPORTED_TYPE])
    assert rig.core.registry.devices() == [A]
    rig.status("id", CONNECTING, 1, UNSUPPORTED_TYPE)
    assert rig.resets == []
    rig.advance(T)
    assert rig.reset_reasons() == ["first_status"]
    assert rig.take() == []
    assert rig.module.forwarded() == []


def test_first_statuses_forwarded_in_arrival_order() -> None:
    """Checklist item 108 (docs/protocol.md §4.5 step 8): three registered devices whose first statuses
    arrive as 1,3,2 are forwarded in that arrival order, all after the last StatusResponse."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, B, C])
    rig.status("id", CONNECTING, 1, A, b"status-1")
    rig.status("id", CONNECTING, 2, C, b"status-3")
    assert rig.module.forwarded() == []  # nothing before phase B is done
    rig.status("id", CONNECTING, 3, B, b"status-2")
    assert rig.module.forwarded() == [(b"status-1", A), (b"status-3", C), (b"status-2", B)]


def test_unlisted_device_first_status_forwarded_but_not_answered() -> None:
    """Checklist item 109 (docs/protocol.md §4.5 steps 7–8): a CONNECTING first status of a supported
    device missing from the Connect, arriving between two listed ones, is forwarded in its arrival
    position but not answered (StatusResponses 1 and 3 only) and not registered."""
    rig = CoreRig()
    connect_phase(rig, "id", [C, A])
    rig.status("id", CONNECTING, 1, A, b"a")
    rig.status("id", CONNECTING, 2, B, b"b")
    rig.status("id", CONNECTING, 3, C, b"c")
    out = rig.take()
    assert status_counters(out) == [1, 3]
    assert rig.module.forwarded() == [(b"a", A), (b"b", B), (b"c", C)]
    assert rig.core.registry.devices() == [C, A]
    for command in commands_of(out):
        rig.command_response("id", command.messageCounter)
    assert rig.core.state == CarState.RUNNING
    assert rig.take() == []


@pytest.mark.parametrize("unlisted_first", [False, True], ids=["listed-first", "unlisted-first"])
def test_only_listed_device_status_answered(unlisted_first: bool) -> None:
    """Checklist item 116 (docs/protocol.md §4.5 steps 6–7, §4.7 step 1): Connect with device A;
    statuses from A (counter 0) and from unlisted device B (counter 1) → only
    ``StatusResponse{…, 0}`` is published, whether B's status is seen in phase B or skipped in D."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    statuses = [(0, A), (1, B)]
    for counter, device in reversed(statuses) if unlisted_first else statuses:
        rig.status("id", CONNECTING, counter, device)
    out = rig.take()
    assert status_counters(out) == [0]
    commands = commands_of(out)
    rig.command_response("id", commands[0].messageCounter)
    assert rig.core.state == CarState.RUNNING
    assert rig.take() == []
    assert rig.core.registry.devices() == [A]


def test_unknown_module_first_status_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 135 (docs/protocol.md §4.5 step 2, §10.8: ignored instead of failing): Connect with
    a supported device and a device of an unknown module, statuses for both (the unknown one first,
    so phase B sees it) and two responses → the unknown module's status is ignored (WARNING), only
    the supported device's status reaches the module, and the run goes on."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, UNKNOWN_MODULE])
    rig.status("id", CONNECTING, 1, UNKNOWN_MODULE)
    rig.status("id", CONNECTING, 2, A)
    out = rig.take()
    assert status_counters(out) == [2]
    commands = commands_of(out)
    rig.command_response("id", commands[0].messageCounter)
    rig.command_response("id", commands[0].messageCounter + 1)
    assert rig.core.state == CarState.RUNNING
    assert rig.resets == []
    assert rig.module.forwarded() == [(b"", A)]
    assert rig.core.registry.devices() == [A]
    assert logged(caplog.records, "unknown module 1100", logging.WARNING)


def test_same_first_status_twice_forwarded_once() -> None:
    """Checklist item 130 (docs/protocol.md §4.5, §4.7 step 1): the same first status sent twice (one
    device) → it reaches the module once (the duplicate arrives in phase D and is skipped) and the
    sequence still completes."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A, b"{}")
    rig.status("id", CONNECTING, 1, A, b"{}")
    out = rig.take()
    assert status_counters(out) == [1]
    rig.command_response("id", commands_of(out)[0].messageCounter)
    assert rig.core.state == CarState.RUNNING
    assert rig.module.forwarded() == [(b"{}", A)]
    assert rig.take() == []


def test_duplicate_first_status_counts_in_phase_b() -> None:
    """docs/protocol.md §4.5 step 6 (companion of item 130): duplicates are not detected in phase B —
    with two registered devices, A's first status sent twice is answered twice and completes phase B
    without B's status; both copies are forwarded and both devices get a first command."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, B])
    rig.status("id", CONNECTING, 1, A)
    rig.status("id", CONNECTING, 1, A)
    out = rig.take()
    assert status_counters(out) == [1, 1]
    assert len(commands_of(out)) == 2
    assert rig.module.forwarded() == [(b"", A), (b"", A)]


def test_second_connect_before_first_status_fails() -> None:
    """Checklist item 129 (docs/protocol.md §4.12 phase B row, §4.13): two Connects with the same id
    before the first status → phase B fails at once on the second Connect; the status sent behind it
    is discarded by the clean-up, so it never reaches the module and the next phase A times out."""
    rig = CoreRig()
    rig.hold_calls = lambda call: isinstance(call.call, DeviceConnected)
    rig.connect("id", [A])
    rig.connect("id", [A])  # both arrive while phase A is still busy with the first
    rig.status("id", CONNECTING, 1, A)
    rig.hold_calls = lambda call: False
    rig.release_held()
    assert kinds(rig.take()) == ["connectResponse"]
    assert rig.reset_reasons() == ["first_status"]
    rig.advance(D + T)
    assert rig.reset_reasons() == ["first_status", "no_connect"]
    assert rig.module.forwarded() == []
    assert rig.take() == []


# --------------------------------------------------------------------------------------
# §8.8 — phases C and D (first commands and their responses)
# --------------------------------------------------------------------------------------


def test_full_sequence_reaches_initialized() -> None:
    """Checklist items 95 and 104 (docs/protocol.md §4.6, §4.7, §4.3): Connect + CONNECTING status +
    CommandResponse OK → state INITIALIZED, then RUNNING; on a fresh core the one first command has
    counter 0 and empty data, and the device is registered; the session timer S is armed."""
    rig = CoreRig()
    start = len(rig.states)
    commands = rig.run_sequence("id", [A])
    assert len(commands) == 1
    assert commands[0].messageCounter == 0
    assert commands[0].deviceCommand.commandData == b""
    assert rig.states_since(start) == [CarState.INITIALIZED, CarState.RUNNING]
    assert rig.core.registry.devices() == [A]
    assert rig.resets == []
    assert rig.armed == START + S


def test_missing_first_command_response_fails(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 94 (docs/protocol.md §4.7 step 1, §4.14 row 9, §4.13): Connect + CONNECTING status
    but no command response → the run fails T after the command was sent (WARNING), state ERROR,
    never INITIALIZED; the status had been forwarded and the device is disconnected (timeout) in the
    clean-up."""
    rig = CoreRig()
    start = len(rig.states)
    connect_phase(rig, "id", [A])
    rig.advance(0.25)
    rig.status("id", CONNECTING, 1, A)
    assert kinds(rig.take()) == ["statusResponse", "command"]
    assert rig.armed == START + 0.25 + T
    rig.advance(T / 2)
    assert rig.resets == []
    rig.advance(T / 2)
    assert rig.reset_reasons() == ["first_command_response"]
    assert CarState.ERROR in rig.states_since(start)
    assert CarState.INITIALIZED not in rig.states_since(start)
    assert rig.module.forwarded() == [(b"", A)]
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, A)]
    assert reset_record(caplog.records, "first_command_response").levelno == logging.WARNING


def test_status_instead_of_first_command_response_then_silence_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Checklist item 125 (docs/protocol.md §4.7 step 1): while waiting for a first command response a
    status is skipped (INFO "Expected command response, received status. Skipping.") and does not
    count; with no response after it the phase fails when the next read (at most T) ends."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A)
    rig.take()
    rig.advance(0.5)
    rig.status("id", RUNNING, 2, A)
    assert logged(caplog.records, "Expected command response, received status. Skipping.", logging.INFO)
    rig.advance(T - 0.125)
    assert rig.resets == []
    rig.advance(0.125)
    assert rig.reset_reasons() == ["first_command_response"]
    assert rig.now == START + 0.5 + T
    assert rig.take() == []
    assert rig.module.forwarded() == [(b"", A)]


def test_phase_d_skips_status_and_empty_messages() -> None:
    """docs/protocol.md §4.7 step 1 and §4.12 (phase D row): a status and an empty message while waiting
    for the first command response are skipped; the response that follows completes the sequence."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A)
    commands = commands_of(rig.take())
    rig.status("id", RUNNING, 2, A)
    rig.send_raw(b"")
    rig.command_response("id", commands[0].messageCounter)
    assert rig.core.state == CarState.RUNNING
    assert rig.resets == []
    assert rig.take() == []  # the skipped status is gone, not answered later


def test_device_not_connected_first_response_keeps_device() -> None:
    """Checklist item 97 (docs/protocol.md §4.7 step 2): a first CommandResponse of type
    DEVICE_NOT_CONNECTED still completes the sequence (INITIALIZED), the device stays registered (no
    ``device_disconnected``) and its next RUNNING status is answered."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A)
    commands = commands_of(rig.take())
    rig.command_response("id", commands[0].messageCounter, ext.CommandResponse.DEVICE_NOT_CONNECTED)
    assert CarState.INITIALIZED in rig.states
    assert rig.core.state == CarState.RUNNING
    assert rig.core.registry.devices() == [A]
    assert rig.module.disconnected() == []
    rig.status("id", RUNNING, 2, A)
    assert status_counters(rig.take()) == [2]


def test_unsupported_type_device_in_connect_is_not_registered() -> None:
    """Checklist item 98 (docs/protocol.md §4.4 step 6, §4.5 step 3): the Connect lists a supported
    device and one of unsupported type 123456, two statuses (the unsupported one first, ignored in
    phase B) and two command responses → INITIALIZED, only the supported device registered, one
    first command, one forwarded status; the second response finds nothing pending."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, UNSUPPORTED_TYPE])
    rig.status("id", CONNECTING, 1, UNSUPPORTED_TYPE)
    rig.status("id", CONNECTING, 2, A)
    out = rig.take()
    assert status_counters(out) == [2]
    commands = commands_of(out)
    assert len(commands) == 1
    rig.command_response("id", commands[0].messageCounter)
    rig.command_response("id", commands[0].messageCounter + 1)
    assert CarState.INITIALIZED in rig.states
    assert rig.core.state == CarState.RUNNING
    assert rig.core.registry.devices() == [A]
    assert rig.module.connected() == [A]
    assert rig.module.forwarded() == [(b"", A)]
    assert rig.take() == []


def test_first_command_responses_out_of_order() -> None:
    """Checklist item 101 (docs/protocol.md §4.7 step 2, §4.11): three devices, first command responses
    in the order 1,2,0 → INITIALIZED, and all three commands are released (nothing left pending that
    could time out later)."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, B, C])
    for counter, device in enumerate([A, B, C], start=1):
        rig.status("id", CONNECTING, counter, device)
    assert [command.messageCounter for command in commands_of(rig.take())] == [0, 1, 2]
    for counter in (1, 2):
        rig.command_response("id", counter)
        assert rig.core.state == CarState.CONNECTED
    rig.command_response("id", 0)
    assert CarState.INITIALIZED in rig.states
    assert rig.core.state == CarState.RUNNING
    assert len(rig.core.command_tracker) == 0
    assert rig.armed == START + S  # only the session timer is left


def test_empty_first_command_is_server_generated() -> None:
    """Checklist item 119 (docs/protocol.md §4.6 step 4, §2.4, §4.9): with an empty module queue the
    first command is an empty, server-generated command for the registered device (priority forced to
    0, name as registered); its response gives the module no ``command_ack``."""
    announced = Device(MODULE, 0, "test", "T", priority=3)
    rig = CoreRig()
    commands = rig.run_sequence("id", [announced])
    device = commands[0].deviceCommand.device
    assert (device.module, device.deviceType, device.deviceRole, device.deviceName, device.priority) == (
        MODULE,
        0,
        "test",
        "T",
        0,
    )
    assert commands[0].deviceCommand.commandData == b""
    assert rig.core.registry.devices()[0].priority == 0
    assert rig.module.acks() == []


def test_queued_command_is_the_first_command() -> None:
    """Checklist item 120 (docs/protocol.md §4.6 step 2, §4.7 step 3): one command queued for the device
    (produced by the module after the device was registered) is its first command, and the response
    to it is acknowledged to the module (``command_ack``)."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.module_commands([queued(A, b"go")])
    rig.status("id", CONNECTING, 1, A)
    commands = commands_of(rig.take())
    assert [(c.deviceCommand.commandData, c.deviceCommand.device.deviceRole) for c in commands] == [
        (b"go", "test")
    ]
    rig.command_response("id", commands[0].messageCounter)
    assert rig.core.state == CarState.RUNNING
    assert rig.module.acks() == [(b"go", A)]


def test_only_oldest_of_three_queued_commands_is_used() -> None:
    """Checklist item 121 (docs/protocol.md §4.6 step 2, §10.5): three commands queued for one device →
    only the first (oldest) is sent; the other two are dropped (counted, and not sent later)."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.module_commands([queued(A, b"first"), queued(A, b"second"), queued(A, b"third")])
    rig.status("id", CONNECTING, 1, A)
    commands = commands_of(rig.take())
    assert [command.deviceCommand.commandData for command in commands] == [b"first"]
    rig.command_response("id", commands[0].messageCounter)
    assert rig.core.state == CarState.RUNNING
    assert rig.take() == []
    assert rig.module.acks() == [(b"first", A)]
    assert rig.core.stats.commands_dropped["superseded"] == 2


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        pytest.param([(B, b"b1"), (C, b"c1"), (A, b"a1")], [b"b1", b"c1", b"a1"], id="one-per-device"),
        pytest.param(
            [(B, b"b1"), (A, b"a1"), (C, b"c1"), (B, b"b2"), (A, b"a2"), (C, b"c2")],
            [b"b1", b"a1", b"c1"],
            id="two-per-device",
        ),
    ],
)
def test_one_queued_command_per_device_in_queue_order(
    batch: list[tuple[Device, bytes]], expected: list[bytes]
) -> None:
    """Checklist item 123 (docs/protocol.md §4.6 steps 2 and 5): one queued command per device → those
    commands, in queue order; two per device → the first of each; nothing else is sent later."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, B, C])
    rig.module_commands([queued(device, data) for device, data in batch])
    for counter, device in enumerate([A, B, C], start=1):
        rig.status("id", CONNECTING, counter, device)
    commands = commands_of(rig.take())
    assert [command.deviceCommand.commandData for command in commands] == expected
    assert [command.messageCounter for command in commands] == [0, 1, 2]
    for command in commands:
        rig.command_response("id", command.messageCounter)
    assert rig.core.state == CarState.RUNNING
    assert rig.take() == []


def test_queued_command_for_unregistered_device_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 124 (docs/protocol.md §4.6 step 3): queued commands for a registered and a
    not-registered device → only the registered device's command is used; the other is dropped with
    WARNING "Device '…' not connected. Command from API will be ignored." and never sent."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.module_commands([queued(B, b"for-b"), queued(A, b"for-a")])
    rig.status("id", CONNECTING, 1, A)
    commands = commands_of(rig.take())
    assert [command.deviceCommand.commandData for command in commands] == [b"for-a"]
    rig.command_response("id", commands[0].messageCounter)
    assert rig.take() == []
    assert logged(caplog.records, "not connected. Command from API will be ignored.", logging.WARNING)
    assert rig.core.stats.commands_dropped["device_not_connected"] == 1


def test_response_with_unmatched_counter_counts_but_command_times_out() -> None:
    """Checklist item 126 (docs/protocol.md §4.7 step 2 and its last paragraph, §4.11): a
    CommandResponse with the current session id counts as the first command response whatever its
    counter (here 1, no such command) → INITIALIZED; the unanswered command 0 then causes a
    COMMAND_RESPONSE_TIMEOUT reset exactly T after it was sent."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A)
    sent = rig.now
    assert [command.messageCounter for command in commands_of(rig.take())] == [0]
    rig.advance(0.25)
    rig.command_response("id", 1)
    assert CarState.INITIALIZED in rig.states
    assert rig.core.state == CarState.RUNNING
    assert rig.pending_counters() == [0]
    assert rig.armed == sent + T
    rig.advance(0.5)
    assert rig.resets == []
    rig.advance(0.25)
    assert rig.reset_reasons() == ["command_response_timeout"]
    assert rig.now == sent + T


def test_response_of_another_session_then_silence_fails(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 127 (docs/protocol.md §4.7 step 1, §4.12 phase D row): a CommandResponse with
    another session id is skipped (INFO) and then nothing → the phase fails after T, never
    INITIALIZED."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    start = len(rig.states)
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A)
    commands = commands_of(rig.take())
    rig.command_response("other", commands[0].messageCounter)
    assert rig.core.state == CarState.CONNECTED
    rig.advance(T)
    assert rig.reset_reasons() == ["first_command_response"]
    assert CarState.INITIALIZED not in rig.states_since(start)
    assert logged(caplog.records, "different session ID 'other'", logging.INFO)


@pytest.mark.parametrize("session_id", ["id", "new"])
def test_connect_in_phase_d_fails_and_is_not_answered(session_id: str) -> None:
    """docs/protocol.md §4.7 step 1, §4.12 (phase D row: any id) and §4.14 row 9: a Connect while
    waiting for a first command response fails the run at once; that Connect is discarded, so no
    ConnectResponse follows and the next phase A runs into its timeout."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A)
    rig.take()
    rig.connect(session_id, [A])
    assert rig.reset_reasons() == ["connect_during_sequence"]
    assert rig.now == START
    rig.advance(D + T)
    assert rig.reset_reasons() == ["connect_during_sequence", "no_connect"]
    assert rig.take() == []


def test_message_after_last_first_response_is_processed() -> None:
    """docs/protocol.md §10.7 and the note of §4.8 (no lag): a RUNNING status that arrived right behind
    the last first command response — while that response was still being handled — is processed in
    normal communication at once, without waiting for another message."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.module_commands([queued(A, b"go")])
    rig.status("id", CONNECTING, 1, A)
    rig.take()
    rig.hold_calls = lambda call: isinstance(call.call, CommandAck)
    rig.command_response("id", 0)  # phase D now waits for command_ack
    rig.status("id", RUNNING, 2, A, b"running")  # queued behind it
    assert rig.take() == []
    rig.hold_calls = lambda call: False
    rig.release_held()
    assert status_counters(rig.take()) == [2]
    assert rig.module.forwarded()[-1] == (b"running", A)


def test_module_command_queued_during_phase_d_is_sent_after_sequence() -> None:
    """docs/protocol.md §4.8 (note) and §10.7: a module command produced while the first command
    response is awaited is published right when normal communication starts, without another module
    event, and its response is acknowledged to the module."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A)
    rig.take()
    rig.module_commands([queued(A, b"late")])
    assert rig.take() == []
    rig.command_response("id", 0)
    commands = commands_of(rig.take())
    assert [(c.messageCounter, c.deviceCommand.commandData) for c in commands] == [(1, b"late")]
    rig.command_response("id", 1)
    assert rig.module.acks() == [(b"late", A)]


def test_command_timer_expired_during_sequence_still_resets() -> None:
    """docs/protocol.md §4.11 (last point) and §10.7 (timers authoritative): a first command whose
    response timer T expires while phase D is still running (the car answers only other counters,
    slowly) is not forgotten — normal communication starts with a COMMAND_RESPONSE_TIMEOUT reset at
    once."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, B])
    rig.status("id", CONNECTING, 1, A)
    rig.status("id", CONNECTING, 2, B)
    assert [command.messageCounter for command in commands_of(rig.take())] == [0, 1]
    rig.advance(0.625 * T)
    rig.command_response("id", 1)  # early acknowledgement, response 1 of 2
    rig.advance(0.625 * T)  # command 0's timer expired meanwhile
    assert rig.resets == []
    rig.command_response("id", 7)  # unknown counter, response 2 of 2
    assert rig.reset_reasons() == ["command_response_timeout"]
    assert rig.now == START + 1.25 * T


# --------------------------------------------------------------------------------------
# §8.8 — module commands before the Connect, and during device_connected
# --------------------------------------------------------------------------------------


def test_commands_waiting_before_connect_are_discarded(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 131 (docs/protocol.md §4.4 step 6: stale-command rule, §9; §5.7): two commands
    produced before the Connect (one batch, no device registered: only the newest is kept) → the
    kept one is stale and dropped when the module's first device registers; the sequence completes
    with an EMPTY first command, the stale commands never reach the car, and both statuses
    (CONNECTING + a RUNNING one) reach the module."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    rig.module_commands([queued(A, b"stale-1"), queued(A, b"stale-2")])
    assert rig.core.stats.commands_dropped["no_device"] == 1
    assert len(rig.core.command_queues[MODULE]) == 1
    commands = rig.run_sequence("id", [A])
    assert commands[0].deviceCommand.commandData == b""
    rig.status("id", RUNNING, 2, A)
    assert kinds(rig.take()) == ["statusResponse"]
    assert [data for data, _ in rig.module.forwarded()] == [b"", b""]
    assert logged(caplog.records, "stale command(s) of module 1000", logging.INFO)
    assert rig.core.stats.commands_dropped["stale"] == 1
    assert rig.module.acks() == []


def test_commands_posted_while_no_car_connected_do_not_reach_the_car() -> None:
    """Checklist item 137 (docs/protocol.md §4.13 last paragraph, §4.4 step 6): after a session ended
    (all devices disconnected), commands produced while no car is connected are not delivered; when
    the car connects again it receives exactly ConnectResponse, then StatusResponse and an EMPTY
    first command (counter continues: 1), nothing else."""
    rig = CoreRig()
    rig.run_sequence("id1", [A])
    rig.status("id1", DISCONNECT, 2, A)
    assert status_counters(rig.take()) == [2]
    assert rig.reset_reasons() == ["all_devices_disconnected"]
    rig.module_commands([queued(A, b"while-away-1")])
    rig.module_commands([queued(A, b"while-away-2")])
    rig.advance(D)
    rig.connect("id2", [A])
    rig.status("id2", CONNECTING, 1, A)
    out = rig.take()
    assert kinds(out) == ["connectResponse", "statusResponse", "command"]
    assert (out[2].command.messageCounter, out[2].command.deviceCommand.commandData) == (1, b"")
    rig.command_response("id2", 1)
    assert rig.core.state == CarState.RUNNING
    assert rig.take() == []


def test_command_produced_in_device_connected_is_first_command() -> None:
    """Issue 11 item 2; checklist item 120 (docs/protocol.md §4.4 "This implementation", §4.6 step 2):
    a command the module produces inside ``device_connected`` (an on-connect greeting) is not stale
    and is the device's first command — every time: the core drains the module (DrainCommands) right
    after a successful ``device_connected`` and before choosing first commands, so no thread timing
    is involved. Repeated over 20 sessions."""
    module = ScriptedModule(on_device_connected=lambda device: [QueuedCommand(b"hello", device)])
    rig = CoreRig(modules={MODULE: module})
    for attempt in range(20):
        session_id = f"s{attempt}"
        before = len(module.calls)
        commands = rig.run_sequence(session_id, [A])
        assert commands[0].deviceCommand.commandData == b"hello", f"attempt {attempt}"
        calls = module.calls[before:]
        connected_at = calls.index(DeviceConnected(A))
        assert calls[connected_at + 1] == DrainCommands()
        rig.status(session_id, DISCONNECT, 2, A)
        assert status_counters(rig.take()) == [2]
        assert rig.reset_reasons()[-1] == "all_devices_disconnected"
        rig.advance(D)
    assert rig.core.stats.commands_dropped["stale"] == 0


def test_command_produced_in_device_connected_survives_a_slow_drain() -> None:
    """Issue 11 item 2 (docs/protocol.md §4.4, §4.6 step 2): even when the car's first status arrives
    while the drain after ``device_connected`` is still running, phase C sees the greeting — the
    sequence waits for the drain's answer, whatever the timing."""
    module = ScriptedModule(on_device_connected=lambda device: [QueuedCommand(b"hello", device)])
    rig = CoreRig(modules={MODULE: module})
    rig.hold_calls = lambda call: isinstance(call.call, DrainCommands)
    rig.connect("id", [A])
    rig.status("id", CONNECTING, 1, A)
    assert rig.take() == []  # not even the ConnectResponse: phase A waits for the drain
    rig.advance(0.5)
    rig.hold_calls = lambda call: False
    rig.release_held()
    out = rig.take()
    assert kinds(out) == ["connectResponse", "statusResponse", "command"]
    assert out[2].command.deviceCommand.commandData == b"hello"


def test_commands_from_module_waiter_during_device_connected_are_kept() -> None:
    """docs/protocol.md §4.4 ("This implementation") and §5.7: a batch the module's waiting thread hands
    over while ``device_connected`` runs is kept (the module counts as active), not reduced to the
    newest, and not treated as stale; the oldest for the device is its first command."""
    rig = CoreRig()
    rig.hold_calls = lambda call: isinstance(call.call, DeviceConnected)
    rig.connect("id", [A])
    rig.feed(ModuleCommands(MODULE, (queued(A, b"one"), queued(A, b"two"))))
    rig.hold_calls = lambda call: False
    rig.release_held()
    assert kinds(rig.take()) == ["connectResponse"]
    assert rig.core.stats.commands_dropped["no_device"] == 0
    rig.status("id", CONNECTING, 1, A)
    assert [c.deviceCommand.commandData for c in commands_of(rig.take())] == [b"one"]


# --------------------------------------------------------------------------------------
# §8.8 — recovery: new runs after a failed or ended session
# --------------------------------------------------------------------------------------


def test_new_run_after_first_status_timeout_uses_new_session() -> None:
    """Checklist item 117 (docs/protocol.md §4.3, §2.4): no first status within T after Connect "id1" →
    reset; a new run with Connect "id2" + status (counter 0) + response gives the car exactly
    ConnectResponse(id2), StatusResponse(id2, 0) and Command(id2, counter 0)."""
    rig = CoreRig()
    connect_phase(rig, "id1", [A])
    rig.advance(T)
    assert rig.reset_reasons() == ["first_status"]
    rig.advance(D)
    rig.connect("id2", [A])
    assert rig.take()[0].SerializeToString() == bytes.fromhex("0a050a03696432")
    rig.status("id2", CONNECTING, 0, A)
    out = rig.take()
    assert out[0].SerializeToString() == bytes.fromhex("12050a03696432")
    assert (out[1].command.sessionId, out[1].command.messageCounter) == ("id2", 0)
    rig.command_response("id2", 0)
    assert rig.core.state == CarState.RUNNING


def test_same_session_id_repeated_after_missing_first_response() -> None:
    """Checklist item 118 (docs/protocol.md §4.11: the counter is never reset, §4.12): after a missing
    first command response the car repeats the sequence with the same session id → it completes
    (ConnectResponse OK, not ALREADY_LOGGED); the new first command continues the counter (1)."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A)
    rig.take()
    rig.advance(T)
    assert rig.reset_reasons() == ["first_command_response"]
    rig.advance(D)
    commands = rig.run_sequence("id", [A])  # checks ConnectResponse OK
    assert commands[0].messageCounter == 1
    assert rig.core.session_id == "id"


def test_server_retries_after_missing_connect() -> None:
    """Checklist item 132 (docs/protocol.md §4.3: retry forever): no Connect for longer than T (a reset
    happens), then a full sequence and a RUNNING status (counter 1) → the RUNNING status is answered
    and reaches the module."""
    rig = CoreRig()
    rig.advance(T + D)
    assert rig.reset_reasons() == ["no_connect"]
    rig.run_sequence("id", [A], first_counter=0)
    rig.status("id", RUNNING, 1, A, b"running")
    assert status_counters(rig.take()) == [1]
    assert rig.module.forwarded() == [(b"", A), (b"running", A)]


def test_new_session_after_missing_first_status() -> None:
    """Checklist item 133 (docs/protocol.md §4.3): a Connect but no first status for more than T →
    reset; a new sequence with another session id plus a RUNNING status → that status reaches the
    module."""
    rig = CoreRig()
    connect_phase(rig, "id1", [A])
    rig.advance(T + D)
    assert rig.reset_reasons() == ["first_status"]
    rig.run_sequence("id2", [A], first_counter=0)
    rig.status("id2", RUNNING, 1, A, b"running")
    assert status_counters(rig.take()) == [1]
    assert rig.module.forwarded() == [(b"", A), (b"running", A)]
    assert rig.core.session_id == "id2"


def test_new_session_after_missing_first_command_response() -> None:
    """Checklist item 134 (docs/protocol.md §4.3, §4.11): no first command response for more than T →
    reset; a new sequence (new id; its first command has counter 1) and a RUNNING status → the status
    reaches the module (the first run's CONNECTING status was forwarded too: 3 in total)."""
    rig = CoreRig()
    connect_phase(rig, "id1", [A])
    rig.status("id1", CONNECTING, 0, A)
    rig.take()
    rig.advance(T + D)
    assert rig.reset_reasons() == ["first_command_response"]
    commands = rig.run_sequence("id2", [A], first_counter=0)
    assert commands[0].messageCounter == 1
    rig.status("id2", RUNNING, 1, A)
    assert status_counters(rig.take()) == [1]
    assert len(rig.module.forwarded()) == 3


def test_same_session_id_accepted_after_session_timeout() -> None:
    """Checklist item 136 (docs/protocol.md §4.12): after a finished sequence and silence for S the
    session is reset; the same session id connecting again starts a new sequence that is accepted
    (ConnectResponse OK), and both first statuses reach the module."""
    rig = CoreRig()
    rig.run_sequence("id", [A])
    rig.advance(S)
    assert rig.reset_reasons() == ["session_timeout"]
    rig.advance(D)
    rig.run_sequence("id", [A])
    assert rig.module.forwarded() == [(b"", A), (b"", A)]


def test_connect_arriving_during_pause_is_kept_for_next_phase_a() -> None:
    """docs/protocol.md §4.4 ("This implementation") and §4.15 #6: a Connect that arrives during the
    pause D after a clean-up is kept and answered by the next phase A as soon as the pause ends; the
    Connect that caused the reset (new session id, §4.8.1) is dropped."""
    rig = CoreRig()
    rig.run_sequence("id1", [A])
    rig.connect("id2", [A])
    assert rig.reset_reasons() == ["new_session"]
    assert rig.core.state == CarState.ERROR and rig.core.registry.devices() == []
    rig.advance(D / 2)
    rig.connect("id3", [A])
    assert rig.take() == []
    rig.advance(D / 2)
    out = rig.take()
    assert kinds(out) == ["connectResponse"]
    assert out[0].connectResponse.sessionId == "id3"
    assert rig.core.session_id == "id3"


def test_first_status_payload_reaches_module() -> None:
    """Checklist item 128 (docs/protocol.md §4.5 step 8): Connect, a CONNECTING status and
    CommandResponse OK (0) → the status reaches the module with its payload and device."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A, b'{"speed": 3}')
    rig.command_response("id", 0)
    assert rig.module.forwarded() == [(b'{"speed": 3}', A)]
    assert rig.core.state == CarState.RUNNING


# --------------------------------------------------------------------------------------
# clean-up, pause D, stop, broker and publish failures during the sequence
# --------------------------------------------------------------------------------------


def test_clean_up_steps_in_order(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.13: at the end of a run the disconnect notification goes out first, unhandled
    car messages are dropped, pending commands are dropped without ``command_ack`` (counted, WARNING),
    every registered device gets ``device_disconnected(timeout)`` with its stored copy in
    registration order, the registry is emptied; the counter keeps its value."""
    rig = CoreRig()
    connect_phase(rig, "id", [A.with_priority(2), B])
    rig.status("id", CONNECTING, 1, A)
    rig.status("id", CONNECTING, 2, B)
    rig.take()
    assert rig.pending_counters() == [0, 1]
    rig.advance(T)
    assert rig.reset_reasons() == ["first_command_response"]
    assert rig.notifications == 1
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, A), (DISCONNECT_TIMEOUT, B)]
    assert rig.module.acks() == []
    assert rig.core.registry.devices() == []
    assert len(rig.core.command_tracker) == 0
    assert rig.core.command_tracker.next_counter == 2
    assert rig.core.stats.commands_dropped["unacknowledged_at_reset"] == 2
    assert logged(caplog.records, "2 command(s) sent to the car were never acknowledged.", logging.WARNING)
    assert rig.core.session_deadline is None


def test_clean_up_warns_when_notification_is_not_acknowledged(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.13 step 1 and §3.3: a disconnect notification without PUBACK in time is
    logged (WARNING) and the clean-up goes on."""
    rig = CoreRig()
    rig.notification_acks = False
    rig.advance(T)
    assert rig.notifications == 1
    assert logged(caplog.records, "Disconnect notification was not acknowledged", logging.WARNING)
    rig.advance(D)
    assert rig.core.state == CarState.CONNECTED


def test_clean_up_survives_device_disconnected_raising() -> None:
    """docs/protocol.md §4.13 step 7 (return codes only logged): a ``device_disconnected`` that raises
    during the clean-up (context already destroyed) is skipped; the other devices are still told and
    the next run starts after D."""
    rig = CoreRig()
    connect_phase(rig, "id", [A, B])
    rig.call_error = lambda call: "gone" if isinstance(call.call, DeviceDisconnected) else None
    rig.advance(T)
    assert rig.reset_reasons() == ["first_status"]
    assert len(rig.module.disconnected()) == 2
    assert rig.core.registry.devices() == []
    rig.call_error = lambda call: None
    rig.advance(D)
    assert rig.core.state == CarState.CONNECTED


def test_clean_up_drops_unhandled_messages_kept_during_the_run() -> None:
    """docs/protocol.md §4.13 step 3: car messages received but not handled when the run ends are
    dropped — a status queued behind the message that caused the reset is never forwarded."""
    rig = CoreRig()
    rig.run_sequence("id", [A])
    rig.hold_calls = lambda call: isinstance(call.call, ForwardStatus)
    rig.status("id", RUNNING, 5, A, b"held")
    rig.connect("other", [A])  # queued behind the held forward
    rig.status("id", RUNNING, 6, A, b"after")
    rig.hold_calls = lambda call: False
    rig.release_held()
    assert rig.reset_reasons() == ["new_session"]
    assert [data for data, _ in rig.module.forwarded()] == [b"", b"held"]


def test_pause_d_between_runs() -> None:
    """docs/protocol.md §4.3, §4.1 (D after every run): after a reset nothing happens for D — state
    ERROR, the end of the pause armed, Connects kept for later — then a new run starts (UNINITIALIZED,
    CONNECTED) with phase A's deadline T ahead."""
    rig = CoreRig()
    rig.advance(T)
    assert rig.core.state == CarState.ERROR
    ended = rig.now
    assert rig.armed == ended + D
    rig.advance(D - 0.125)
    assert rig.core.state == CarState.ERROR
    assert rig.reset_reasons() == ["no_connect"]
    rig.advance(0.125)
    assert rig.states[-2:] == [CarState.UNINITIALIZED, CarState.CONNECTED]
    assert rig.armed == ended + D + T


def test_stop_during_phase_a_cleans_up_and_finishes() -> None:
    """docs/protocol.md §4.3 and §4.13 (clean-up at stop): Stop during the connect sequence ends the run
    without a reset: clean-up (notification, ``device_disconnected(timeout)`` for registered devices),
    no pause, state STOPPED, Finished; later events are ignored."""
    rig = CoreRig()
    connect_phase(rig, "id", [A])
    rig.stop()
    assert rig.resets == []
    assert rig.notifications == 1
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, A)]
    assert rig.core.state == CarState.STOPPED
    assert rig.finished and rig.core.finished
    assert rig.core.handle(rig.events_fed[0], rig.now) == []


def test_stop_during_pause_ends_at_once() -> None:
    """docs/protocol.md §4.3: Stop during the pause D does not wait for the pause to end; no new run
    starts. The state stays ERROR: ERROR → STOPPED is not a permitted transition (§4.2)."""
    rig = CoreRig()
    rig.advance(T)
    assert rig.core.state == CarState.ERROR
    rig.stop()
    assert rig.finished
    assert rig.now == START + T
    assert rig.core.state == CarState.ERROR
    assert CarState.UNINITIALIZED not in rig.states[1:]
    assert rig.notifications == 1  # only the one of the failed run


def test_stop_while_waiting_for_broker() -> None:
    """docs/protocol.md §4.3 and §4.13 step 1: Stop while the broker is down ends the core without a
    notification (not connected)."""
    rig = CoreRig(broker_connected=False)
    rig.stop()
    assert rig.finished
    assert rig.notifications == 0
    assert rig.core.state == CarState.STOPPED


@pytest.mark.parametrize("phase", ["A", "B", "D"])
def test_broker_lost_during_sequence_resets_and_waits_for_broker(
    caplog: pytest.LogCaptureFixture, phase: str
) -> None:
    """docs/protocol.md §4.14 row 15 ("This implementation": every phase) and §4.3: losing the broker
    in phase A, B or D resets the run at once ("Unexpected disconnection of MQTT client.", WARNING),
    no notification is attempted, registered devices get ``device_disconnected(timeout)``; after D
    the core waits for the broker (UNINITIALIZED, nothing armed) and starts phase A once it is back."""
    rig = CoreRig()
    if phase in "BD":
        connect_phase(rig, "id", [A])
    if phase == "D":
        rig.status("id", CONNECTING, 1, A)
        rig.take()
    rig.broker(False)
    assert rig.reset_reasons() == ["broker_lost"]
    record = reset_record(caplog.records, "broker_lost")
    assert record.levelno == logging.WARNING
    assert "Unexpected disconnection of MQTT client." in record.getMessage()
    assert rig.notifications == 0
    assert rig.module.disconnected() == ([] if phase == "A" else [(DISCONNECT_TIMEOUT, A)])
    rig.advance(D + 10 * T)
    assert rig.core.state == CarState.UNINITIALIZED
    assert rig.armed is None
    assert rig.reset_reasons() == ["broker_lost"]
    rig.broker(True)
    assert rig.states[-1] == CarState.CONNECTED
    assert rig.armed == rig.now + T


@pytest.mark.parametrize("kind", ["connect_response", "status_response", "command"])
def test_publish_failure_during_sequence_resets_at_warning(
    caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """docs/protocol.md §4.14 row 8 and §10.14: a publish that fails during the connect sequence
    (ConnectResponse, first StatusResponse or first Command) resets the run, logged at WARNING."""
    rig = CoreRig()
    rig.fail_publish_of = lambda publish: publish.kind == kind
    rig.connect("id", [A])
    rig.status("id", CONNECTING, 1, A)
    assert rig.reset_reasons() == ["publish_failed"]
    assert rig.resets[0].level == logging.WARNING
    assert reset_record(caplog.records, "publish_failed").levelno == logging.WARNING
    assert "Publishing to the car failed" in rig.resets[0].message
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, A)]
    assert CarState.INITIALIZED not in rig.states


def test_unexpected_module_error_during_sequence_resets_at_error(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.14 row 17 and §4.3: a module call that raises (not a return code) is an
    unexpected error: the run is reset with reason unexpected_error, logged at ERROR with the
    traceback, and the next run starts after D."""
    rig = CoreRig()
    rig.call_error = lambda call: "boom" if isinstance(call.call, DeviceConnected) else None
    rig.connect("id", [A])
    assert rig.reset_reasons() == ["unexpected_error"]
    assert rig.resets[0].level == logging.ERROR
    assert logged(caplog.records, "Unexpected error in the car session", logging.ERROR)
    assert rig.core.stats.resets["unexpected_error"] == 1
    rig.call_error = lambda call: None
    rig.advance(D)
    assert rig.core.state == CarState.CONNECTED


def test_module_return_code_never_resets_during_sequence(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.5 step 8 and §4.14 (module return codes): failing ``forward_status`` /
    ``forward_error_message`` of a first status are only logged (ERROR) and counted; the sequence
    completes."""
    rig = CoreRig(modules={MODULE: ScriptedModule(forward_rc=-1, error_rc=-1)})
    connect_phase(rig, "id", [A])
    rig.status("id", CONNECTING, 1, A, b"{}", b"err")
    rig.command_response("id", 0)
    assert rig.core.state == CarState.RUNNING
    assert rig.core.stats.module_errors["forward_status"] == 1
    assert rig.core.stats.module_errors["forward_error_message"] == 1
    assert logged(caplog.records, "forward_status of module 1000 failed", logging.ERROR)
    assert logged(caplog.records, "forward_error_message of module 1000 failed", logging.ERROR)


def test_is_device_type_supported_is_asked_once_per_type() -> None:
    """docs/protocol.md §4.4 step 6 and §4.5 step 3: ``is_device_type_supported`` decides which devices
    count; its answer is cached per module and type (asked once across phases and runs)."""
    rig = CoreRig()
    rig.run_sequence("id", [A, B])
    rig.status("id", RUNNING, 3, A)
    assert rig.module.named(IsDeviceTypeSupported) == [IsDeviceTypeSupported(0)]


def test_states_of_a_whole_run() -> None:
    """docs/protocol.md §4.2 and §4.3: a run goes UNINITIALIZED → CONNECTED (broker up) → INITIALIZED
    (sequence done) → RUNNING; a reset sets ERROR before the clean-up, and after D the next run starts
    with UNINITIALIZED → CONNECTED; ``state_since`` follows the clock."""
    rig = CoreRig(broker_connected=False)
    rig.advance(0.25)
    rig.broker(True)
    assert rig.core.stats.state_since == START + 0.25
    rig.run_sequence("id", [A])
    rig.status("id", DISCONNECT, 2, A)
    rig.advance(D)
    assert rig.states == [
        CarState.UNINITIALIZED,
        CarState.CONNECTED,
        CarState.INITIALIZED,
        CarState.RUNNING,
        CarState.ERROR,
        CarState.UNINITIALIZED,
        CarState.CONNECTED,
    ]
    assert rig.core.stats.state_since == START + 0.25 + D
