"""Loading a module shared library and binding its twelve ABI functions (docs/protocol.md §5.3, §5.6)."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .abi import Buffer, Config, DeviceIdentification
from .context import ModuleContext
from .convert import Arena


class ModuleLoadError(Exception):
    """The library file is missing, cannot be loaded, or lacks an ABI symbol."""


class ModuleInitError(Exception):
    """The module's ``init`` returned NULL."""


_BUFFER_P = ctypes.POINTER(Buffer)

# name -> (argtypes, restype): the exact C signatures of §5.3. Structures go by
# value where the C prototype has them by value.
_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "get_module_number": ([], ctypes.c_int),
    "is_device_type_supported": ([ctypes.c_uint], ctypes.c_int),
    "init": ([Config], ctypes.c_void_p),
    "destroy": ([ctypes.POINTER(ctypes.c_void_p)], ctypes.c_int),
    "forward_status": ([Buffer, DeviceIdentification, ctypes.c_void_p], ctypes.c_int),
    "forward_error_message": ([Buffer, DeviceIdentification, ctypes.c_void_p], ctypes.c_int),
    "device_connected": ([DeviceIdentification, ctypes.c_void_p], ctypes.c_int),
    "device_disconnected": ([ctypes.c_int, DeviceIdentification, ctypes.c_void_p], ctypes.c_int),
    "wait_for_command": ([ctypes.c_int, ctypes.c_void_p], ctypes.c_int),
    "pop_command": ([_BUFFER_P, ctypes.POINTER(DeviceIdentification), ctypes.c_void_p], ctypes.c_int),
    "command_ack": ([Buffer, DeviceIdentification, ctypes.c_void_p], ctypes.c_int),
    "deallocate": ([_BUFFER_P], None),
    "allocate": ([_BUFFER_P, ctypes.c_size_t], ctypes.c_int),
}


@dataclass(frozen=True, slots=True)
class ModuleFunctions:
    """The bound foreign functions; ctypes releases the GIL for the duration of each call."""

    get_module_number: Callable[[], int]
    is_device_type_supported: Callable[[int], int]
    init: Callable[[Config], int | None]
    destroy: Callable[[Any], int]
    forward_status: Callable[[Buffer, DeviceIdentification, int], int]
    forward_error_message: Callable[[Buffer, DeviceIdentification, int], int]
    device_connected: Callable[[DeviceIdentification, int], int]
    device_disconnected: Callable[[int, DeviceIdentification, int], int]
    wait_for_command: Callable[[int, int], int]
    pop_command: Callable[[Any, Any, int], int]
    command_ack: Callable[[Buffer, DeviceIdentification, int], int]
    deallocate: Callable[[Any], None]
    allocate: Callable[[Any, int], int]


def _bind(cdll: ctypes.CDLL, path: str) -> ModuleFunctions:
    bound: dict[str, Any] = {}
    missing: list[str] = []
    for name, (argtypes, restype) in _SIGNATURES.items():
        try:
            function = cdll[name]
        except AttributeError:
            missing.append(name)
            continue
        function.argtypes = argtypes
        function.restype = restype
        bound[name] = function
    if missing:
        raise ModuleLoadError(f"Module library {path}: missing symbol(s) {', '.join(missing)}")
    return ModuleFunctions(**bound)


class ModuleLibrary:
    """One loaded module ``.so``, shared by every car (one load per real path per process, §5.5)."""

    _loaded: ClassVar[dict[str, ModuleLibrary]] = {}
    _loaded_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str, cdll: ctypes.CDLL, functions: ModuleFunctions) -> None:
        """Use ``ModuleLibrary.load``; this only stores what it found."""
        self.path = path
        self.cdll = cdll
        self.functions = functions

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModuleLibrary:
        """Load (or reuse) the library at ``path``; ModuleLoadError names the path on failure."""
        real = os.path.realpath(path)
        with cls._loaded_lock:
            cached = cls._loaded.get(real)
            if cached is not None:
                return cached
            if not Path(real).is_file():
                raise ModuleLoadError(f"Module library {os.fspath(path)}: file not found")
            try:
                cdll = ctypes.CDLL(real)
            except OSError as exc:
                raise ModuleLoadError(f"Module library {os.fspath(path)}: cannot be loaded: {exc}") from exc
            library = cls(real, cdll, _bind(cdll, os.fspath(path)))
            cls._loaded[real] = library
            return library

    def get_module_number(self) -> int:
        return int(self.functions.get_module_number())

    def is_device_type_supported(self, device_type: int) -> bool:
        return bool(self.functions.is_device_type_supported(device_type) == 0)

    def init(self, config_pairs: Sequence[tuple[str, str]]) -> ModuleContext:
        """Create one context (one per car and module); pairs come from ``build_init_config``."""
        arena = Arena()
        pointer = self.functions.init(arena.config(config_pairs))
        if not pointer:
            raise ModuleInitError(f"Module library {self.path}: init returned NULL")
        return ModuleContext(self, pointer)

    def __repr__(self) -> str:
        return f"ModuleLibrary({self.path!r})"
