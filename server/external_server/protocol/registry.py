"""The ordered set of devices registered (connected) on one car (docs/protocol.md §4.9).

Identity is (module, device_type, role); name and priority are carried but ignored for
lookups. The stored copy is what the server later hands to modules on clean-up and
what server-generated first commands are addressed to, so it keeps the name as first
seen and priority 0.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..device import Device, DeviceKey
from ..wire import InternalProtocol_pb2

DeviceLike = Device | InternalProtocol_pb2.Device
"""Lookups accept either representation (checklist item 81)."""


def _as_device(device: DeviceLike) -> Device:
    return device if isinstance(device, Device) else Device.from_proto(device)


class DeviceRegistry:
    """Registered devices in registration order; re-registering moves a device to the end."""

    def __init__(self) -> None:
        # dicts keep insertion order, which is the registration order the protocol needs.
        self._devices: dict[DeviceKey, Device] = {}

    def register(self, device: DeviceLike) -> bool:
        """Store a priority-0 copy; False (and nothing changes) if the identity is already registered."""
        stored = _as_device(device).with_priority(0)
        if stored.key in self._devices:
            return False
        self._devices[stored.key] = stored
        return True

    def unregister(self, device: DeviceLike) -> Device | None:
        """Remove by identity and return the stored copy; None (a no-op) for an unknown device."""
        return self._devices.pop(_as_device(device).key, None)

    def is_registered(self, device: DeviceLike) -> bool:
        return _as_device(device).key in self._devices

    def get(self, device: DeviceLike) -> Device | None:
        """The stored copy (name as first seen, priority 0), found by identity."""
        return self._devices.get(_as_device(device).key)

    def devices(self) -> list[Device]:
        """Snapshot in registration order, safe to iterate while the registry changes."""
        return list(self._devices.values())

    def has_module(self, module: int) -> bool:
        """Whether any device of ``module`` is registered (decides stale-command clearing, §4.4)."""
        return any(key[0] == module for key in self._devices)

    def clear(self) -> None:
        self._devices.clear()

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device: object) -> bool:
        if not isinstance(device, Device | InternalProtocol_pb2.Device):
            return False
        return self.is_registered(device)

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices())
