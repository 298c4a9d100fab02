"""Pure protocol logic of one car: no I/O, no clock, no threads.

Everything here is driven by the car session, which owns the transport, the module
calls and the real timers; these pieces only decide (docs/protocol.md §4.6, §4.9 to §4.11, §2.4).
Time is always passed in as ``now`` (seconds of a monotonic clock).
"""

from .command_tracker import AckReason, AckResult, CommandTracker, PendingCommand
from .first_commands import (
    DroppedCommand,
    FirstCommand,
    FirstCommandSelection,
    QueuedCommandLike,
    select_first_commands,
)
from .registry import DeviceLike, DeviceRegistry
from .status_order import CheckResult, StatusOrderChecker

__all__ = [
    "AckReason",
    "AckResult",
    "CheckResult",
    "CommandTracker",
    "DeviceLike",
    "DeviceRegistry",
    "DroppedCommand",
    "FirstCommand",
    "FirstCommandSelection",
    "PendingCommand",
    "QueuedCommandLike",
    "StatusOrderChecker",
    "select_first_commands",
]
