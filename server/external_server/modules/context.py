"""One module context (one per car and module) and the calls made on it (docs/protocol.md §5.3 to §5.5)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ..device import Device
from ..native import WAIT_UNTIL_EVENT
from .abi import CONTEXT_INCORRECT, NOT_OK, OK, TIMEOUT_OCCURRED, Buffer, DeviceIdentification
from .convert import Arena, read_buffer, read_device

if TYPE_CHECKING:
    from .library import ModuleLibrary


@dataclass(frozen=True, slots=True)
class PoppedCommand:
    """Result of ``pop_command``: ``remaining`` is the module's return code (≥ 0 = still queued)."""

    remaining: int
    data: bytes
    device: Device | None

    @property
    def ok(self) -> bool:
        return self.remaining >= 0


class ModuleContext:
    """A module context created by ``ModuleLibrary.init``.

    Not thread-safe: the caller serializes every call except ``wait_for_command``,
    which may run in its own thread concurrently with the others (§5.5). The
    caller must also join that thread before ``destroy``. Calls that need a device
    return NOT_OK without reaching the module when its role is empty (§10 item 9);
    calls after ``destroy`` return CONTEXT_INCORRECT without reaching it.
    """

    def __init__(self, library: ModuleLibrary, pointer: int) -> None:
        self.library = library
        self._functions = library.functions
        self._pointer: int | None = pointer

    @property
    def pointer(self) -> int | None:
        """The raw context pointer, for a module's extra exports (tests); None once destroyed."""
        return self._pointer

    @property
    def destroyed(self) -> bool:
        return self._pointer is None

    def get_module_number(self) -> int:
        return self.library.get_module_number()

    def is_device_type_supported(self, device_type: int) -> bool:
        return self.library.is_device_type_supported(device_type)

    def device_connected(self, device: Device) -> int:
        if self._pointer is None:
            return CONTEXT_INCORRECT
        if not device.role:
            return NOT_OK
        arena = Arena()
        return int(self._functions.device_connected(arena.device(device), self._pointer))

    def device_disconnected(self, disconnect_type: int, device: Device) -> int:
        if self._pointer is None:
            return CONTEXT_INCORRECT
        if not device.role:
            return NOT_OK
        arena = Arena()
        ident = arena.device(device)
        return int(self._functions.device_disconnected(int(disconnect_type), ident, self._pointer))

    def forward_status(self, data: bytes, device: Device) -> int:
        if self._pointer is None:
            return CONTEXT_INCORRECT
        if not device.role:
            return NOT_OK
        arena = Arena()
        return int(self._functions.forward_status(arena.buffer(data), arena.device(device), self._pointer))

    def forward_error_message(self, data: bytes, device: Device) -> int:
        if self._pointer is None:
            return CONTEXT_INCORRECT
        if not device.role:
            return NOT_OK
        arena = Arena()
        return int(
            self._functions.forward_error_message(arena.buffer(data), arena.device(device), self._pointer)
        )

    def command_ack(self, data: bytes, device: Device) -> int:
        if self._pointer is None:
            return CONTEXT_INCORRECT
        if not device.role:
            return NOT_OK
        arena = Arena()
        return int(self._functions.command_ack(arena.buffer(data), arena.device(device), self._pointer))

    def wait_for_command(self, timeout_ms: int) -> int:
        """Block at most ``timeout_ms`` without holding the GIL; OK, TIMEOUT_OCCURRED or an error."""
        pointer = self._pointer
        if pointer is None:
            return CONTEXT_INCORRECT
        return int(self._functions.wait_for_command(int(timeout_ms), pointer))

    def wait_for_event(self, timeout_ms: int, stop: ctypes.c_int) -> int:
        """Repeat ``wait_for_command`` while it times out, until it reports something or ``stop`` is set.

        Runs the loop in C (``external_server.native``) when available, so the waiting thread
        holds the GIL only when there is something to do; returns TIMEOUT_OCCURRED once stopped.
        """
        pointer = self._pointer
        if pointer is None:
            return CONTEXT_INCORRECT
        if WAIT_UNTIL_EVENT is not None:
            function = cast("ctypes._FuncPointer", self._functions.wait_for_command)
            address = ctypes.cast(function, ctypes.c_void_p).value
            if address is not None:
                return int(WAIT_UNTIL_EVENT(address, pointer, int(timeout_ms), ctypes.byref(stop)))
        while not stop.value:
            rc = self.wait_for_command(timeout_ms)
            if rc != TIMEOUT_OCCURRED:
                return rc
        return TIMEOUT_OCCURRED

    def pop_command(self) -> PoppedCommand:
        """Pop one command; its three buffers always go back through the module's ``deallocate``."""
        if self._pointer is None:
            return PoppedCommand(CONTEXT_INCORRECT, b"", None)
        command = Buffer()
        ident = DeviceIdentification()
        try:
            rc = int(self._functions.pop_command(ctypes.byref(command), ctypes.byref(ident), self._pointer))
            if rc < 0:
                return PoppedCommand(rc, b"", None)
            return PoppedCommand(rc, read_buffer(command), read_device(ident))
        finally:
            self._functions.deallocate(ctypes.byref(ident.device_role))
            self._functions.deallocate(ctypes.byref(ident.device_name))
            self._functions.deallocate(ctypes.byref(command))

    def destroy(self) -> int:
        """Free the context; only the first call reaches the module, later ones return OK."""
        if self._pointer is None:
            return OK
        handle = ctypes.c_void_p(self._pointer)
        self._pointer = None
        return int(self._functions.destroy(ctypes.byref(handle)))

    def __repr__(self) -> str:
        state = "destroyed" if self._pointer is None else hex(self._pointer)
        return f"ModuleContext({self.library.path!r}, {state})"
