"""Conversion between Python values and the ABI structures (docs/protocol.md §5.2, §5.4).

Inputs are copied into NUL-terminated ctypes buffers (size excluding the NUL, as
§5.2 recommends) that an ``Arena`` keeps alive for the whole module call; the
module only sees them during that call. Outputs are copied out using exactly
``size_in_bytes`` bytes; freeing them is the caller's job (the module's own
``deallocate``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from ..device import Device
from .abi import Buffer, Config, DeviceIdentification, KeyValue


class Arena:
    """Owns the memory behind input structures; keep it referenced until the call returns."""

    def __init__(self) -> None:
        self._keep: list[object] = []

    def buffer(self, data: bytes | bytearray | memoryview) -> Buffer:
        raw = bytes(data)  # no copy for bytes; other bytes-like inputs are accepted too
        storage = ctypes.create_string_buffer(raw, len(raw) + 1)
        self._keep.append(storage)
        return Buffer(ctypes.addressof(storage), len(raw))

    def text(self, value: str) -> Buffer:
        return self.buffer(value.encode("utf-8"))

    def device(self, device: Device) -> DeviceIdentification:
        return DeviceIdentification(
            device.module,
            device.device_type,
            self.text(device.role),
            self.text(device.name),
            device.priority,
        )

    def config(self, pairs: Sequence[tuple[str, str]]) -> Config:
        entries = (KeyValue * max(len(pairs), 1))()
        for index, (key, value) in enumerate(pairs):
            entries[index] = KeyValue(self.text(key), self.text(value))
        self._keep.append(entries)
        return Config(ctypes.cast(entries, ctypes.POINTER(KeyValue)), len(pairs))


def read_buffer(buffer: Buffer) -> bytes:
    """Copy a module-owned buffer; NULL or size 0 reads as empty."""
    if not buffer.data or not buffer.size_in_bytes:
        return b""
    return ctypes.string_at(buffer.data, buffer.size_in_bytes)


def read_device(ident: DeviceIdentification) -> Device:
    """Copy a module-filled device; role and name are UTF-8 (invalid bytes replaced, never fatal)."""
    return Device(
        module=ident.module,
        device_type=ident.device_type,
        role=read_buffer(ident.device_role).decode("utf-8", errors="replace"),
        name=read_buffer(ident.device_name).decode("utf-8", errors="replace"),
        priority=ident.priority,
    )
