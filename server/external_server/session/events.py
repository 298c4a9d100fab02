"""What goes into the pure session core and what comes out of it (docs/design.md, "Session core").

Events are facts the driver observed (a payload arrived, a module call finished, time
passed); actions are what the core wants done (publish, call a module, wake me at).
Everything here is plain immutable data: no asyncio, sockets, ctypes or threads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..commands import QueuedCommand
from ..device import Device
from .reset import ResetReason

# --- events: driver → core ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CarMessage:
    """A payload from the car's module_gateway topic, with the monotonic time it arrived."""

    payload: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class ModuleCommands:
    """Commands a module's waiting thread popped, in the module's order."""

    module_id: int
    commands: tuple[QueuedCommand, ...]


@dataclass(frozen=True, slots=True)
class CallDone:
    """The answer to a :class:`CallModule` or :class:`SendDisconnectNotification` action."""

    call_id: int
    result: object = None
    error: str | None = None
    """Set when the call raised instead of returning (e.g. the context was already destroyed)."""


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """A :class:`Publish` action could not even be queued by the transport."""

    reason: str


@dataclass(frozen=True, slots=True)
class BrokerState:
    connected: bool


@dataclass(frozen=True, slots=True)
class Stop:
    """The server is stopping: clean up and end."""


@dataclass(frozen=True, slots=True)
class CommandsReady:
    """Core-internal inbox marker: a module with a registered device has commands queued."""

    module_id: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Only time passed (an armed deadline came due)."""


Event = CarMessage | ModuleCommands | CallDone | PublishFailed | BrokerState | Stop | Tick

# --- module calls the core asks for ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IsDeviceTypeSupported:
    device_type: int


@dataclass(frozen=True, slots=True)
class DeviceConnected:
    device: Device


@dataclass(frozen=True, slots=True)
class DeviceDisconnected:
    disconnect_type: int
    device: Device


@dataclass(frozen=True, slots=True)
class ForwardStatus:
    """``forward_status`` and, when ``error`` is not empty, ``forward_error_message``: (rc, rc)."""

    data: bytes
    error: bytes
    device: Device


@dataclass(frozen=True, slots=True)
class CommandAck:
    data: bytes
    device: Device


@dataclass(frozen=True, slots=True)
class DrainCommands:
    """Take every command the module has produced so far, under the context lock."""


ModuleCall = (
    IsDeviceTypeSupported | DeviceConnected | DeviceDisconnected | ForwardStatus | CommandAck | DrainCommands
)

# --- actions: core → driver ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """Send one serialized ExternalServer message to the car (QoS 1, no waiting)."""

    payload: bytes
    kind: str


@dataclass(frozen=True, slots=True)
class CallModule:
    """Run ``call`` on the car's context of ``module_id``; answer with ``CallDone(call_id, …)``."""

    call_id: int
    module_id: int
    call: ModuleCall


@dataclass(frozen=True, slots=True)
class SendDisconnectNotification:
    """Publish the empty disconnect notification; answer ``CallDone(call_id, acknowledged)``."""

    call_id: int


@dataclass(frozen=True, slots=True)
class ArmDeadline:
    """Feed a :class:`Tick` no later than ``at`` (monotonic seconds); None: nothing is due."""

    at: float | None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session run ended with a reset (already counted in the stats and logged)."""

    reason: ResetReason
    message: str
    level: int = logging.WARNING


@dataclass(frozen=True, slots=True)
class Finished:
    """The core stopped for good; no further actions will come."""


Action = Publish | CallModule | SendDisconnectNotification | ArmDeadline | SessionEnded | Finished
