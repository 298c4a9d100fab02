"""The asyncio driver of one car's session: runs the pure :class:`SessionCore` for real.

It turns what happens (a payload on the car's topic, a module batch, the broker going up
or down, a module call finishing, a deadline coming due) into core events, and carries out
the actions the core returns: publish through the car's link, run module calls on the
module runtime's thread pool, publish the disconnect notification, keep one timer armed.
All decisions live in the core (docs/design.md, "Session core"); this file has none.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from ..commands import QueuedCommand
from ..modules.context import ModuleContext
from ..protocol.command_tracker import CommandTracker
from ..protocol.registry import DeviceRegistry
from ..runtime import ModuleRuntime
from .core import DEFAULT_QUEUE_LIMIT, CarLogger, SessionCore, SessionTimings, StatusLatencyObserver
from .events import (
    Action,
    ArmDeadline,
    BrokerState,
    CallDone,
    CallModule,
    CarMessage,
    CommandAck,
    DeviceConnected,
    DeviceDisconnected,
    DrainCommands,
    Event,
    Finished,
    ForwardStatus,
    IsDeviceTypeSupported,
    ModuleCall,
    ModuleCommands,
    Publish,
    PublishFailed,
    SendDisconnectNotification,
    Stop,
    Tick,
)
from .link import CarLink, LinkPublishError
from .state import CarState
from .stats import SessionStats

__all__ = ["CarSession", "SessionTimings"]

NOTIFICATION_ACK_TIMEOUT_S = 2.0
"""How long the disconnect notification waits for its PUBACK (docs/protocol.md §3.3)."""


class CarSession:
    """One car: feeds its :class:`SessionCore` and executes what the core decides."""

    def __init__(
        self,
        *,
        company: str,
        car: str,
        link: CarLink,
        modules: Mapping[int, ModuleRuntime],
        timings: SessionTimings,
        send_invalid_command: bool,
        logger: CarLogger,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        on_status_latency: StatusLatencyObserver | None = None,
    ) -> None:
        self.company = company
        self.car = car
        self._link = link
        self._modules = dict(modules)  # insertion order = module order (specific, then common)
        self._log = logger
        self.core = SessionCore(
            module_ids=list(self._modules),
            timings=timings,
            send_invalid_command=send_invalid_command,
            logger=logger,
            broker_connected=link.connected,
            queue_limit=queue_limit,
            on_status_latency=on_status_latency,
        )
        self._pending: deque[Event] = deque()
        self._feeding = False
        self._timer: asyncio.TimerHandle | None = None
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- what /status, metrics and tests read ---------------------------------------------

    @property
    def state(self) -> CarState:
        return self.core.state

    @property
    def session_id(self) -> str:
        return self.core.session_id

    @property
    def registry(self) -> DeviceRegistry:
        return self.core.registry

    @property
    def device_count(self) -> int:
        return len(self.core.registry)

    @property
    def stats(self) -> SessionStats:
        return self.core.stats

    @property
    def command_tracker(self) -> CommandTracker:
        return self.core.command_tracker

    def snapshot(self) -> dict[str, object]:
        """What /status shows for this car: plain JSON-ready data."""
        core, stats = self.core, self.core.stats
        return {
            "state": core.state.value,
            "session_id": core.session_id,
            "devices": [
                {"module": d.module, "type": d.device_type, "role": d.role, "name": d.name}
                for d in core.registry.devices()
            ],
            "last_message_at": _wall_iso(stats.last_message_at),
            "state_since": _wall_iso(stats.state_since),
            "sessions_started": stats.sessions_started,
            "messages_in": dict(stats.messages_in),
            "messages_out": dict(stats.messages_out),
            "invalid_messages": dict(stats.invalid_messages),
            "ignored": dict(stats.ignored),
            "module_errors": dict(stats.module_errors),
            "commands_dropped": dict(stats.commands_dropped),
            "dropped_overflow": stats.dropped_overflow,
            "resets": dict(stats.resets),
            "pending_commands": len(core.command_tracker),
        }

    # --- inputs (all on the event loop) -----------------------------------------------------

    def on_car_message(self, payload: bytes) -> None:
        """A payload arrived on this car's module_gateway topic."""
        self._feed(CarMessage(payload, time.monotonic()))

    def on_broker_state(self, connected: bool) -> None:
        self._feed(BrokerState(connected))

    def on_module_commands(self, module_id: int, batch: list[QueuedCommand]) -> None:
        self._feed(ModuleCommands(module_id, tuple(batch)))

    def request_stop(self) -> None:
        self._feed(Stop())

    async def run(self) -> None:
        """Run until stopped (the core ends after its clean-up)."""
        self._feed(Tick())
        try:
            await self._done.wait()
        finally:
            if self._timer is not None:
                self._timer.cancel()

    # --- the loop between core and world ---------------------------------------------------

    def _feed(self, event: Event) -> None:
        """Hand ``event`` to the core and carry out its actions; re-entrant calls are queued."""
        self._pending.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._pending:
                actions = self.core.handle(self._pending.popleft(), time.monotonic())
                if self._execute(actions) and self.core.more_to_do:
                    self._pending.append(Tick())
        finally:
            self._feeding = False

    def _execute(self, actions: list[Action]) -> bool:
        """Carry out ``actions`` in order; False when a publish failed (the rest is void)."""
        for action in actions:
            if isinstance(action, Publish):
                try:
                    self._link.publish(action.payload)
                except LinkPublishError as exc:
                    self._pending.append(PublishFailed(str(exc)))
                    return False  # the core resets; what it wanted after this publish is void
            elif isinstance(action, CallModule):
                self._start_call(action)
            elif isinstance(action, ArmDeadline):
                self._arm(action.at)
            elif isinstance(action, SendDisconnectNotification):
                self._spawn(self._notify(action.call_id), f"notify-{self.car}")
            elif isinstance(action, Finished):
                self._done.set()
            # SessionEnded: the core already logged and counted it
        return True

    def _start_call(self, action: CallModule) -> None:
        runtime = self._modules[action.module_id]
        call_id = action.call_id
        future: asyncio.Future[object]
        if isinstance(action.call, DrainCommands):
            future = runtime.submit_drain()  # type: ignore[assignment]  # Future is invariant
        else:
            future = runtime.submit(_call_name(action.call), _module_function(action.call))

        def finished(done: asyncio.Future[object]) -> None:
            if done.cancelled():
                self._feed(CallDone(call_id, error="cancelled"))
            elif (error := done.exception()) is not None:
                self._feed(CallDone(call_id, error=f"{type(error).__name__}: {error}"))
            else:
                self._feed(CallDone(call_id, done.result()))

        future.add_done_callback(finished)

    async def _notify(self, call_id: int) -> None:
        acknowledged = await self._link.publish_disconnect_notification(NOTIFICATION_ACK_TIMEOUT_S)
        self._feed(CallDone(call_id, acknowledged))

    def _arm(self, at: float | None) -> None:
        """Keep one timer at or before ``at``; an early wake-up is harmless (the core re-arms)."""
        if at is None:
            return  # a timer that fires anyway only costs one Tick
        loop = asyncio.get_running_loop()
        when = loop.time() + (at - time.monotonic())
        if self._timer is not None and not self._timer.cancelled() and self._timer.when() <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._feed(Tick())

    def _spawn(self, coroutine: object, name: str) -> None:
        assert asyncio.iscoroutine(coroutine)
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _call_name(call: ModuleCall) -> str:
    """The module function a call is timed as (metrics label)."""
    return {
        IsDeviceTypeSupported: "is_device_type_supported",
        DeviceConnected: "device_connected",
        DeviceDisconnected: "device_disconnected",
        ForwardStatus: "forward_status",
        CommandAck: "command_ack",
        DrainCommands: "pop_command",
    }[type(call)]


def _module_function(call: ModuleCall) -> Callable[[ModuleContext], object]:
    """The blocking function that performs ``call`` on a context (run under its lock)."""
    if isinstance(call, ForwardStatus):
        data, error, device = call.data, call.error, call.device

        def forward(context: ModuleContext) -> tuple[int, int]:
            status_rc = context.forward_status(data, device)
            error_rc = context.forward_error_message(error, device) if error else 0
            return status_rc, error_rc

        return forward
    if isinstance(call, DeviceConnected):
        return lambda context: context.device_connected(call.device)
    if isinstance(call, DeviceDisconnected):
        return lambda context: context.device_disconnected(call.disconnect_type, call.device)
    if isinstance(call, CommandAck):
        return lambda context: context.command_ack(call.data, call.device)
    if isinstance(call, IsDeviceTypeSupported):
        return lambda context: context.is_device_type_supported(call.device_type)
    raise TypeError(f"not a context call: {call!r}")


def _wall_iso(monotonic_s: float | None) -> str | None:
    """A core timestamp (monotonic seconds) as ISO wall-clock time."""
    if monotonic_s is None:
        return None
    wall = time.time() - (time.monotonic() - monotonic_s)
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
