"""The server's small C helper (``wait_loop.c``), loaded with ctypes when it was built.

``pip install`` compiles it (setup.py); without it the module runtime falls back to an
equivalent Python loop, which is correct but costs a GIL acquisition per timeout.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
from collections.abc import Callable
from pathlib import Path

WaitUntilEvent = Callable[[int, int, int, "ctypes._CArgObject"], int]


def _find_library() -> Path | None:
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_wait_loop{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_wait_until_event() -> WaitUntilEvent | None:
    """``fleet_wait_until_event(wait_fn, context, timeout_ms, &stop)`` or None when not built."""
    path = _find_library()
    if path is None:
        return None
    function = ctypes.CDLL(str(path)).fleet_wait_until_event
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    function.restype = ctypes.c_int
    return function


WAIT_UNTIL_EVENT: WaitUntilEvent | None = load_wait_until_event()
