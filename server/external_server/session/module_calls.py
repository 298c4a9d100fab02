"""The module calls a session makes, with the result checks and logs of docs/protocol.md §4.14.

Each is a generator step of the session core: it asks the driver for the call and checks
the return code when the answer comes back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..abi_codes import CONTEXT_INCORRECT, NOT_OK, OK
from ..commands import QueuedCommand
from ..device import Device
from ..protocol.messages import StatusMessage
from .events import (
    CommandAck,
    DeviceConnected,
    DeviceDisconnected,
    DrainCommands,
    ForwardStatus,
    IsDeviceTypeSupported,
)

if TYPE_CHECKING:
    from collections.abc import Generator

    from .core import SessionCore, Steps, Wait


def is_supported(core: SessionCore, device: Device) -> Generator[Wait, object, bool]:
    """Whether the device's module is configured and supports its type (cached per context)."""
    if device.module not in core.command_queues:
        return False
    key = (device.module, device.device_type)
    known = core.supported_types.get(key)
    if known is None:
        known = bool((yield from core.call(device.module, IsDeviceTypeSupported(device.device_type))))
        core.supported_types[key] = known
    return known


def connect_device(core: SessionCore, device: Device) -> Generator[Wait, object, bool]:
    """``device_connected``, then registration; the module's stale commands go on its first device.

    Stale = queued before ``device_connected`` was called (produced while no device of the
    module was connected). What the module produces *during* the call is kept, and taken
    from the module under its lock right after the call, so the session sees it every time
    (docs/design.md, "Commands produced during device_connected").
    """
    queue = core.command_queues[device.module]
    stale = len(queue) if not core.registry.has_module(device.module) else 0
    core.connecting[device.module] += 1
    try:
        rc = yield from core.call(device.module, DeviceConnected(device))
    finally:
        core.connecting[device.module] -= 1
    if rc != OK:
        core.stats.module_errors["device_connected"] += 1
        core.log.error(
            "Module %d refused device %s (device_connected returned %d).", device.module, device, rc
        )
        return False
    core.registry.register(device)
    if stale:
        core.log.info("Discarding %d stale command(s) of module %d.", stale, device.module)
        core.stats.commands_dropped["stale"] += stale
        for _ in range(stale):
            queue.popleft()
    core.log.info("Device %s connected.", device)
    yield from drain_commands(core, device.module)
    return True


def drain_commands(core: SessionCore, module_id: int) -> Steps:
    """Queue everything the module has produced so far and mark the queue ready."""
    drained = yield from core.call(module_id, DrainCommands())
    assert isinstance(drained, list)
    commands = [command for command in drained if isinstance(command, QueuedCommand)]
    if commands:
        core.command_queues[module_id].extend(commands)
    if core.command_queues[module_id]:
        core.mark_commands_ready(module_id)


def forward_status(core: SessionCore, status: StatusMessage) -> Steps:
    device = status.device
    result = yield from core.call(
        device.module, ForwardStatus(status.data, status.error_message or b"", device)
    )
    assert isinstance(result, tuple)
    status_rc, error_rc = result
    if status_rc != OK:
        core.stats.module_errors["forward_status"] += 1
        core.log.error("forward_status of module %d failed for %s: %d.", device.module, device, status_rc)
    if error_rc != OK:
        core.stats.module_errors["forward_error_message"] += 1
        core.log.error(
            "forward_error_message of module %d failed for %s: %d.", device.module, device, error_rc
        )


def command_ack(core: SessionCore, data: bytes, device: Device) -> Steps:
    rc = yield from core.call(device.module, CommandAck(data, device))
    if rc != OK:
        core.stats.module_errors["command_ack"] += 1
        core.log.error("command_ack of module %d failed for %s: %d.", device.module, device, rc)


def device_disconnected(core: SessionCore, disconnect_type: int, device: Device) -> Steps:
    rc = yield from core.call(device.module, DeviceDisconnected(disconnect_type, device))
    if rc == OK:
        return
    core.stats.module_errors["device_disconnected"] += 1
    if rc == NOT_OK:
        core.log.warning("Device %s is not among connected devices of its module.", device)
    elif rc == CONTEXT_INCORRECT:
        core.log.error("device_disconnected for %s: context incorrect.", device)
    else:
        core.log.error("Error in device_disconnected for %s, return code %d.", device, rc)
