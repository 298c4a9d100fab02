"""The connect sequence, phases A to D of docs/protocol.md §4.4–§4.7, as session-core steps.

Decisions on the reference's quirks (docs/design.md, docs/protocol.md §10) are marked
``DECISION`` where they are taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import messages
from ..protocol.first_commands import select_first_commands
from ..protocol.messages import CommandResponseMessage, MessageKind, ParsedMessage, StatusMessage
from ..wire import ExternalProtocol_pb2 as ext
from .events import BrokerState, CarMessage, Stop
from .module_calls import command_ack, connect_device, drain_commands, forward_status, is_supported
from .reset import ResetReason, SessionReset

if TYPE_CHECKING:
    from collections.abc import Generator

    from .core import SessionCore, Steps, Wait


def connect_sequence(core: SessionCore) -> Steps:
    yield from _phase_a_connect(core)
    yield from _phase_b_first_statuses(core)
    sent = yield from _phase_c_first_commands(core)
    yield from _phase_d_first_responses(core, sent)


def read_car_message(core: SessionCore, timeout_s: float) -> Generator[Wait, object, ParsedMessage | None]:
    """The next valid car message within ``timeout_s``; None when none came in time."""
    deadline = core.now + timeout_s
    while True:
        item = yield from core.next_event(deadline)
        if item is None:
            return None
        if isinstance(item, CarMessage):
            parsed = core.parse(item)
            if parsed is not None:
                return parsed
        elif isinstance(item, BrokerState | Stop):
            core.raise_for_control(item)
        # CommandsReady: the commands stay queued; phase C takes them, normal communication flushes


def _phase_a_connect(core: SessionCore) -> Steps:
    timeout = core.timings.response_timeout_s
    started = core.now
    while True:
        parsed = yield from read_car_message(core, timeout)
        if parsed is None:
            raise SessionReset(ResetReason.NO_CONNECT, "Connect message has not been received.")
        if parsed.kind == MessageKind.CONNECT:
            connect = parsed
            break
        core.log.info("Discarding %s message while waiting for connect.", parsed.kind.value)
        if core.now - started > timeout:
            raise SessionReset(ResetReason.NO_CONNECT, "Connect message has not been received.")
    if not connect.session_id:
        raise SessionReset(ResetReason.INVALID_CONNECT, "Connect message has an empty session id.")
    if not connect.devices:
        raise SessionReset(ResetReason.INVALID_CONNECT, "Connect message contains no devices.")
    core.session_id = connect.session_id
    core.stats.sessions_started += 1
    core.log.info("Connect received, session id '%s', %d device(s).", core.session_id, len(connect.devices))
    for announced in connect.devices:
        device = announced.with_priority(0)
        if device.module not in core.command_queues:
            core.log.warning("Ignoring device %s from unsupported module %d.", device, device.module)
            continue
        if not (yield from is_supported(core, device)):
            core.log.warning(
                "Ignoring device %s: type %d is not supported by module %d.",
                device,
                device.device_type,
                device.module,
            )
            continue
        if core.registry.is_registered(device):
            continue
        yield from connect_device(core, device)
    core.publish(messages.connect_response(core.session_id), "connect_response")


def _phase_b_first_statuses(core: SessionCore) -> Steps:
    core.status_checker.adopt_baseline()
    expected = len(core.registry)
    answered = 0
    to_forward: list[StatusMessage] = []
    while answered < expected:
        status = yield from read_car_message(core, core.timings.response_timeout_s)
        if status is None or status.kind != MessageKind.STATUS:
            raise SessionReset(ResetReason.FIRST_STATUS, "First status from device has not been received.")
        device = status.device
        if device.module not in core.command_queues:  # DECISION §10.8: ignore instead of failing
            core.log.warning(
                "Ignoring first status of device %s from unknown module %d.", device, device.module
            )
            continue
        if not (yield from is_supported(core, device)):
            core.log.warning("Ignoring first status of device %s: type not supported.", device)
            continue
        if status.session_id != core.session_id:
            core.log.info("Ignoring status with different session ID '%s'.", status.session_id)
            continue
        if status.state != ext.Status.CONNECTING:
            core.log.error(
                "First status from device %s must contain CONNECTING state, got state %d.",
                device,
                status.state,
            )
            raise SessionReset(ResetReason.FIRST_STATUS, "First status was not in CONNECTING state.")
        if core.registry.is_registered(device):
            core.publish(messages.status_response(core.session_id, status.counter), "status_response")
            answered += 1
        to_forward.append(status)
    for status in to_forward:
        yield from forward_status(core, status)


def _phase_c_first_commands(core: SessionCore) -> Generator[Wait, object, int]:
    if not core.registry:
        raise SessionReset(ResetReason.NO_DEVICES, "All devices have been disconnected, restarting server.")
    for module_id in core.module_ids:  # what the modules produced up to now, every time
        if core.registry.has_module(module_id):
            yield from drain_commands(core, module_id)
    taken = [(module_id, core.take_commands(module_id)) for module_id in core.module_ids]
    selection = select_first_commands(taken, core.registry)
    for dropped in selection.dropped:
        core.stats.commands_dropped["device_not_connected"] += 1
        core.log.warning("Device '%s' not connected. Command from API will be ignored.", dropped.device)
    for superseded in selection.superseded:
        core.stats.commands_dropped["superseded"] += 1
        core.log.warning(
            "Command for device '%s' dropped: an older command for it opens the session.", superseded.device
        )
    for first in selection.commands:
        tracker = core.command_tracker
        counter = tracker.register_sent(first.device, first.data, first.server_generated, core.now)
        core.publish(messages.command(core.session_id, counter, first.device, first.data), "command")
    return len(selection.commands)


def _phase_d_first_responses(core: SessionCore, commands_sent: int) -> Steps:
    for _ in range(commands_sent):
        response = yield from _read_first_command_response(core)
        for released in core.command_tracker.acknowledge(response.counter).released:
            if released.server_generated or not core.registry.is_registered(released.device):
                continue
            yield from command_ack(core, released.data, released.device)


def _read_first_command_response(core: SessionCore) -> Generator[Wait, object, CommandResponseMessage]:
    while True:
        parsed = yield from read_car_message(core, core.timings.response_timeout_s)
        if parsed is None:
            raise SessionReset(ResetReason.FIRST_COMMAND_RESPONSE, "Command response has not been received.")
        if parsed.kind == MessageKind.CONNECT:
            raise SessionReset(
                ResetReason.CONNECT_DURING_SEQUENCE,
                "Received connect message while waiting for command response. Restarting init sequence.",
            )
        if parsed.kind != MessageKind.COMMAND_RESPONSE:
            core.log.info("Expected command response, received %s. Skipping.", parsed.kind.value)
            continue
        if parsed.session_id != core.session_id:
            core.log.info("Skipping command response with different session ID '%s'.", parsed.session_id)
            continue
        return parsed
