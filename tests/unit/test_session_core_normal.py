"""Normal communication on the pure session core (docs/protocol.md §4.8–§4.12, §4.14).

Deterministic twins of tests/integration/test_normal_session.py, test_normal_statuses.py and
test_normal_commands.py (checklist docs/protocol.md §8.9–§8.11, items 138–190): a :class:`CoreRig`
with a fake clock and a :class:`ScriptedModule`; assertions on decoded publishes, module calls,
SessionEnded reasons and levels, stats, states and armed deadlines. T = 1 s, S = 3 s, D = 0.5 s;
each test opens a session "id" with :meth:`CoreRig.run_sequence` (first statuses 1..n, first
commands 0..n-1), so the next command counter is n and the first normal status sets the
baseline (§10.6).

Item → unit test:

  138       test_disconnect_of_registered_device_answered_and_unregistered
  139       test_repeated_disconnect_with_same_counter_has_no_effect
  140       test_running_status_answered_and_device_stays_registered
  141, 165  test_error_message_forwarded_exactly_and_status_answered
  142       test_in_order_statuses_answered_in_order
  143, 158  test_out_of_order_statuses_released_in_counter_order
  144       test_status_with_foreign_session_id_ignored
  145       test_foreign_session_status_neither_answered_nor_filling_a_gap
  146       test_status_from_unconfigured_module
  147, 162  test_status_of_unsupported_device_type
  148, 153  test_running_status_of_registered_device_forwarded_once
  149, 159  test_connecting_status_registers_new_device
  150, 160  test_running_status_of_unregistered_device
  151       test_disconnect_of_unregistered_device
  152       test_disconnect_of_last_device_unregisters_then_resets
  154       test_connecting_of_unsupported_type_after_running
  155       test_statuses_of_disconnected_device_not_forwarded
  156       test_device_reconnects_after_disconnect
  157       test_all_devices_disconnected_then_new_session_continues_command_counter
  161       test_new_device_connecting_then_running
  163       test_empty_error_message_not_forwarded
  164       test_unfilled_gap_resets_and_next_session_works
  166       test_connect_with_current_id_answered_already_logged
  167       test_connect_with_other_id_resets_unanswered_and_is_dropped
  168       not covered: STALE (the reference itself raises the reset, docs/protocol.md §8.10)
  169       not coverable: every car message is its own event; nearest behaviour (§4.8.4) in
            test_message_of_unknown_type_ignored
  170       test_session_timeout_without_messages
  171       test_current_session_message_restarts_session_timer
  172, 173  test_broker_loss_resets_session_and_reconnect_works
  174       test_module_command_published_exactly
  175       test_command_with_other_module_number
  176       test_empty_command_published_with_warning
  177       test_command_for_unregistered_device_published_with_warning
  178, 181  test_response_releases_pending_command
  179, 183  test_foreign_session_response_then_right_one
  180, 190  test_unanswered_command_resets_and_new_session_works
  182       test_response_without_pending_command
  184       test_response_with_wrong_counter_keeps_command_pending
  185       test_device_not_connected_unregisters_that_device
  186       test_device_not_connected_for_newer_pending_command
  187       test_device_not_connected_for_unknown_counter
  188       test_command_carries_the_device_name_and_role
  189       test_commands_sent_without_waiting_for_responses

Integration tests whose unit twin has another name: test_released_response_is_logged_at_info →
test_response_releases_pending_command (asserts the INFO line);
test_status_right_after_last_command_response_is_processed →
test_message_after_last_first_response_is_processed in test_session_core_connect.py;
test_device_disconnected_not_ok_logged_with_specified_text (now
test_device_not_connected_for_an_unregistered_device_leaves_the_module_alone) →
that test, plus the log texts in test_device_disconnected_return_codes_only_logged.

Unnumbered integration tests have twins under the same names (ERROR-state status, refused
CONNECTING, CONNECTING of a registered device §10.2, baseline §10.6, duplicate held status §10.8,
identity §4.9, stale commands on re-registration, timers not restarted by other messages, publish
failure at ERROR, §4.8.3 step 5, commands flushed after the sequence, early acknowledgements,
device_disconnected return codes). Module errors, queue overflow, stop and latency observation
follow at the end.
"""

from __future__ import annotations

import logging

import pytest
from external_server.abi_codes import (
    CONTEXT_INCORRECT,
    DISCONNECT_ANNOUNCED,
    DISCONNECT_TIMEOUT,
    NOT_OK,
    TIMEOUT_OCCURRED,
)
from external_server.commands import QueuedCommand
from external_server.device import Device
from external_server.session.events import (
    CommandAck,
    DeviceConnected,
    DeviceDisconnected,
    DrainCommands,
    ForwardStatus,
    IsDeviceTypeSupported,
)
from external_server.session.state import CarState
from external_server.wire import ExternalProtocol_pb2 as ext
from external_server.wire import InternalProtocol_pb2 as internal
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
SESSION_ID = "id"

DEVICE_1 = Device(MODULE, 0, "role_1", "Device 1")
DEVICE_2 = Device(MODULE, 0, "role_2", "Device 2")
NEW_DEVICE = Device(MODULE, 1, "io_button", "Button")
UNSUPPORTED_TYPE = 7
UNSUPPORTED_DEVICE = Device(MODULE, UNSUPPORTED_TYPE, "unsupported", "Unsupported")
UNCONFIGURED_MODULE = 1001
FOREIGN_MODULE_DEVICE = Device(UNCONFIGURED_MODULE, 0, "foreign", "Foreign")
GHOST = Device(MODULE, 0, "ghost", "Ghost")

CONNECTING = ext.Status.CONNECTING
RUNNING = ext.Status.RUNNING
DISCONNECT = ext.Status.DISCONNECT
ERROR = ext.Status.ERROR
DEVICE_NOT_CONNECTED = ext.CommandResponse.DEVICE_NOT_CONNECTED


def open_session(rig: CoreRig, devices: list[Device], session_id: str = SESSION_ID) -> int:
    """Run a connect sequence and forget the module calls it made; the next status counter."""
    rig.run_sequence(session_id, devices)
    rig.module.calls.clear()
    return len(devices) + 1


def status_counters(out: list[ext.ExternalServer]) -> list[int]:
    assert all(m.WhichOneof("MessageType") == "statusResponse" for m in out), kinds(out)
    return [m.statusResponse.messageCounter for m in out]


def commands_of(out: list[ext.ExternalServer]) -> list[ext.Command]:
    assert all(m.WhichOneof("MessageType") == "command" for m in out), kinds(out)
    return [m.command for m in out]


def status_response_bytes(session_id: str, counter: int) -> bytes:
    return ext.ExternalServer(
        statusResponse=ext.StatusResponse(
            sessionId=session_id, type=ext.StatusResponse.OK, messageCounter=counter
        )
    ).SerializeToString()


def command_bytes(session_id: str, counter: int, device: Device, data: bytes) -> bytes:
    return ext.ExternalServer(
        command=ext.Command(
            sessionId=session_id,
            messageCounter=counter,
            deviceCommand=internal.DeviceCommand(device=device.to_proto(), commandData=data),
        )
    ).SerializeToString()


def command(device: Device, data: bytes) -> QueuedCommand:
    return QueuedCommand(data, device)


# --------------------------------------------------------------------------------------
# §8.9 — statuses
# --------------------------------------------------------------------------------------


