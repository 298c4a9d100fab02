"""One module context of one car, driven from asyncio without blocking the loop.

Two rules of protocol.md §5.5 shape this class: calls on one context are
serialized (a ``threading.Lock``, because the command-waiting thread must take it
too for ``pop_command``), and only ``wait_for_command`` may overlap with them.
Calls run on a shared thread pool so a slow module of one car only holds one
pool thread, never the event loop or another car.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from ..device import Device
from ..modules.abi import OK, TIMEOUT_OCCURRED
from ..modules.context import ModuleContext

T = TypeVar("T")

_MAX_POPS_PER_BATCH = 10_000
_ERROR_BACKOFF_INITIAL_S = 0.05
_ERROR_BACKOFF_MAX_S = 2.0


@dataclass(frozen=True, slots=True)
class QueuedCommand:
    """A command produced by a module, waiting to be sent to the car."""

    data: bytes
    device: Device


CommandsHandler = Callable[[list[QueuedCommand]], None]
CallDurationObserver = Callable[[str, float], None]
"""Called on the calling thread with (function name, seconds) after every serialized call."""


class ModuleRuntime:
    """Owns one :class:`ModuleContext`: serialized calls, the waiting thread, destroy-once."""

    def __init__(
        self,
        module_id: int,
        context: ModuleContext,
        *,
        wait_timeout_ms: int,
        executor: Executor,
        logger: logging.LoggerAdapter[logging.Logger] | logging.Logger,
        thread_name: str,
    ) -> None:
        self.module_id = module_id
        self._context = context
        self._wait_timeout_ms = wait_timeout_ms
        self._executor = executor
        self._log = logger
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_flag = ctypes.c_int(0)
        self._thread: threading.Thread | None = None
        self._destroyed = False
        self._supported_types: dict[int, bool] = {}
        self._on_commands: CommandsHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.wait_errors = 0
        self.pop_errors = 0
        self.on_call_duration: CallDurationObserver | None = None

    @property
    def context(self) -> ModuleContext:
        """The raw context, for diagnostics and tests; calls must still go through :meth:`call`."""
        return self._context

    @property
    def wait_timeout_s(self) -> float:
        return self._wait_timeout_ms / 1000.0

    # --- serialized calls -------------------------------------------------

    async def call(self, name: str, function: Callable[[ModuleContext], T]) -> T:
        """Run ``function(context)`` on the pool, holding the context lock; ``name`` labels its timing."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._locked, name, function)

    def _locked(self, name: str, function: Callable[[ModuleContext], T]) -> T:
        with self._lock:
            if self._destroyed:
                raise RuntimeError(f"module {self.module_id} context already destroyed")
            started = time.perf_counter()
            try:
                return function(self._context)
            finally:
                if self.on_call_duration is not None:
                    self.on_call_duration(name, time.perf_counter() - started)

    async def is_device_type_supported(self, device_type: int) -> bool:
        """Cached per type: support is taken to be constant for a context's lifetime."""
        known = self._supported_types.get(device_type)
        if known is None:
            known = await self.call(
                "is_device_type_supported", lambda context: context.is_device_type_supported(device_type)
            )
            self._supported_types[device_type] = known
        return known

    # --- the command-waiting thread (§5.7) --------------------------------

    def start_worker(self, loop: asyncio.AbstractEventLoop, on_commands: CommandsHandler) -> None:
        """Start the thread that blocks in ``wait_for_command`` and hands batches to the loop."""
        self._loop = loop
        self._on_commands = on_commands
        self._thread = threading.Thread(target=self._wait_loop, name=self._thread_name, daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        self._stop_flag.value = 1  # read by the native wait loop before each wait_for_command
        self._stop.set()

    def join_worker(self, timeout_s: float) -> bool:
        """Wait for the thread to leave ``wait_for_command``; True when it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def destroy(self) -> int | None:
        """Destroy the context exactly once (after the worker was joined); None if already done."""
        with self._lock:
            if self._destroyed:
                return None
            self._destroyed = True
            return self._context.destroy()

    def _wait_loop(self) -> None:
        backoff = _ERROR_BACKOFF_INITIAL_S
        while not self._stop.is_set():
            try:
                rc = self._context.wait_for_event(self._wait_timeout_ms, self._stop_flag)
            except Exception:  # a broken binding must not kill the thread silently
                self._log.exception("wait_for_command of module %d raised", self.module_id)
                rc = -1
            if self._stop.is_set():
                return
            if rc == OK:
                backoff = _ERROR_BACKOFF_INITIAL_S
                batch = self._pop_batch()
                if batch:
                    self._hand_over(batch)
            elif rc == TIMEOUT_OCCURRED:
                backoff = _ERROR_BACKOFF_INITIAL_S
            else:
                self.wait_errors += 1
                if self.wait_errors == 1 or backoff >= _ERROR_BACKOFF_MAX_S:
                    self._log.error(
                        "Error occurred in wait_for_command function in API of module %d, return code: %d.",
                        self.module_id,
                        rc,
                    )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _ERROR_BACKOFF_MAX_S)

    def _pop_batch(self) -> list[QueuedCommand]:
        batch: list[QueuedCommand] = []
        with self._lock:
            if self._destroyed:
                return batch
            for _ in range(_MAX_POPS_PER_BATCH):
                popped = self._context.pop_command()
                if popped.remaining < 0 or popped.device is None:
                    self.pop_errors += 1
                    self._log.error(
                        "Error in pop_command of module %d, return code: %d.",
                        self.module_id,
                        popped.remaining,
                    )
                    break
                batch.append(QueuedCommand(popped.data, popped.device))
                if popped.remaining == 0:
                    break
        return batch

    def _hand_over(self, batch: list[QueuedCommand]) -> None:
        loop, handler = self._loop, self._on_commands
        if loop is None or handler is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(handler, batch)
        except RuntimeError:  # loop closed between the check and the call: shutting down
            return
