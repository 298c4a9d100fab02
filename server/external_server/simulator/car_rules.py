"""Car-side decisions of a Module Gateway that need no I/O (docs/protocol.md §4.15)."""

from __future__ import annotations

from collections.abc import Iterable

from ..device import Device
from ..wire import ExternalProtocol_pb2 as ext


class CommandCounterCheck:
    """The first command sets the reference, each next must be +1; a reference of 0 accepts anything."""

    def __init__(self) -> None:
        self.last = 0

    def accept(self, counter: int) -> bool:
        if self.last != 0 and counter != self.last + 1:
            return False
        self.last = counter
        return True


def response_for(
    target: Device, connected: Iterable[Device], configured: Iterable[Device]
) -> ext.CommandResponse.Type | None:
    """The gateway's answer for a command to ``target``; None for a module it does not handle."""
    connected, configured = list(connected), list(configured)
    if target.module not in {known.module for known in (*configured, *connected)}:
        return None
    if any(known.same_device(target) for known in connected):
        return ext.CommandResponse.OK
    if target.device_type not in {known.device_type for known in (*configured, *connected)}:
        return ext.CommandResponse.DEVICE_NOT_SUPPORTED
    return ext.CommandResponse.DEVICE_NOT_CONNECTED