def test_disconnect_of_registered_device_answered_and_unregistered() -> None:
    """Checklist item 138 (docs/protocol.md §4.8.2): DISCONNECT of a registered device → forwarded,
    exactly ``StatusResponse{id, OK, c}``, then unregistered and ``device_disconnected(announced)``
    with the device as the status carried it; the other device stays, the session goes on."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1, DEVICE_2])
    rig.status(SESSION_ID, DISCONNECT, c, DEVICE_1, b"bye")
    out = rig.take()
    assert [m.SerializeToString() for m in out] == [status_response_bytes(SESSION_ID, c)]
    assert rig.core.registry.devices() == [DEVICE_2]
    assert rig.module.calls == [
        ForwardStatus(b"bye", b"", DEVICE_1),
        DeviceDisconnected(DISCONNECT_ANNOUNCED, DEVICE_1),
    ]
    assert rig.module.forwarded() == [(b"bye", DEVICE_1)]
    assert rig.module.disconnected() == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
    assert rig.core.state == CarState.RUNNING


def test_repeated_disconnect_with_same_counter_has_no_effect(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 139 (docs/protocol.md §4.10 rule 1): the same DISCONNECT sent twice: the second is
    ignored (counter < E, WARNING "… smaller than expected value …"), not answered, no second
    ``device_disconnected``."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1, DEVICE_2])
    rig.status(SESSION_ID, DISCONNECT, c, DEVICE_1)
    rig.status(SESSION_ID, DISCONNECT, c, DEVICE_1)
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_2)
    assert status_counters(rig.take()) == [c, c + 1]
    assert rig.module.disconnected() == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
    assert len(rig.module.forwarded()) == 2
    assert logged(
        caplog.records,
        f"Status with counter {c} smaller than expected value {c + 1} is ignored.",
        logging.WARNING,
    )
    assert rig.core.stats.ignored["old_status_counter"] == 1
    assert rig.core.registry.devices() == [DEVICE_2]
    assert rig.core.state == CarState.RUNNING


def test_running_status_answered_and_device_stays_registered() -> None:
    """Checklist item 140 (docs/protocol.md §4.8.2, §10.6): RUNNING (counter 1) of a registered device →
    exactly ``StatusResponse{id, OK, 1}``; the device stays registered. Counter 1 although the first
    status used 1 too: the first normal status sets the baseline whatever its value."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, 1, DEVICE_1, b"{}")
    assert [m.SerializeToString() for m in rig.take()] == [status_response_bytes(SESSION_ID, 1)]
    assert rig.core.registry.devices() == [DEVICE_1]
    assert rig.core.state == CarState.RUNNING


def test_error_message_forwarded_exactly_and_status_answered() -> None:
    """Checklist items 141 and 165 (docs/protocol.md §4.8.2 step 4): RUNNING with errorMessage "error" →
    ``forward_status`` gets the data, ``forward_error_message`` exactly b"error", and the
    StatusResponse is still ``{id, OK, counter}``."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"status", b"error")
    assert [m.SerializeToString() for m in rig.take()] == [status_response_bytes(SESSION_ID, c)]
    assert rig.module.calls == [ForwardStatus(b"status", b"error", DEVICE_1)]
    assert rig.module.forwarded_errors() == [(b"error", DEVICE_1)]


def test_in_order_statuses_answered_in_order() -> None:
    """Checklist item 142 (docs/protocol.md §4.10): statuses 1, 2, 3 → responses 1, 2, 3, each
    forwarded at once."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    for counter in (1, 2, 3):
        rig.status(SESSION_ID, RUNNING, counter, DEVICE_1, bytes([counter]))
        assert status_counters(rig.take()) == [counter]
    assert [data for data, _ in rig.module.forwarded()] == [b"\x01", b"\x02", b"\x03"]


def test_out_of_order_statuses_released_in_counter_order(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist items 143 and 158 (docs/protocol.md §4.10, §4.8.2): after the baseline c, statuses c+2
    and c+3 are held (not answered, not forwarded; WARNING "Status with counter c+1 is missing.", a
    timer T armed); once c+1 arrives, c+1, c+2, c+3 are answered and forwarded in counter order."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"s0")
    assert status_counters(rig.take()) == [c]
    rig.advance(0.25)
    rig.status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"s2")
    rig.status(SESSION_ID, RUNNING, c + 3, DEVICE_1, b"s3")
    assert rig.take() == []
    assert rig.core.status_checker.held_counters() == [c + 2, c + 3]
    assert rig.module.forwarded() == [(b"s0", DEVICE_1)]
    assert logged(caplog.records, f"Status with counter {c + 1} is missing.", logging.WARNING)
    assert rig.armed == rig.now + T
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"s1")
    assert status_counters(rig.take()) == [c + 1, c + 2, c + 3]
    assert [data for data, _ in rig.module.forwarded()] == [b"s0", b"s1", b"s2", b"s3"]
    assert rig.armed == rig.now + S
    assert rig.core.state == CarState.RUNNING


def test_status_with_foreign_session_id_ignored() -> None:
    """Checklist item 144 (docs/protocol.md §4.8.2 step 1): "id"/c, "unknown_id"/c+1, "id"/c+1 →
    responses c and c+1 only; the foreign status is neither forwarded nor answered."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"a")
    rig.status("unknown_id", RUNNING, c + 1, DEVICE_1, b"foreign")
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"b")
    assert status_counters(rig.take()) == [c, c + 1]
    assert [data for data, _ in rig.module.forwarded()] == [b"a", b"b"]


def test_foreign_session_status_neither_answered_nor_filling_a_gap(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 145 (docs/protocol.md §4.8.2 step 1, §4.12): a status whose session id differs
    gets no StatusResponse and is logged; carrying exactly the missing counter, it does not fill the
    gap (never reaches the order checker) and is counted as ignored."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1)
    rig.status(SESSION_ID, RUNNING, c + 2, DEVICE_1)
    rig.status("unknown_id", RUNNING, c + 1, DEVICE_1)
    assert status_counters(rig.take()) == [c]
    assert rig.core.status_checker.held_counters() == [c + 2]
    assert rig.core.stats.ignored["foreign_session"] == 1
    assert logged(caplog.records, "Ignoring status with different session ID 'unknown_id'", logging.INFO)
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1)
    assert status_counters(rig.take()) == [c + 1, c + 2]


def test_status_from_unconfigured_module(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 146 (docs/protocol.md §4.8.2 step 2.1): status of module 1001 (not configured) →
    WARNING "unknown module", no response, nothing forwarded; the session goes on."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, c, FOREIGN_MODULE_DEVICE, b"foreign")
    assert rig.take() == []
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
    assert status_counters(rig.take()) == [c + 1]
    assert logged(caplog.records, "from unknown module 1001", logging.WARNING)
    assert rig.module.forwarded() == [(b"mine", DEVICE_1)]
    assert rig.core.stats.ignored["unknown_module"] == 1
    assert rig.core.state == CarState.RUNNING


@pytest.mark.parametrize("state", [CONNECTING, RUNNING], ids=["connecting", "running"])
def test_status_of_unsupported_device_type(
    caplog: pytest.LogCaptureFixture, state: ext.Status.DeviceState
) -> None:
    """Checklist items 147 and 162 (docs/protocol.md §4.8.2 step 2.2): CONNECTING or RUNNING of a type
    the module does not support → WARNING "… is not supported by module …", no response, not
    forwarded, no ``device_connected``."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, state, c, UNSUPPORTED_DEVICE, b"unsupported")
    assert rig.take() == []
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
    assert status_counters(rig.take()) == [c + 1]
    assert logged(caplog.records, f"type {UNSUPPORTED_TYPE} is not supported by module 1000", logging.WARNING)
    assert rig.module.forwarded() == [(b"mine", DEVICE_1)]
    assert rig.module.connected() == []
    assert not rig.core.registry.is_registered(UNSUPPORTED_DEVICE)


def test_running_status_of_registered_device_forwarded_once() -> None:
    """Checklist items 148 and 153 (docs/protocol.md §4.8.2 step 4): a RUNNING status of the registered
    device is forwarded once (payload and device as sent) before it is answered."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.hold_calls = lambda call: isinstance(call.call, ForwardStatus)
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b'{"speed": 3}')
    assert rig.take() == []  # the response follows the forwarding
    rig.hold_calls = lambda call: False
    rig.release_held()
    assert status_counters(rig.take()) == [c]
    assert rig.module.forwarded() == [(b'{"speed": 3}', DEVICE_1)]


def test_connecting_status_registers_new_device() -> None:
    """Checklist items 149 and 159 (docs/protocol.md §4.8.2 step 2.3, §4.9): CONNECTING of a new
    supported device → ``device_connected`` with priority 0, registered after the first device,
    forwarded (as carried) after the first device's status, answered."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    announced = NEW_DEVICE.with_priority(5)
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"first device")
    rig.status(SESSION_ID, CONNECTING, c + 1, announced, b"button")
    assert status_counters(rig.take()) == [c, c + 1]
    assert rig.core.registry.devices() == [DEVICE_1, NEW_DEVICE]
    assert rig.module.forwarded() == [(b"first device", DEVICE_1), (b"button", announced)]
    assert rig.module.connected() == [NEW_DEVICE]
    assert rig.module.connected()[0].priority == 0


