"""Which commands open a session (docs/protocol.md §4.6, phase C): a pure selection.

Every registered device must receive exactly one first command. Module commands that
waited in the queues are used when possible, but only the oldest per device (the
reference keeps the oldest, and tests assert it, §10.5), and only when the command's
device is *exactly* a registered device — all five fields, so a command carrying another
name or a non-zero priority is dropped. Devices left without one get an empty,
server-generated command addressed to the stored device copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..device import Device
from .registry import DeviceRegistry


class QueuedCommandLike(Protocol):
    """Anything with ``data`` and ``device``, such as the module runtime's ``QueuedCommand``."""

    @property
    def data(self) -> bytes: ...

    @property
    def device(self) -> Device: ...


QueuedItem = tuple[bytes, Device] | QueuedCommandLike
"""A queued module command: a ``(data, device)`` pair or an object with those attributes."""


@dataclass(frozen=True, slots=True)
class FirstCommand:
    """One command to publish in phase C, in order."""

    device: Device
    data: bytes
    server_generated: bool
    module_id: int | None = None
    """Queue the command came from; None for server-generated ones."""


@dataclass(frozen=True, slots=True)
class DroppedCommand:
    """A queued command that will not be sent, with the queue it came from."""

    module_id: int
    device: Device
    data: bytes


@dataclass(frozen=True, slots=True)
class FirstCommandSelection:
    """Result of phase C: what to send, and what was dropped (for the log)."""

    commands: tuple[FirstCommand, ...]
    dropped: tuple[DroppedCommand, ...]
    """Dropped because no registered device equals the command's device: WARNING
    ``Device '…' not connected. Command from API will be ignored.``"""
    superseded: tuple[DroppedCommand, ...]
    """Dropped because an older command for the same device was queued."""


def _unpack(item: QueuedItem) -> tuple[bytes, Device]:
    if isinstance(item, tuple):
        return item
    return item.data, item.device


def select_first_commands(
    queues: Iterable[tuple[int, Sequence[QueuedItem]]], registry: DeviceRegistry
) -> FirstCommandSelection:
    """Choose the first commands from the drained module queues (module order, oldest first).

    Module commands come first in queue order, then server-generated empty commands for
    the remaining registered devices in registration order.
    """
    commands: list[FirstCommand] = []
    dropped: list[DroppedCommand] = []
    superseded: list[DroppedCommand] = []
    seen: set[tuple[int, int, str, str]] = set()
    served: set[tuple[int, int, str]] = set()
    for module_id, queue in queues:
        for item in queue:
            data, device = _unpack(item)
            per_device_key = (device.module, device.device_type, device.role, device.name)
            if per_device_key in seen:
                superseded.append(DroppedCommand(module_id, device, data))
                continue
            seen.add(per_device_key)
            if registry.get(device) != device:
                dropped.append(DroppedCommand(module_id, device, data))
                continue
            served.add(device.key)
            commands.append(FirstCommand(device, data, server_generated=False, module_id=module_id))
    for device in registry.devices():
        if device.key not in served:
            commands.append(FirstCommand(device, b"", server_generated=True))
    return FirstCommandSelection(tuple(commands), tuple(dropped), tuple(superseded))
