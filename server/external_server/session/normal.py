"""Normal communication, docs/protocol.md §4.8–§4.12, as session-core steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..abi_codes import DISCONNECT_ANNOUNCED
from ..protocol import messages
from ..protocol.messages import CommandResponseMessage, ConnectMessage, MessageKind, StatusMessage
from ..wire import ExternalProtocol_pb2 as ext
from .events import CarMessage, CommandsReady
from .module_calls import command_ack, connect_device, device_disconnected, forward_status, is_supported
from .reset import ResetReason, SessionReset
from .state import CarState

if TYPE_CHECKING:
    from .core import SessionCore, Steps


def normal_communication(core: SessionCore) -> Steps:
    core.set_state(CarState.RUNNING)
    core.log.info("Connect sequence finished; normal communication with session '%s'.", core.session_id)
    core.session_deadline = core.now + core.timings.session_timeout_s
    for module_id in core.module_ids:  # DECISION §4.8 note: flush what modules queued meanwhile
        if core.command_queues[module_id] and core.registry.has_module(module_id):
            send_module_commands(core, module_id)
    while True:
        check_deadlines(core)
        item = yield from core.next_event(nearest_deadline(core))
        if item is None:
            continue
        if isinstance(item, CarMessage):
            yield from _handle_car_message(core, item)
        elif isinstance(item, CommandsReady):
            send_module_commands(core, item.module_id)
        else:
            core.raise_for_control(item)


def nearest_deadline(core: SessionCore) -> float:
    assert core.session_deadline is not None  # set on entering normal communication
    deadline = core.session_deadline
    for other in (core.status_checker.next_deadline(), core.command_tracker.next_deadline()):
        if other is not None and other < deadline:
            deadline = other
    return deadline


def check_deadlines(core: SessionCore) -> None:
    now = core.now
    if core.command_tracker.expired(now):
        raise SessionReset(ResetReason.COMMAND_RESPONSE_TIMEOUT, "Command response timeout.")
    if core.status_checker.expired(now):
        raise SessionReset(ResetReason.STATUS_TIMEOUT, "Missing status was not received in time.")
    if core.session_deadline is not None and now >= core.session_deadline:
        raise SessionReset(ResetReason.SESSION_TIMEOUT, "Session timeout: no message from the car.")


def _handle_car_message(core: SessionCore, message: CarMessage) -> Steps:
    parsed = core.parse(message)
    if parsed is None:
        return
    if parsed.kind == MessageKind.CONNECT:
        _handle_connect(core, parsed)
    elif parsed.kind == MessageKind.STATUS:
        yield from _handle_status(core, parsed, message.received_at)
    elif parsed.kind == MessageKind.COMMAND_RESPONSE:
        yield from _handle_command_response(core, parsed)
    else:
        core.stats.ignored["unknown_type"] += 1
        core.log.warning("Received message of unknown type. Ignoring.")


def _handle_connect(core: SessionCore, connect: ConnectMessage) -> None:
    if connect.session_id == core.session_id:
        core.log.info("Received connect message for an already existing session '%s'.", core.session_id)
        core.publish(messages.connect_response(core.session_id, already_logged=True), "connect_response")
        return
    raise SessionReset(
        ResetReason.NEW_SESSION,
        "Received connect message with session ID not matching current one. "
        "Restarting to handle new gateway connection.",
    )


def _handle_status(core: SessionCore, status: StatusMessage, received_at: float) -> Steps:
    if status.session_id != core.session_id:
        core.stats.ignored["foreign_session"] += 1
        core.log.info("Ignoring status with different session ID '%s'.", status.session_id)
        return
    core.session_deadline = core.now + core.timings.session_timeout_s
    result = core.status_checker.check(status.counter, status, core.now)
    if result.ignored_old:
        core.stats.ignored["old_status_counter"] += 1
        core.log.warning(
            "Status with counter %d smaller than expected value %d is ignored.",
            status.counter,
            result.expected,
        )
    elif result.duplicate:
        core.stats.ignored["duplicate_status_counter"] += 1
        core.log.warning("Status with counter %d is already held; duplicate ignored.", status.counter)
    if result.newly_missing:
        missing = result.newly_missing
        core.log.warning(
            "Status with counter %s is missing.",
            str(missing.start) if len(missing) == 1 else f"{missing.start}..{missing.stop - 1}",
        )
    for released in result.released:
        yield from _process_status(core, released, received_at)
    if not core.registry:
        raise SessionReset(
            ResetReason.ALL_DEVICES_DISCONNECTED, "All devices have been disconnected, restarting server."
        )


def _process_status(core: SessionCore, status: StatusMessage, received_at: float) -> Steps:
    device = status.device
    if device.module not in core.command_queues:
        core.stats.ignored["unknown_module"] += 1
        core.log.warning("Status of device %s from unknown module %d is ignored.", device, device.module)
        return
    if not (yield from is_supported(core, device)):
        core.stats.ignored["unsupported_type"] += 1
        core.log.warning(
            "Status of device %s ignored: device type %d is not supported by module %d.",
            device,
            device.device_type,
            device.module,
        )
        return
    registered = core.registry.is_registered(device)
    state = status.state
    if state == ext.Status.CONNECTING:
        # DECISION §10.2: a CONNECTING status of a registered device is answered too.
        handled = registered or (yield from connect_device(core, device.with_priority(0)))
    elif state == ext.Status.RUNNING:
        handled = registered
        if not handled:
            core.log.info("Device %s is not connected. Ignoring status.", device)
    elif state == ext.Status.DISCONNECT:
        handled = registered
        if not handled:
            core.log.info("Device %s is already disconnected. Ignoring status.", device)
    else:
        handled = False
        core.log.warning("Ignoring device status with unknown state: %d.", state)
    if not handled:
        core.stats.ignored["status_not_handled"] += 1
        return
    yield from forward_status(core, status)
    core.publish(messages.status_response(core.session_id, status.counter), "status_response")
    if core.on_status_latency is not None:
        core.on_status_latency(core.now - received_at)
    if state == ext.Status.DISCONNECT:
        # Unregistered only after the call: if the response above cannot be published, the call
        # never runs and the clean-up still tells the module (as a timeout, docs/protocol.md §4.13).
        yield from device_disconnected(core, DISCONNECT_ANNOUNCED, device)
        core.registry.unregister(device)
        core.log.info("Device %s disconnected.", device)


def _handle_command_response(core: SessionCore, response: CommandResponseMessage) -> Steps:
    if response.session_id != core.session_id:
        core.stats.ignored["foreign_session"] += 1
        core.log.info("Ignoring command response with different session ID '%s'.", response.session_id)
        return
    core.session_deadline = core.now + core.timings.session_timeout_s
    if response.type == ext.CommandResponse.DEVICE_NOT_CONNECTED:
        pending = core.command_tracker.find(response.counter)
        if pending is None:
            core.log.info("DEVICE_NOT_CONNECTED for unknown command counter %d.", response.counter)
        elif core.registry.is_registered(pending.device):
            core.registry.unregister(pending.device)
            core.log.info("Device %s disconnected (the car says it is not connected).", pending.device)
            if pending.device.module in core.command_queues:
                yield from device_disconnected(core, DISCONNECT_ANNOUNCED, pending.device)
    result = core.command_tracker.acknowledge(response.counter)
    if not result.released:
        core.log.info(
            "Command response with counter %d released no command (%s).",
            response.counter,
            result.reason.value,
        )
    else:
        core.log.info(
            "Command response with counter %d acknowledged %d command(s).",
            response.counter,
            len(result.released),
        )
    for released in result.released:
        if released.device.module not in core.command_queues:
            core.log.warning(
                "No module %d for acknowledged command of %s.", released.device.module, released.device
            )
            continue
        yield from command_ack(core, released.data, released.device)


def send_module_commands(core: SessionCore, module_id: int) -> None:
    for queued in core.take_commands(module_id):
        device = queued.device
        if device.module != module_id:
            if not core.send_invalid_command:
                core.stats.commands_dropped["module_mismatch"] += 1
                core.log.warning(
                    "Command for device %s from module %d has a different module number; dropped.",
                    device,
                    module_id,
                )
                continue
            core.log.warning(
                "Sending command for device %s from module %d (module mismatch).", device, module_id
            )
        if not core.registry.is_registered(device):
            core.log.warning("Device %s is not connected; sending its command anyway.", device)
        if not queued.data:
            core.log.warning("Sending an empty command to device %s.", device)
        counter = core.command_tracker.register_sent(device, queued.data, False, core.now)
        core.publish(messages.command(core.session_id, counter, device, queued.data), "command")