def test_running_status_of_unregistered_device(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist items 150 and 160 (docs/protocol.md §4.8.2 step 2.3): RUNNING of a not-connected device
    → INFO "Device … is not connected. Ignoring status.", no response, not forwarded, not
    registered."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, c, NEW_DEVICE, b"button")
    assert rig.take() == []
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
    assert status_counters(rig.take()) == [c + 1]
    assert logged(caplog.records, "is not connected. Ignoring status.", logging.INFO)
    assert rig.module.forwarded() == [(b"mine", DEVICE_1)]
    assert rig.core.registry.devices() == [DEVICE_1]
    assert rig.core.stats.ignored["status_not_handled"] == 1


def test_disconnect_of_unregistered_device(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 151 (docs/protocol.md §4.8.2 step 2.3): DISCONNECT of a not-connected device →
    INFO "already disconnected", no response, no module call."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, DISCONNECT, c, NEW_DEVICE)
    assert rig.take() == []
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
    assert status_counters(rig.take()) == [c + 1]
    assert logged(caplog.records, "already disconnected", logging.INFO)
    assert rig.module.disconnected() == []
    assert rig.module.forwarded() == [(b"mine", DEVICE_1)]
    assert rig.core.state == CarState.RUNNING


def test_disconnect_of_last_device_unregisters_then_resets(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 152 (docs/protocol.md §4.8.2 step 3, §4.14 row 11): the connected device's
    DISCONNECT unregisters it (``device_disconnected(announced)``, once); it was the last one, so
    after its StatusResponse the session resets (WARNING "All devices have been disconnected,
    restarting server.") and the clean-up has no device left to tell."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, DISCONNECT, c, DEVICE_1)
    assert status_counters(rig.take()) == [c]
    assert rig.reset_reasons() == ["all_devices_disconnected"]
    record = reset_record(caplog.records, "all_devices_disconnected")
    assert record.levelno == logging.WARNING
    assert "All devices have been disconnected, restarting server." in record.getMessage()
    assert rig.module.disconnected() == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
    assert rig.core.registry.devices() == []
    assert rig.notifications == 1


def test_connecting_of_unsupported_type_after_running() -> None:
    """Checklist item 154 (docs/protocol.md §4.8.2 step 2.2): RUNNING (c) of the registered device and
    CONNECTING (c+1) of an unsupported-type device of the same module → only the first is forwarded
    and answered."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"running")
    rig.status(SESSION_ID, CONNECTING, c + 1, UNSUPPORTED_DEVICE, b"unsupported")
    rig.status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"sentinel")
    assert status_counters(rig.take()) == [c, c + 2]
    assert [data for data, _ in rig.module.forwarded()] == [b"running", b"sentinel"]


def test_statuses_of_disconnected_device_not_forwarded() -> None:
    """Checklist item 155 (docs/protocol.md §4.8.2): after device 1's DISCONNECT, RUNNING statuses
    alternating between the devices → only device 2's two statuses are forwarded and answered."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1, DEVICE_2])
    rig.status(SESSION_ID, DISCONNECT, c, DEVICE_1, b"d1 bye")
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"d1 a")
    rig.status(SESSION_ID, RUNNING, c + 2, DEVICE_2, b"d2 a")
    rig.status(SESSION_ID, RUNNING, c + 3, DEVICE_1, b"d1 b")
    rig.status(SESSION_ID, RUNNING, c + 4, DEVICE_2, b"d2 b")
    assert status_counters(rig.take()) == [c, c + 2, c + 4]
    assert rig.module.forwarded() == [(b"d1 bye", DEVICE_1), (b"d2 a", DEVICE_2), (b"d2 b", DEVICE_2)]
    assert rig.core.state == CarState.RUNNING


def test_device_reconnects_after_disconnect() -> None:
    """Checklist item 156 (docs/protocol.md §4.8.2): DISCONNECT then CONNECTING of device 1 and further
    RUNNING statuses → no failure, all answered, device 1 registered again (one more
    ``device_connected``, one ``device_disconnected``)."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1, DEVICE_2])
    rig.status(SESSION_ID, DISCONNECT, c, DEVICE_1)
    rig.status(SESSION_ID, CONNECTING, c + 1, DEVICE_1)
    rig.status(SESSION_ID, RUNNING, c + 2, DEVICE_1)
    rig.status(SESSION_ID, RUNNING, c + 3, DEVICE_2)
    assert status_counters(rig.take()) == [c, c + 1, c + 2, c + 3]
    assert {device.key for device in rig.core.registry.devices()} == {DEVICE_1.key, DEVICE_2.key}
    assert rig.module.connected() == [DEVICE_1]
    assert rig.module.disconnected() == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
    assert rig.resets == []


def test_all_devices_disconnected_then_new_session_continues_command_counter() -> None:
    """Checklist item 157 (docs/protocol.md §4.11, §4.8.2 step 3): both devices DISCONNECT → reset; a
    new sequence "new_id" with first-status counters 2, 3 gets first commands 2, 3 (the counter is
    never reset) and its RUNNING status (4) reaches the module."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1, DEVICE_2])
    rig.status(SESSION_ID, DISCONNECT, c, DEVICE_1)
    rig.status(SESSION_ID, DISCONNECT, c + 1, DEVICE_2)
    assert status_counters(rig.take()) == [c, c + 1]
    assert rig.reset_reasons() == ["all_devices_disconnected"]
    rig.advance(D)
    commands = rig.run_sequence("new_id", [DEVICE_1, DEVICE_2], first_counter=2)
    assert [command.messageCounter for command in commands] == [2, 3]
    rig.status("new_id", RUNNING, 4, DEVICE_1, b"after reconnect")
    assert status_counters(rig.take()) == [4]
    assert rig.module.forwarded()[-1] == (b"after reconnect", DEVICE_1)


def test_new_device_connecting_then_running() -> None:
    """Checklist item 161 (docs/protocol.md §4.8.2 step 2.3): CONNECTING (c) then RUNNING (c+1) of a
    new device → both forwarded and answered; the device is registered."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, CONNECTING, c, NEW_DEVICE, b"connecting")
    rig.status(SESSION_ID, RUNNING, c + 1, NEW_DEVICE, b"running")
    assert status_counters(rig.take()) == [c, c + 1]
    assert rig.module.forwarded() == [(b"connecting", NEW_DEVICE), (b"running", NEW_DEVICE)]
    assert rig.core.registry.devices() == [DEVICE_1, NEW_DEVICE]


def test_empty_error_message_not_forwarded() -> None:
    """Checklist item 163 (docs/protocol.md §4.8.2 step 4): an explicitly empty errorMessage is not
    forwarded (no ``forward_error_message``); a non-empty one is, with its content."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.send(
        ext.ExternalClient(
            status=ext.Status(
                sessionId=SESSION_ID,
                deviceState=RUNNING,
                messageCounter=c,
                deviceStatus=internal.DeviceStatus(device=DEVICE_1.to_proto(), statusData=b"one"),
                errorMessage=b"",
            )
        )
    )
    assert status_counters(rig.take()) == [c]
    assert rig.module.forwarded_errors() == []
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"two", b"STATUS_ERROR text")
    assert status_counters(rig.take()) == [c + 1]
    assert rig.module.forwarded_errors() == [(b"STATUS_ERROR text", DEVICE_1)]


def test_unfilled_gap_resets_and_next_session_works(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 164 (docs/protocol.md §4.10, §4.13 step 6, §4.14 row 13): statuses c and c+2,
    nothing for T → STATUS_TIMEOUT reset exactly T after the gap was seen (the held c+2 is never
    forwarded); a new sequence "new_id" works and its RUNNING status reaches the module."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"kept")
    rig.status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"held")
    gap_seen = rig.now
    assert status_counters(rig.take()) == [c]
    assert rig.armed == gap_seen + T
    rig.advance(T - 0.125)
    assert rig.resets == []
    rig.advance(0.125)
    assert rig.reset_reasons() == ["status_timeout"]
    assert rig.now == gap_seen + T
    assert reset_record(caplog.records, "status_timeout").levelno == logging.WARNING
    assert logged(caplog.records, f"Status with counter {c + 1} is missing.", logging.WARNING)
    assert rig.module.forwarded() == [(b"kept", DEVICE_1)]
    assert rig.core.status_checker.held_counters() == []
    rig.advance(D)
    rig.run_sequence("new_id", [DEVICE_1])
    rig.status("new_id", RUNNING, 2, DEVICE_1, b"new session")
    assert status_counters(rig.take()) == [2]
    assert rig.module.forwarded()[-1] == (b"new session", DEVICE_1)


