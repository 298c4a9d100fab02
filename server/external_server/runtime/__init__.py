"""Module runtime: module contexts per car × module, run off the event loop."""

from .module_runtime import ModuleRuntime, QueuedCommand

__all__ = ["ModuleRuntime", "QueuedCommand"]
