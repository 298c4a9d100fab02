"""ctypes mirror of the module ABI headers in lib/include/fleet_protocol (docs/protocol.md §5.1, §5.2).

The layouts are checked against the C headers by tests/unit/test_module_abi.py, so
this file and the headers cannot drift apart silently.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from ..abi_codes import (
    CONTEXT_INCORRECT,
    DISCONNECT_ANNOUNCED,
    DISCONNECT_ERROR,
    DISCONNECT_TIMEOUT,
    NOT_OK,
    OK,
    RESERVED,
    TIMEOUT_OCCURRED,
    DisconnectType,
)

__all__ = [
    "CONTEXT_INCORRECT",
    "DISCONNECT_ANNOUNCED",
    "DISCONNECT_ERROR",
    "DISCONNECT_TIMEOUT",
    "NOT_OK",
    "OK",
    "RESERVED",
    "TIMEOUT_OCCURRED",
    "DisconnectType",
]


class Buffer(ctypes.Structure):
    """struct buffer: 16 bytes; size_in_bytes never counts a terminator."""

    _fields_ = [("data", ctypes.c_void_p), ("size_in_bytes", ctypes.c_size_t)]
    if TYPE_CHECKING:
        data: int | None
        size_in_bytes: int


class DeviceIdentification(ctypes.Structure):
    """struct device_identification: 48 bytes including 4 bytes of tail padding."""

    _fields_ = [
        ("module", ctypes.c_int),
        ("device_type", ctypes.c_uint),
        ("device_role", Buffer),
        ("device_name", Buffer),
        ("priority", ctypes.c_uint),
    ]
    if TYPE_CHECKING:
        module: int
        device_type: int
        device_role: Buffer
        device_name: Buffer
        priority: int


class KeyValue(ctypes.Structure):
    """struct key_value: one init() configuration entry, 32 bytes."""

    _fields_ = [("key", Buffer), ("value", Buffer)]
    if TYPE_CHECKING:
        key: Buffer
        value: Buffer


class Config(ctypes.Structure):
    """struct config: passed to init() by value, 16 bytes."""

    _fields_ = [("parameters", ctypes.POINTER(KeyValue)), ("size", ctypes.c_size_t)]
    if TYPE_CHECKING:
        parameters: ctypes._Pointer[KeyValue]
        size: int
