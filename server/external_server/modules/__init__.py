"""The module adapter: ctypes bindings of the module ABI (docs/protocol.md §5, docs/design.md §3).

``ModuleLibrary.load(path)`` loads a module ``.so`` once per process;
``library.init(build_init_config(company, car, config))`` creates the context of
one car, whose methods are the module calls. Blocking is the caller's concern:
every call here runs synchronously in the calling thread.
"""

from .abi import (
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
from .context import ModuleContext, PoppedCommand
from .init_config import build_init_config
from .library import ModuleFunctions, ModuleInitError, ModuleLibrary, ModuleLoadError

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
    "ModuleContext",
    "ModuleFunctions",
    "ModuleInitError",
    "ModuleLibrary",
    "ModuleLoadError",
    "PoppedCommand",
    "build_init_config",
]