def test_status_in_error_state_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.8.2 step 2.3: a status in ERROR state → WARNING "Ignoring device status with
    unknown state: 2.", not forwarded, no response; the device stays registered."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, ERROR, c, DEVICE_1, b"error state")
    assert rig.take() == []
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"mine")
    assert status_counters(rig.take()) == [c + 1]
    assert logged(caplog.records, f"unknown state: {int(ERROR)}", logging.WARNING)
    assert rig.module.forwarded() == [(b"mine", DEVICE_1)]
    assert rig.core.registry.devices() == [DEVICE_1]


def test_connecting_of_device_refused_by_module(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.8.2 step 2.3 (CONNECTING, ``device_connected`` non-OK): not registered, not
    forwarded, not answered, ERROR logged and counted."""
    refused = Device(MODULE, 0, "refused", "Refused")
    rig = CoreRig(modules={MODULE: ScriptedModule(refused_roles={"refused"})})
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, CONNECTING, c, refused)
    assert rig.take() == []
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1)
    assert status_counters(rig.take()) == [c + 1]
    assert not rig.core.registry.is_registered(refused)
    assert logged(caplog.records, "refused device", logging.ERROR)
    assert rig.core.stats.module_errors["device_connected"] == 1
    assert rig.module.forwarded() == [(b"", DEVICE_1)]


def test_connecting_of_registered_device_is_answered() -> None:
    """docs/protocol.md §10.2 and §4.15 #2 (decision): a CONNECTING status of an already registered
    device is forwarded and answered; no second ``device_connected``."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, CONNECTING, c, DEVICE_1, b"again")
    assert [m.SerializeToString() for m in rig.take()] == [status_response_bytes(SESSION_ID, c)]
    assert rig.module.forwarded() == [(b"again", DEVICE_1)]
    assert rig.module.connected() == []
    assert rig.core.registry.devices() == [DEVICE_1]


def test_baseline_adopted_unconditionally_in_later_session() -> None:
    """docs/protocol.md §4.10 and §10.6 (decision): the first normal status sets the baseline whatever
    its counter — even 0 in a later session (the reference would ignore it: 0 < E = 1)."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, DISCONNECT, c, DEVICE_1)
    assert status_counters(rig.take()) == [c]
    assert rig.reset_reasons() == ["all_devices_disconnected"]
    rig.advance(D)
    rig.run_sequence("second", [DEVICE_1])
    rig.status("second", RUNNING, 0, DEVICE_1)
    rig.status("second", RUNNING, 1, DEVICE_1)
    assert status_counters(rig.take()) == [0, 1]


def test_duplicate_held_status_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.10 (duplicates) and §10.8 (decision): a second held status with the same
    counter is dropped with a WARNING (the reference crashes and resets); the first copy is released,
    forwarded and answered once."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"s0")
    rig.status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"s2")
    rig.status(SESSION_ID, RUNNING, c + 2, DEVICE_1, b"s2 again")
    assert status_counters(rig.take()) == [c]
    assert rig.core.stats.ignored["duplicate_status_counter"] == 1
    assert logged(caplog.records, "duplicate", logging.WARNING)
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"s1")
    rig.status(SESSION_ID, RUNNING, c + 3, DEVICE_1, b"s3")
    assert status_counters(rig.take()) == [c + 1, c + 2, c + 3]
    assert [data for data, _ in rig.module.forwarded()] == [b"s0", b"s1", b"s2", b"s3"]
    assert rig.resets == []


def test_identity_ignores_name_and_priority() -> None:
    """docs/protocol.md §4.9: identity is (module, type, role): statuses carrying another name and
    priority belong to the registered device; ``forward_status`` and the DISCONNECT's
    ``device_disconnected`` get the device exactly as the status carried it."""
    renamed = Device(DEVICE_1.module, DEVICE_1.device_type, DEVICE_1.role, "Renamed", 3)
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1, DEVICE_2])
    rig.status(SESSION_ID, RUNNING, c, renamed, b"renamed")
    rig.status(SESSION_ID, DISCONNECT, c + 1, renamed, b"bye")
    assert status_counters(rig.take()) == [c, c + 1]
    assert rig.module.forwarded() == [(b"renamed", renamed), (b"bye", renamed)]
    assert rig.module.disconnected() == [(DISCONNECT_ANNOUNCED, renamed)]
    assert rig.module.disconnected()[0][1].priority == 3
    assert rig.core.registry.devices() == [DEVICE_2]


def test_first_device_of_module_registered_again_discards_stale_commands() -> None:
    """docs/protocol.md §4.8.2 step 2.3 (the module's first registered device drops its buffered
    commands) with §4.8.3 step 5: after DEVICE_NOT_CONNECTED left module 1000 without a device, a
    command it produced is buffered (not sent); device 1's CONNECTING registers it again and drops
    that command, so the next command the car receives is a fresh one."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.module_commands([command(DEVICE_1, b"to be answered DEVICE_NOT_CONNECTED")])
    counter = commands_of(rig.take())[0].messageCounter
    assert counter == 1
    rig.command_response(SESSION_ID, counter, DEVICE_NOT_CONNECTED)
    assert rig.core.registry.devices() == []
    rig.module_commands([command(DEVICE_1, b"stale")])
    assert len(rig.core.command_queues[MODULE]) == 1
    assert rig.take() == []
    rig.status(SESSION_ID, CONNECTING, c, DEVICE_1, b"back")
    assert status_counters(rig.take()) == [c]
    assert rig.core.registry.devices() == [DEVICE_1]
    assert rig.core.stats.commands_dropped["stale"] == 1
    rig.module_commands([command(DEVICE_1, b"fresh")])
    fresh = commands_of(rig.take())
    assert [(f.messageCounter, f.deviceCommand.commandData) for f in fresh] == [(counter + 1, b"fresh")]
    assert rig.core.state == CarState.RUNNING


def test_command_produced_in_device_connected_of_new_device_is_sent() -> None:
    """docs/protocol.md §4.8.2 step 2.3, §4.8.5 and §4.4 ("This implementation"): a command the module
    produces inside ``device_connected`` for a device that connects in normal communication is
    drained right after the call and published right after the StatusResponse — deterministically."""
    module = ScriptedModule(on_device_connected=lambda device: [QueuedCommand(b"hello", device)])
    rig = CoreRig(modules={MODULE: module})
    rig.run_sequence(SESSION_ID, [DEVICE_1])  # its first command is the greeting
    module.calls.clear()
    rig.status(SESSION_ID, CONNECTING, 2, NEW_DEVICE)
    out = rig.take()
    assert kinds(out) == ["statusResponse", "command"]
    assert (out[1].command.deviceCommand.commandData, out[1].command.deviceCommand.device.deviceRole) == (
        b"hello",
        "io_button",
    )
    assert [type(call) for call in module.calls[:3]] == [
        IsDeviceTypeSupported,
        DeviceConnected,
        DrainCommands,
    ]


# --------------------------------------------------------------------------------------
# §8.10 — Connect, unknown messages, session timer, broker loss, publish failure
# --------------------------------------------------------------------------------------


def test_connect_with_current_id_answered_already_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 166 (docs/protocol.md §4.8.1, §10.3): a Connect with the current id in RUNNING
    state → INFO "already existing session" and exactly ``ConnectResponse{id, ALREADY_LOGGED}``;
    nothing else changes (no ``device_connected``, registry as before, the session goes on)."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.connect(SESSION_ID, [DEVICE_1, DEVICE_2])
    expected = ext.ExternalServer(
        connectResponse=ext.ConnectResponse(sessionId=SESSION_ID, type=ext.ConnectResponse.ALREADY_LOGGED)
    ).SerializeToString()
    assert [m.SerializeToString() for m in rig.take()] == [expected]
    assert logged(caplog.records, "already existing session", logging.INFO)
    assert rig.core.registry.devices() == [DEVICE_1]
    assert rig.module.calls == []
    assert rig.core.state == CarState.RUNNING
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1)
    assert status_counters(rig.take()) == [c]
    assert rig.resets == []


