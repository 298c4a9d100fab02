"""The device identity shared by the protocol logic and the module binding.

A device is identified by (module, device_type, role) (docs/protocol.md §4.9); the
name and priority travel with it but are not part of its identity.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import InternalProtocol_pb2

DeviceKey = tuple[int, int, str]


@dataclass(frozen=True, slots=True)
class Device:
    """One device as the server sees it; immutable so it can be shared across threads."""

    module: int
    device_type: int
    role: str
    name: str = ""
    priority: int = 0

    @property
    def key(self) -> DeviceKey:
        """Identity used for registration checks: name and priority are ignored."""
        return (self.module, self.device_type, self.role)

    def same_device(self, other: Device) -> bool:
        return self.key == other.key

    def with_priority(self, priority: int) -> Device:
        return Device(self.module, self.device_type, self.role, self.name, priority)

    @classmethod
    def from_proto(cls, message: InternalProtocol_pb2.Device) -> Device:
        return cls(
            module=int(message.module),
            device_type=message.deviceType,
            role=message.deviceRole,
            name=message.deviceName,
            priority=message.priority,
        )

    def to_proto(self) -> InternalProtocol_pb2.Device:
        return InternalProtocol_pb2.Device(
            module=self.module,  # type: ignore[arg-type]  # open enum: any module number is valid
            deviceType=self.device_type,
            deviceRole=self.role,
            deviceName=self.name,
            priority=self.priority,
        )

    def __str__(self) -> str:
        return f"{self.module}/{self.device_type}/{self.role}/{self.name}"
