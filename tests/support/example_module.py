"""Observe and drive the example module (lib/modules/example) from tests through its extra exports."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

from external_server.device import Device
from external_server.modules.abi import OK, Buffer, DeviceIdentification
from external_server.modules.context import ModuleContext
from external_server.modules.convert import Arena

ROOT = Path(__file__).resolve().parents[2]
MODULE_SRC = ROOT / "lib" / "modules" / "example"
MODULES_OUT = ROOT / "build" / "modules"
EXAMPLE_SO = MODULES_OUT / "libexample.so"

COUNTER_NAMES = (
    "statuses",
    "error_messages",
    "acks",
    "connects",
    "disconnects",
    "commands_queued",
    "commands_popped",
    "bad_command_files",
    "devices",
    "queued",
)


class Counters(ctypes.Structure):
    """struct example_counters of lib/modules/example/example_module.h."""

    _fields_ = [(name, ctypes.c_uint64) for name in COUNTER_NAMES]

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in COUNTER_NAMES}


def build_example(*targets: str) -> Path:
    """Build (make is incremental) and return build/modules/libexample.so."""
    subprocess.run(
        ["make", "--no-print-directory", "-C", str(MODULE_SRC), f"OUT={MODULES_OUT}", *targets],
        check=True,
        capture_output=True,
        text=True,
    )
    return EXAMPLE_SO


def counters(context: ModuleContext) -> Counters:
    function = context.library.cdll["example_get_counters"]
    function.argtypes = [ctypes.c_void_p, ctypes.POINTER(Counters)]
    function.restype = ctypes.c_int
    out = Counters()
    assert function(context.pointer, ctypes.byref(out)) == OK
    return out


def push(context: ModuleContext, device: Device, data: bytes) -> int:
    function = context.library.cdll["example_push_command"]
    function.argtypes = [ctypes.c_void_p, DeviceIdentification, Buffer]
    function.restype = ctypes.c_int
    arena = Arena()
    return int(function(context.pointer, arena.device(device), arena.buffer(data)))


def drop_command_file(directory: Path, name: str, content: bytes) -> Path:
    """Write under a hidden temporary name, then rename: the module never sees half a file."""
    temporary = directory / f".{name}.tmp"
    temporary.write_bytes(content)
    target = directory / name
    os.rename(temporary, target)
    return target


def command_file_content(device: Device, data: bytes) -> bytes:
    """The command-file format of example_module.h: header line, then the command bytes."""
    header = f"{device.module} {device.device_type} {device.role}"
    if device.name:
        header += f" {device.name}"
    return header.encode() + b"\n" + data