def test_connect_with_other_id_resets_unanswered_and_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 167 (docs/protocol.md §4.8.1, §4.14 row 10): a Connect with another id in RUNNING
    state → no WARNING but the reset's own, the Connect is not answered and not kept (the next phase A
    times out); a repeated Connect then starts the new session."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    caplog.clear()
    rig.connect("other", [DEVICE_1])
    assert rig.reset_reasons() == ["new_session"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "Session reset (new_session)" in warnings[0].getMessage()
    assert "not matching current one" in warnings[0].getMessage()
    assert rig.take() == []
    rig.advance(D + T)
    assert rig.reset_reasons() == ["new_session", "no_connect"]
    assert rig.take() == []
    rig.advance(D)
    rig.run_sequence("other", [DEVICE_1])
    assert rig.core.session_id == "other"


def test_message_of_unknown_type_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.8.4 and §2.1 (the nearest observable neighbour of item 169): an empty payload
    (no oneof member) → WARNING "Received message of unknown type. Ignoring.", an unparsable payload
    → WARNING "not a valid ExternalClient"; both ignored and counted, the session goes on."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.send_raw(b"")
    rig.send_raw(b"\xff\xff\xff")
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1)
    assert status_counters(rig.take()) == [c]
    assert logged(caplog.records, "Received message of unknown type. Ignoring.", logging.WARNING)
    assert logged(caplog.records, "not a valid ExternalClient", logging.WARNING)
    assert rig.core.stats.ignored["unknown_type"] == 1
    assert sum(rig.core.stats.invalid_messages.values()) == 1
    assert rig.core.state == CarState.RUNNING


def test_session_timeout_without_messages(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 170 (docs/protocol.md §4.12, §4.13 step 7, §4.14 row 12): no message in normal
    communication → SESSION_TIMEOUT reset exactly S after RUNNING began (WARNING "Session timeout");
    the clean-up calls ``device_disconnected(timeout)`` for every device in registration order with
    the stored copy (priority 0) although the Connect announced priority 2."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1.with_priority(2), DEVICE_2.with_priority(2)])
    running_at = rig.now
    assert rig.armed == running_at + S
    rig.advance(S - 0.125)
    assert rig.resets == []
    rig.advance(0.125)
    assert rig.reset_reasons() == ["session_timeout"]
    assert rig.now == running_at + S
    record = reset_record(caplog.records, "session_timeout")
    assert record.levelno == logging.WARNING
    assert "Session timeout" in record.getMessage()
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, DEVICE_1), (DISCONNECT_TIMEOUT, DEVICE_2)]
    assert all(device.priority == 0 for _, device in rig.module.disconnected())


@pytest.mark.parametrize("kind", ["status", "ignored_status", "command_response"])
def test_current_session_message_restarts_session_timer(kind: str) -> None:
    """Checklist item 171 (docs/protocol.md §4.12): a status (even one that is then ignored) or a
    command response with the current session id at S/2 → no session timeout at S; the timeout comes
    exactly S after that message."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.advance(S / 2)
    sent_at = rig.now
    if kind == "status":
        rig.status(SESSION_ID, RUNNING, c, DEVICE_1)
        assert status_counters(rig.take()) == [c]
    elif kind == "ignored_status":  # released by the order checker, then ignored (not connected)
        rig.status(SESSION_ID, RUNNING, c, NEW_DEVICE)
        assert rig.take() == []
    else:  # nothing pending: it releases nothing
        rig.command_response(SESSION_ID, 99)
    assert rig.armed == sent_at + S
    rig.advance(S / 2 + 0.25)
    assert rig.resets == []
    assert rig.core.state == CarState.RUNNING
    rig.advance(S / 2 - 0.25)
    assert rig.reset_reasons() == ["session_timeout"]
    assert rig.now == sent_at + S


@pytest.mark.parametrize("kind", ["connect_same_id", "foreign_status", "foreign_command_response"])
def test_other_messages_do_not_restart_session_timer(kind: str) -> None:
    """docs/protocol.md §4.8.1 and §4.12: a Connect with the current id, and statuses / command responses
    of another session, do not restart the session timer: the timeout still comes exactly S after
    normal communication started."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    running_at = rig.now
    rig.advance(S / 2)
    if kind == "connect_same_id":
        rig.connect(SESSION_ID, [DEVICE_1])
        assert rig.take()[0].connectResponse.type == ext.ConnectResponse.ALREADY_LOGGED
    elif kind == "foreign_status":
        rig.status("foreign", RUNNING, c, DEVICE_1)
    else:
        rig.command_response("foreign", 0)
    assert rig.armed == running_at + S
    rig.advance(S / 2)
    assert rig.reset_reasons() == ["session_timeout"]
    assert rig.now == running_at + S


def test_broker_loss_resets_session_and_reconnect_works(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist items 172 and 173 (docs/protocol.md §4.8, §4.14 row 15, §4.13): the broker goes away
    mid-session → "Unexpected disconnection of MQTT client." reset (WARNING), state ERROR, no
    notification (not connected), devices get ``device_disconnected(timeout)``; after D the core waits
    for the broker (UNINITIALIZED); once it is back a new sequence works and the command counter
    continues."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    start = len(rig.states)
    rig.broker(False)
    assert rig.reset_reasons() == ["broker_lost"]
    assert rig.states_since(start)[0] == CarState.ERROR
    assert not rig.core.broker_connected
    record = reset_record(caplog.records, "broker_lost")
    assert record.levelno == logging.WARNING
    assert "Unexpected disconnection of MQTT client." in record.getMessage()
    assert rig.notifications == 0
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, DEVICE_1)]
    assert rig.core.registry.devices() == []
    rig.advance(D + S)
    assert rig.states[-1] == CarState.UNINITIALIZED
    rig.broker(True)
    commands = rig.run_sequence("after_outage", [DEVICE_1])
    assert [command.messageCounter for command in commands] == [1]
    rig.status("after_outage", RUNNING, 2, DEVICE_1, b"back")
    assert status_counters(rig.take()) == [2]
    assert rig.module.forwarded()[-1] == (b"back", DEVICE_1)


@pytest.mark.parametrize("kind", ["status_response", "command", "connect_response"])
def test_publish_failure_in_normal_communication_logged_at_error(
    caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """docs/protocol.md §4.14 row 8 and §10.14: a publish that fails in normal communication (a
    StatusResponse, a module Command or an ALREADY_LOGGED ConnectResponse) resets the session, logged
    at ERROR; devices still registered get ``device_disconnected(timeout)``."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1, DEVICE_2])
    rig.fail_publish_of = lambda publish: publish.kind == kind
    if kind == "status_response":
        rig.status(SESSION_ID, RUNNING, c, DEVICE_1)
    elif kind == "command":
        rig.module_commands([command(DEVICE_1, b"cmd")])
    else:
        rig.connect(SESSION_ID, [DEVICE_1])
    assert rig.reset_reasons() == ["publish_failed"]
    assert rig.resets[0].level == logging.ERROR
    assert reset_record(caplog.records, "publish_failed").levelno == logging.ERROR
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, DEVICE_1), (DISCONNECT_TIMEOUT, DEVICE_2)]


def test_failed_publish_ends_the_session_where_it_happened() -> None:
    """docs/protocol.md §4.14 row 8: a failed publish ends the session at that point — messages queued
    behind the one whose answer could not be published are not handled any more (not parsed, not
    answered, not forwarded) before the reset; the clean-up drops them."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.hold_calls = lambda call: isinstance(call.call, ForwardStatus)
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"answered")
    rig.connect(SESSION_ID, [DEVICE_1])  # would get ALREADY_LOGGED
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_1, b"behind")
    messages_in = sum(rig.core.stats.messages_in.values())
    rig.fail_publish_of = lambda publish: publish.kind == "status_response"
    rig.hold_calls = lambda call: False
    rig.release_held()
    assert rig.reset_reasons() == ["publish_failed"]
    assert sum(rig.core.stats.messages_in.values()) == messages_in
    assert rig.core.stats.messages_out["connect_response"] == 1  # only phase A's
    assert rig.module.forwarded() == [(b"answered", DEVICE_1)]


# --------------------------------------------------------------------------------------
# §8.11 — commands and command responses
# --------------------------------------------------------------------------------------


