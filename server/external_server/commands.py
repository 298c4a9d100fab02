"""A command a module produced for a car, as it travels from the module to the session."""

from __future__ import annotations

from dataclasses import dataclass

from .device import Device


@dataclass(frozen=True, slots=True)
class QueuedCommand:
    """A command produced by a module, waiting to be sent to the car."""

    data: bytes
    device: Device
