"""What a simulated gateway reports: its state and the commands it received."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..device import Device
from ..wire import ExternalProtocol_pb2 as ext


class GatewayState(Enum):
    IDLE = "idle"
    """Not started, waiting for its start delay, or for the broker before the first attempt."""
    CONNECTING_SEQUENCE = "connecting_sequence"
    CONNECTED = "connected"
    """Normal communication."""
    DISCONNECTED = "disconnected"
    """Between sessions: after a drop or a failed connect sequence, until the next attempt."""
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    """A command as the gateway received it, with the answer it gave."""

    session_id: str
    counter: int
    device: Device
    data: bytes
    received_at: float
    response: ext.CommandResponse.Type