def test_module_command_published_exactly() -> None:
    """Checklist item 174 (docs/protocol.md §4.8.5, §2.4): a module command for a registered device →
    exactly ``Command{id, N, {device, "cmd"}}`` with the next counter (N = 1 after one first command;
    the checklist's "0" assumes no first commands), its timer T armed."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(DEVICE_1, b"cmd")])
    assert [m.SerializeToString() for m in rig.take()] == [command_bytes(SESSION_ID, 1, DEVICE_1, b"cmd")]
    assert rig.pending_counters() == [1]
    assert rig.armed == rig.now + T


@pytest.mark.parametrize("send_invalid_command", [True, False], ids=["send_invalid", "drop_invalid"])
def test_command_with_other_module_number(
    caplog: pytest.LogCaptureFixture, send_invalid_command: bool
) -> None:
    """Checklist item 175 (docs/protocol.md §4.8.5, §10.8): a command of module 1000's queue whose device
    says module 1001 → WARNING; published iff ``send_invalid_command`` (when dropped it takes no
    counter); acknowledging the invalid one (no module 1001) does not break the session."""
    invalid = Device(UNCONFIGURED_MODULE, 0, "other_module", "Other")
    rig = CoreRig(send_invalid_command=send_invalid_command)
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(invalid, b"invalid"), command(DEVICE_1, b"valid")])
    commands = commands_of(rig.take())
    if send_invalid_command:
        assert [(c.messageCounter, c.deviceCommand.commandData) for c in commands] == [
            (1, b"invalid"),
            (2, b"valid"),
        ]
        assert commands[0].deviceCommand.device.module == UNCONFIGURED_MODULE
        assert logged(caplog.records, "module mismatch", logging.WARNING)
        rig.command_response(SESSION_ID, 1)
        rig.command_response(SESSION_ID, 2)
    else:
        assert [(c.messageCounter, c.deviceCommand.commandData) for c in commands] == [(1, b"valid")]
        assert logged(caplog.records, "different module number; dropped", logging.WARNING)
        assert rig.core.stats.commands_dropped["module_mismatch"] == 1
        rig.command_response(SESSION_ID, 1)
    assert rig.pending_counters() == []
    assert rig.module.acks() == [(b"valid", DEVICE_1)]
    assert rig.core.state == CarState.RUNNING


def test_empty_command_published_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 176 (docs/protocol.md §4.8.5): a module command with empty data is published,
    with a WARNING."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(DEVICE_1, b"")])
    commands = commands_of(rig.take())
    assert [(c.messageCounter, c.deviceCommand.commandData) for c in commands] == [(1, b"")]
    assert logged(caplog.records, "empty command", logging.WARNING)


def test_command_for_unregistered_device_published_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 177 (docs/protocol.md §4.8.5, §4.8.3 step 3): a module command for a device that is
    not registered is still published, with a WARNING containing "not connected"; its response is
    acknowledged to the module although the device is not registered."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(GHOST, b"boo")])
    commands = commands_of(rig.take())
    assert [(c.deviceCommand.device.deviceRole, c.deviceCommand.commandData) for c in commands] == [
        ("ghost", b"boo")
    ]
    assert logged(caplog.records, "not connected", logging.WARNING)
    rig.command_response(SESSION_ID, commands[0].messageCounter)
    assert rig.module.acks() == [(b"boo", GHOST)]
    assert not rig.core.registry.is_registered(GHOST)


def test_response_releases_pending_command(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist items 178 and 181 (docs/protocol.md §4.8.3 step 3, §4.11): a command sent in normal
    communication is pending (timer T armed); its CommandResponse releases it (nothing pending, INFO
    "acknowledged 1 command(s)", only the session timer left) and the module gets ``command_ack``
    with the command."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(DEVICE_1, b"cmd")])
    counter = commands_of(rig.take())[0].messageCounter
    assert rig.pending_counters() == [counter]
    rig.advance(0.25)
    rig.command_response(SESSION_ID, counter)
    assert rig.pending_counters() == []
    assert rig.module.acks() == [(b"cmd", DEVICE_1)]
    assert logged(
        caplog.records, f"Command response with counter {counter} acknowledged 1 command(s).", logging.INFO
    )
    assert rig.armed == rig.now + S


def test_foreign_session_response_then_right_one(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist items 179 and 183 (docs/protocol.md §4.8.3 step 1): a response with another session id
    → INFO containing "session ID", the command stays pending, no ``command_ack``; the right response
    then releases it; no failure."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(DEVICE_1, b"cmd")])
    counter = commands_of(rig.take())[0].messageCounter
    rig.command_response("other_session", counter)
    assert rig.core.stats.ignored["foreign_session"] == 1
    assert logged(caplog.records, "different session ID 'other_session'", logging.INFO)
    assert rig.pending_counters() == [counter]
    assert rig.module.acks() == []
    rig.command_response(SESSION_ID, counter)
    assert rig.pending_counters() == []
    assert rig.module.acks() == [(b"cmd", DEVICE_1)]
    assert rig.resets == []


def test_unanswered_command_resets_and_new_session_works(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist items 180 and 190 (docs/protocol.md §4.11, §4.13 step 5, §4.14 row 14): no response for
    T → COMMAND_RESPONSE_TIMEOUT reset exactly T after the command was sent; the pending command gets
    no ``command_ack`` (counted, WARNING); a new sequence "new_id" continues the counter and its
    RUNNING status reaches the module."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.advance(0.25)
    rig.module_commands([command(DEVICE_1, b"never answered")])
    sent_at = rig.now
    counter = commands_of(rig.take())[0].messageCounter
    assert rig.armed == sent_at + T
    rig.advance(T - 0.125)
    assert rig.resets == []
    rig.advance(0.125)
    assert rig.reset_reasons() == ["command_response_timeout"]
    assert rig.now == sent_at + T
    assert reset_record(caplog.records, "command_response_timeout").levelno == logging.WARNING
    assert rig.module.acks() == []
    assert rig.core.stats.commands_dropped["unacknowledged_at_reset"] == 1
    rig.advance(D)
    commands = rig.run_sequence("new_id", [DEVICE_1])
    assert [c.messageCounter for c in commands] == [counter + 1]
    rig.status("new_id", RUNNING, 2, DEVICE_1, b"new session")
    assert status_counters(rig.take()) == [2]
    assert rig.module.forwarded()[-1] == (b"new session", DEVICE_1)


def test_response_without_pending_command(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 182 (docs/protocol.md §4.8.3 step 4): a response while no command is pending →
    INFO containing "no commands"; ignored, no ``command_ack``."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.command_response(SESSION_ID, 42)
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1)
    assert status_counters(rig.take()) == [c]
    assert logged(caplog.records, "no commands", logging.INFO)
    assert rig.module.acks() == []
    assert rig.core.state == CarState.RUNNING


def test_response_with_wrong_counter_keeps_command_pending(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 184 (docs/protocol.md §4.8.3 step 4, §4.11): pending command c, response c+1 →
    INFO containing "counter c+1", c stays pending; its own response releases it."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(DEVICE_1, b"cmd")])
    counter = commands_of(rig.take())[0].messageCounter
    rig.command_response(SESSION_ID, counter + 1)
    assert logged(caplog.records, f"counter {counter + 1}", logging.INFO)
    assert rig.pending_counters() == [counter]
    assert rig.module.acks() == []
    rig.command_response(SESSION_ID, counter)
    assert rig.pending_counters() == []


def test_device_not_connected_unregisters_that_device() -> None:
    """Checklist item 185 (docs/protocol.md §4.8.3 steps 2–3): devices 1, 2 and a command to device 1;
    DEVICE_NOT_CONNECTED for it → device 1 unregistered (``device_disconnected(announced)``), device 2
    stays, the command is still acknowledged to the module; no reset."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1, DEVICE_2])
    rig.module_commands([command(DEVICE_1, b"cmd")])
    counter = commands_of(rig.take())[0].messageCounter
    rig.command_response(SESSION_ID, counter, DEVICE_NOT_CONNECTED)
    assert rig.pending_counters() == []
    assert rig.core.registry.devices() == [DEVICE_2]
    assert rig.module.disconnected() == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
    assert rig.module.acks() == [(b"cmd", DEVICE_1)]
    assert rig.core.state == CarState.RUNNING


