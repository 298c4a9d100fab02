"""One module context of one car, driven from asyncio without blocking the loop.

Two rules of docs/protocol.md §5.5 shape this class: calls on one context are
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
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from ..commands import QueuedCommand
from ..modules.abi import OK, TIMEOUT_OCCURRED
from ..modules.context import ModuleContext

T = TypeVar("T")

_MAX_POPS_PER_BATCH = 10_000
_ERROR_BACKOFF_INITIAL_S = 0.05
_ERROR_BACKOFF_MAX_S = 2.0

__all__ = ["CallDurationObserver", "CommandsHandler", "ModuleRuntime", "QueuedCommand"]


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
        # Commands popped from the module but not yet handed to the loop. Filled under the
        # context lock, so a drain (also under it) sees every command popped before it.
        self._popped: deque[QueuedCommand] = deque()
        self._popped_lock = threading.Lock()  # never held during a module call
        self._drains = 0
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
        return await self.submit(name, function)

    def submit(self, name: str, function: Callable[[ModuleContext], T]) -> asyncio.Future[T]:
        """Like :meth:`call`, as a future (the session driver adds a done callback, no task)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._locked, name, function)

    def submit_drain(self) -> asyncio.Future[list[QueuedCommand]]:
        """Every command the module has produced so far, oldest first, taken under the lock.

        Includes what the waiting thread popped but has not handed to the loop yet, so the
        caller sees each command exactly once, either here or in a later hand-over.
        """
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._locked, "pop_command", self._drain)

    def _drain(self, context: ModuleContext) -> list[QueuedCommand]:
        # Called with the context lock held. A zero-timeout wait_for_command asks the module
        # whether commands are obtainable without blocking (docs/design.md, "Commands
        # produced during device_connected").
        self._drains += 1
        popped = self._pop_available() if context.wait_for_command(0) == OK else []
        with self._popped_lock:
            drained = [*self._popped, *popped]
            self._popped.clear()
        return drained

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
            drains_before_wait = self._drains
            try:
                rc = self._context.wait_for_event(self._wait_timeout_ms, self._stop_flag)
            except Exception:  # a broken binding must not kill the thread silently
                self._log.exception("wait_for_command of module %d raised", self.module_id)
                rc = -1
            if self._stop.is_set():
                return
            if rc == OK:
                backoff = _ERROR_BACKOFF_INITIAL_S
                if self._pop_batch(drains_before_wait):
                    self._hand_over()
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

    def _pop_batch(self, drains_before_wait: int) -> bool:
        """Pop what the module announced into the hand-over buffer; True if anything came."""
        with self._lock:
            if self._destroyed:
                return False
            # A drain since our wait may have taken the commands the wait announced.
            if self._drains != drains_before_wait and self._context.wait_for_command(0) != OK:
                return False
            batch = self._pop_available()
            if batch:
                with self._popped_lock:
                    self._popped.extend(batch)
        return bool(batch)

    def _pop_available(self) -> list[QueuedCommand]:
        """Pop until the module says none remain (the context lock is held by the caller)."""
        batch: list[QueuedCommand] = []
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

    def _deliver(self) -> None:
        """On the loop: hand whatever is in the buffer to the session (a drain may have emptied it)."""
        with self._popped_lock:
            batch = list(self._popped)
            self._popped.clear()
        if batch and self._on_commands is not None:
            self._on_commands(batch)

    def _hand_over(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # loop closed between the check and the call: shutting down
            return