def test_device_not_connected_for_newer_pending_command() -> None:
    """Checklist item 186 (docs/protocol.md §4.8.3 step 2, §4.11, §9 107ed5e): commands c, c+1 to device
    1; DEVICE_NOT_CONNECTED(c+1) (not the oldest) → device 1 unregistered anyway; c+1 is only
    early-acknowledged, and both are acknowledged to the module in order once c is answered."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1, DEVICE_2])
    rig.module_commands([command(DEVICE_1, b"first"), command(DEVICE_1, b"second")])
    c = commands_of(rig.take())[0].messageCounter
    rig.command_response(SESSION_ID, c + 1, DEVICE_NOT_CONNECTED)
    assert rig.core.registry.devices() == [DEVICE_2]
    assert rig.module.disconnected() == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
    assert rig.pending_counters() == [c, c + 1]
    assert rig.core.command_tracker.early_acknowledgements() == {c + 1}
    assert rig.module.acks() == []
    rig.command_response(SESSION_ID, c)
    assert rig.pending_counters() == []
    assert rig.module.acks() == [(b"first", DEVICE_1), (b"second", DEVICE_1)]


def test_device_not_connected_for_unknown_counter(caplog: pytest.LogCaptureFixture) -> None:
    """Checklist item 187 (docs/protocol.md §4.8.3 steps 2 and 4): commands c, c+1;
    DEVICE_NOT_CONNECTED(c+2) → INFO "unknown command counter", nothing unregistered, nothing
    released, no module call."""
    caplog.set_level(logging.INFO)
    rig = CoreRig()
    open_session(rig, [DEVICE_1, DEVICE_2])
    rig.module_commands([command(DEVICE_1, b"first"), command(DEVICE_1, b"second")])
    c = commands_of(rig.take())[0].messageCounter
    rig.module.calls.clear()
    rig.command_response(SESSION_ID, c + 2, DEVICE_NOT_CONNECTED)
    assert logged(caplog.records, f"unknown command counter {c + 2}", logging.INFO)
    assert rig.core.registry.devices() == [DEVICE_1, DEVICE_2]
    assert rig.pending_counters() == [c, c + 1]
    assert rig.module.calls == []


def test_device_not_connected_of_last_device_resets_on_next_status() -> None:
    """docs/protocol.md §4.8.3 step 5: DEVICE_NOT_CONNECTED for the only device does not reset at once;
    the next status of the current session (not answered: the device is unknown now) detects "all
    devices disconnected" and resets."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.module_commands([command(DEVICE_1, b"cmd")])
    counter = commands_of(rig.take())[0].messageCounter
    rig.command_response(SESSION_ID, counter, DEVICE_NOT_CONNECTED)
    assert rig.module.acks() == [(b"cmd", DEVICE_1)]
    assert rig.core.registry.devices() == []
    assert rig.core.state == CarState.RUNNING
    assert rig.resets == []
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1)
    assert rig.reset_reasons() == ["all_devices_disconnected"]
    assert rig.take() == []


def test_command_carries_the_device_name_and_role() -> None:
    """Checklist item 188 (docs/protocol.md §4.8.5): a command produced after the sequence reaches the
    car with the device's module, type, role and name (here the second of two devices)."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1, DEVICE_2])
    rig.module_commands([command(DEVICE_2, b"to device 2")])
    device = commands_of(rig.take())[0].deviceCommand.device
    assert (device.module, device.deviceType, device.deviceRole, device.deviceName) == (
        MODULE,
        0,
        "role_2",
        "Device 2",
    )


def test_commands_sent_without_waiting_for_responses() -> None:
    """Checklist item 189 (docs/protocol.md §4.8.5, §4.11): three commands at once, only the response to
    the second one → the car still receives all three (counters 1, 2, 3); response 2 is an early
    acknowledgement; response 1 then releases 1 and 2, response 3 releases 3 — ``command_ack`` in
    counter order."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(DEVICE_1, b"a"), command(DEVICE_1, b"b"), command(DEVICE_1, b"c")])
    commands = commands_of(rig.take())
    assert [(c.messageCounter, c.deviceCommand.commandData) for c in commands] == [
        (1, b"a"),
        (2, b"b"),
        (3, b"c"),
    ]
    rig.command_response(SESSION_ID, 2)
    assert rig.core.command_tracker.early_acknowledgements() == {2}
    assert rig.module.acks() == []
    rig.command_response(SESSION_ID, 1)
    assert rig.pending_counters() == [3]
    assert rig.module.acks() == [(b"a", DEVICE_1), (b"b", DEVICE_1)]
    rig.command_response(SESSION_ID, 3)
    assert rig.pending_counters() == []
    assert [data for data, _ in rig.module.acks()] == [b"a", b"b", b"c"]


def test_commands_queued_during_connect_sequence_are_flushed() -> None:
    """docs/protocol.md §4.8 (note) and §10.7 (decision): a module command queued while the connect
    sequence waits for the first command responses is sent as soon as normal communication starts,
    without another command-available signal."""
    rig = CoreRig()
    rig.connect(SESSION_ID, [DEVICE_1])
    rig.status(SESSION_ID, CONNECTING, 1, DEVICE_1)
    assert kinds(rig.take()) == ["connectResponse", "statusResponse", "command"]
    rig.module_commands([command(DEVICE_1, b"queued meanwhile")])
    assert len(rig.core.command_queues[MODULE]) == 1
    assert rig.take() == []
    rig.command_response(SESSION_ID, 0)
    commands = commands_of(rig.take())
    assert [(c.messageCounter, c.deviceCommand.commandData) for c in commands] == [(1, b"queued meanwhile")]
    assert rig.core.state == CarState.RUNNING


def test_unreleased_first_command_times_out_in_normal_communication() -> None:
    """docs/protocol.md §4.7 and §4.11 (timers authoritative, §10.7): phase D counts any current-session
    response; answering first command 1 twice leaves commands 0 and 1 pending, and command 0's timer
    stays effective in normal communication → COMMAND_RESPONSE_TIMEOUT exactly T after it was sent."""
    rig = CoreRig()
    rig.connect(SESSION_ID, [DEVICE_1, DEVICE_2])
    rig.status(SESSION_ID, CONNECTING, 1, DEVICE_1)
    rig.status(SESSION_ID, CONNECTING, 2, DEVICE_2)
    sent_at = rig.now
    rig.take()
    rig.command_response(SESSION_ID, 1)
    rig.command_response(SESSION_ID, 1)
    assert rig.core.state == CarState.RUNNING
    assert rig.pending_counters() == [0, 1]
    assert rig.armed == sent_at + T
    rig.advance(T)
    assert rig.reset_reasons() == ["command_response_timeout"]
    assert rig.now == sent_at + T


def test_early_acknowledgement_does_not_stop_older_command_timer() -> None:
    """docs/protocol.md §4.11: commands c, c+1; only c+1 is answered → c+1 waits as an early
    acknowledgement and c's timer still expires → COMMAND_RESPONSE_TIMEOUT exactly T after c was sent,
    no ``command_ack``."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(DEVICE_1, b"older")])
    sent_at = rig.now
    rig.advance(0.25)
    rig.module_commands([command(DEVICE_1, b"newer")])
    c = commands_of(rig.take())[0].messageCounter
    rig.command_response(SESSION_ID, c + 1)
    assert rig.core.command_tracker.early_acknowledgements() == {c + 1}
    assert rig.armed == sent_at + T
    rig.advance(T - 0.25)
    assert rig.reset_reasons() == ["command_response_timeout"]
    assert rig.now == sent_at + T
    assert rig.module.acks() == []


def test_device_not_connected_for_an_unregistered_device_leaves_the_module_alone() -> None:
    """docs/protocol.md §4.8.3 steps 2–3 as this implementation decides it (docs/design.md; the
    reference's quirk of calling the module anyway is dropped): DEVICE_NOT_CONNECTED for a command to a
    device the server never registered releases the command (``command_ack``) but calls no
    ``device_disconnected`` — there is nothing to disconnect; no module error, no reset."""
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(GHOST, b"boo")])
    counter = commands_of(rig.take())[0].messageCounter
    rig.command_response(SESSION_ID, counter, DEVICE_NOT_CONNECTED)
    assert rig.module.acks() == [(b"boo", GHOST)]
    assert rig.module.disconnected() == []
    assert rig.core.registry.devices() == [DEVICE_1]
    assert not rig.core.stats.module_errors
    assert rig.core.state == CarState.RUNNING


@pytest.mark.parametrize(
    ("rc", "level", "text"),
    [
        pytest.param(NOT_OK, logging.WARNING, "not among connected devices", id="NOT_OK"),
        pytest.param(CONTEXT_INCORRECT, logging.ERROR, "context incorrect", id="CONTEXT_INCORRECT"),
        pytest.param(TIMEOUT_OCCURRED, logging.ERROR, "Error in device_disconnected", id="other"),
    ],
)
def test_device_disconnected_return_codes_only_logged(
    caplog: pytest.LogCaptureFixture, rc: int, level: int, text: str
) -> None:
    """docs/protocol.md §4.14 (module return codes) with §4.8.3 step 2: a ``device_disconnected`` for
    DEVICE_NOT_CONNECTED that returns NOT_OK is logged as WARNING "not among connected devices",
    CONTEXT_INCORRECT as ERROR "Context incorrect", any other code as ERROR "Error in
    device_disconnected"; counted, never a reset."""
    rig = CoreRig(modules={MODULE: ScriptedModule(disconnect_rc=rc)})
    open_session(rig, [DEVICE_1, DEVICE_2])
    rig.module_commands([command(DEVICE_1, b"cmd")])
    counter = commands_of(rig.take())[0].messageCounter
    rig.command_response(SESSION_ID, counter, DEVICE_NOT_CONNECTED)
    assert rig.module.disconnected() == [(DISCONNECT_ANNOUNCED, DEVICE_1)]
    assert any(
        record.levelno == level and text.lower() in record.getMessage().lower() for record in caplog.records
    )
    assert rig.core.stats.module_errors["device_disconnected"] == 1
    assert rig.core.state == CarState.RUNNING
    assert rig.resets == []


# --------------------------------------------------------------------------------------
# module errors, queue overflow, stop, latency
# --------------------------------------------------------------------------------------


def test_module_return_codes_never_reset(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.14 (a module's return code never resets the session): failing
    ``forward_status``, ``forward_error_message`` and ``command_ack`` are logged at ERROR and counted;
    the status is still answered and the command released."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.module.forward_rc = NOT_OK
    rig.module.error_rc = NOT_OK
    rig.module.ack_rc = NOT_OK
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"s", b"e")
    assert status_counters(rig.take()) == [c]
    rig.module_commands([command(DEVICE_1, b"cmd")])
    counter = commands_of(rig.take())[0].messageCounter
    rig.command_response(SESSION_ID, counter)
    assert rig.pending_counters() == []
    errors = rig.core.stats.module_errors
    assert (errors["forward_status"], errors["forward_error_message"], errors["command_ack"]) == (1, 1, 1)
    for text in ("forward_status of module 1000 failed", "forward_error_message of module", "command_ack of"):
        assert logged(caplog.records, text, logging.ERROR)
    assert rig.resets == []
    assert rig.core.state == CarState.RUNNING


def test_module_call_raising_is_an_unexpected_error(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §4.14 row 17: a module call that raises instead of returning (``CallDone`` with
    an error) ends the session with reason unexpected_error, logged at ERROR with the traceback; the
    clean-up still runs and the next run starts after D."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.call_error = lambda call: "segfault-ish" if isinstance(call.call, ForwardStatus) else None
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1)
    rig.call_error = lambda call: None
    assert rig.reset_reasons() == ["unexpected_error"]
    assert rig.resets[0].level == logging.ERROR
    assert logged(caplog.records, "Unexpected error in the car session", logging.ERROR)
    assert rig.take() == []
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, DEVICE_1)]
    rig.advance(D)
    assert rig.states[-1] == CarState.CONNECTED


def test_queue_overflow_drops_new_messages_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    """docs/protocol.md §10.16 and §4.8 (one queue per car; this implementation bounds it): while the
    session is busy (a module call pending), car messages beyond the queue limit are dropped and
    counted, with one WARNING per overflow episode; the queued ones are handled in order afterwards,
    and a later episode is logged again."""
    rig = CoreRig(queue_limit=3)
    c = open_session(rig, [DEVICE_1])
    rig.hold_calls = lambda call: isinstance(call.call, ForwardStatus)
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"busy")  # being handled: not in the queue
    for counter in range(c + 1, c + 6):  # three fit, two are dropped
        rig.status(SESSION_ID, RUNNING, counter, DEVICE_1, bytes([counter]))
    assert rig.core.stats.dropped_overflow == 2
    overflow = [r for r in caplog.records if "Incoming queue full (3 events)" in r.getMessage()]
    assert [r.levelno for r in overflow] == [logging.WARNING]
    rig.hold_calls = lambda call: False
    while rig.held:
        rig.release_held()
    assert status_counters(rig.take()) == [c, c + 1, c + 2, c + 3]
    assert rig.core.stats.last_message_at == rig.now
    rig.hold_calls = lambda call: isinstance(call.call, ForwardStatus)
    rig.status(SESSION_ID, RUNNING, c + 4, DEVICE_1)
    for counter in range(c + 5, c + 10):
        rig.status(SESSION_ID, RUNNING, counter, DEVICE_1)
    assert rig.core.stats.dropped_overflow == 4
    assert len([r for r in caplog.records if "Incoming queue full" in r.getMessage()]) == 2


def test_stop_in_normal_communication_cleans_up_and_finishes() -> None:
    """docs/protocol.md §4.8 (server stopped → the loop ends), §4.13: Stop is handled after the messages
    already queued before it; the clean-up publishes the notification and calls
    ``device_disconnected(timeout)`` for every device; no reset is counted, state STOPPED, Finished,
    nothing armed afterwards matters."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1, DEVICE_2])
    rig.hold_calls = lambda call: isinstance(call.call, ForwardStatus)
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1, b"before stop")
    rig.status(SESSION_ID, RUNNING, c + 1, DEVICE_2, b"queued before stop")
    rig.stop()
    rig.hold_calls = lambda call: False
    while rig.held:
        rig.release_held()
    assert status_counters(rig.take()) == [c, c + 1]
    assert rig.resets == []
    assert rig.notifications == 1
    assert rig.module.disconnected() == [(DISCONNECT_TIMEOUT, DEVICE_1), (DISCONNECT_TIMEOUT, DEVICE_2)]
    assert rig.core.state == CarState.STOPPED
    assert rig.finished
    rig.advance(10 * S)
    assert rig.resets == []


def test_status_latency_is_observed_for_answered_statuses() -> None:
    """docs/protocol.md §4.8.2 step 4 (this implementation's metrics): the time from a status's arrival
    to its StatusResponse is reported to the latency observer — including time spent in the module —
    for answered statuses only."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.latencies.clear()
    rig.hold_calls = lambda call: isinstance(call.call, ForwardStatus)
    rig.status(SESSION_ID, RUNNING, c, DEVICE_1)
    rig.advance(0.25)
    rig.hold_calls = lambda call: False
    rig.release_held()
    assert status_counters(rig.take()) == [c]
    rig.status(SESSION_ID, RUNNING, c + 1, NEW_DEVICE)  # not answered: not observed
    rig.status(SESSION_ID, RUNNING, c + 2, DEVICE_1)
    assert rig.latencies == [0.25, 0.0]


def test_commands_from_module_without_registered_device_keep_only_newest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/protocol.md §5.7 (no connected device of the module: only the newest of a batch is kept)
    and §4.8.5 (commands are signalled only while a device of the module is registered): after the
    module's last device left, a batch of three is reduced to its newest, counted and logged, and not
    sent."""
    rig = CoreRig()
    c = open_session(rig, [DEVICE_1])
    rig.status(SESSION_ID, DISCONNECT, c, DEVICE_1)
    rig.take()
    assert rig.reset_reasons() == ["all_devices_disconnected"]
    rig.module_commands([command(DEVICE_1, b"1"), command(DEVICE_1, b"2"), command(DEVICE_1, b"3")])
    assert [queued.data for queued in rig.core.command_queues[MODULE]] == [b"3"]
    assert rig.core.stats.commands_dropped["no_device"] == 2
    assert logged(caplog.records, "keeping only the newest", logging.WARNING)
    assert rig.take() == []


def test_command_ack_uses_the_command_device() -> None:
    """docs/protocol.md §4.9 (``command_ack`` gets the command's device as the module gave it) and
    §4.8.3 step 3."""
    renamed = Device(MODULE, 0, "role_1", "Other name", 4)
    rig = CoreRig()
    open_session(rig, [DEVICE_1])
    rig.module_commands([command(renamed, b"x")])
    counter = commands_of(rig.take())[0].messageCounter
    rig.command_response(SESSION_ID, counter)
    assert rig.module.calls == [CommandAck(b"x", renamed)]


def test_disconnect_status_whose_response_cannot_be_published_still_disconnects_the_device() -> None:
    """docs/protocol.md §4.8.2 step 4 with §4.13 step 7 and §4.14 row 8: the StatusResponse to a
    DISCONNECT status cannot be published → reset; the device is still registered at clean-up, so
    the module hears of it (as a timeout), like every other device."""
    rig = CoreRig()
    rig.run_sequence("id", [DEVICE_1, DEVICE_2])
    rig.module.calls.clear()
    rig.fail_publish_of = lambda publish: publish.kind == "status_response"
    rig.status("id", ext.Status.DISCONNECT, 3, DEVICE_1)
    assert rig.reset_reasons() == ["publish_failed"]
    assert {device.key for _, device in rig.module.disconnected()} == {DEVICE_1.key, DEVICE_2.key}
