"""One car's session as a pure state machine: events and ``now`` in, actions out.

The protocol of docs/protocol.md §4 is written as one sequential generator (connect
sequence → normal communication → clean-up → pause D, forever), because that is how the
specification reads. The generator never touches I/O: it *yields* what it waits for (the
next event before a deadline, the answer to a module call, the end of the pause) and the
engine below resumes it when :meth:`SessionCore.handle` receives the matching event. So the
whole session runs under a fake clock in a unit test, and the asyncio driver
(``car_session.py``) only executes actions and feeds events back (docs/design.md,
"Session core").

No asyncio, sockets, ctypes or threads here.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

from ..abi_codes import DISCONNECT_TIMEOUT
from ..commands import QueuedCommand
from ..protocol import messages
from ..protocol.command_tracker import CommandTracker
from ..protocol.messages import MessageKind, ParsedMessage, StatusMessage
from ..protocol.registry import DeviceRegistry
from ..protocol.status_order import StatusOrderChecker
from ..wire import ExternalProtocol_pb2 as ext
from .connect_sequence import connect_sequence
from .events import (
    Action,
    ArmDeadline,
    BrokerState,
    CallDone,
    CallModule,
    CarMessage,
    CommandsReady,
    Event,
    Finished,
    ModuleCall,
    ModuleCommands,
    Publish,
    PublishFailed,
    SendDisconnectNotification,
    SessionEnded,
    Stop,
    Tick,
)
from .module_calls import device_disconnected
from .normal import normal_communication
from .reset import ResetReason, SessionReset, SessionStopped
from .state import CarState, next_state
from .stats import SessionStats

DEFAULT_QUEUE_LIMIT = 10_000
"""Car messages waiting in one session's inbox before new ones are dropped (and counted)."""

CarLogger = logging.LoggerAdapter[logging.Logger] | logging.Logger
StatusLatencyObserver = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class SessionTimings:
    """T, S and D of docs/protocol.md §4.1, in seconds."""

    response_timeout_s: float
    session_timeout_s: float
    reconnect_delay_s: float


class ModuleCallError(Exception):
    """A module call raised instead of returning (reported by the driver in ``CallDone.error``)."""


# What the generator yields: the engine resumes it when the awaited thing happens.
@dataclass(frozen=True, slots=True)
class _NextEvent:
    deadline: float | None


@dataclass(frozen=True, slots=True)
class _Reply:
    call_id: int


@dataclass(frozen=True, slots=True)
class _Pause:
    until: float


Wait = _NextEvent | _Reply | _Pause
InboxItem = CarMessage | CommandsReady | BrokerState | Stop
Steps = Generator[Wait, object, None]
"""A piece of the session: a generator run by the engine (``yield from`` it)."""


class SessionCore:
    """The car session of docs/protocol.md §4 for one car, driven by :meth:`handle`."""

    def __init__(
        self,
        *,
        module_ids: Sequence[int],
        timings: SessionTimings,
        send_invalid_command: bool,
        logger: CarLogger,
        broker_connected: bool = False,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        on_status_latency: StatusLatencyObserver | None = None,
    ) -> None:
        self.module_ids = tuple(module_ids)  # module order: car-specific first, then common
        self.timings = timings
        self.send_invalid_command = send_invalid_command
        self.log = logger
        self.broker_connected = broker_connected
        self.queue_limit = queue_limit
        self.on_status_latency = on_status_latency
        self.registry = DeviceRegistry()
        self.status_checker: StatusOrderChecker[StatusMessage] = StatusOrderChecker(
            timings.response_timeout_s
        )
        self.command_tracker = CommandTracker(timings.response_timeout_s)
        self.command_queues: dict[int, deque[QueuedCommand]] = {m: deque() for m in self.module_ids}
        self.connecting: Counter[int] = Counter()  # device_connected calls in flight, per module
        self.session_id = ""
        self.state = CarState.UNINITIALIZED
        self.stats = SessionStats()
        self.session_deadline: float | None = None
        self.now = 0.0
        self.supported_types: dict[tuple[int, int], bool] = {}
        self._inbox: deque[InboxItem] = deque()
        self._queued_messages = 0
        self._overflow_logged = False
        self._stopping = False
        self._in_session = False
        self._actions: list[Action] = []
        self._steps: Steps | None = None
        self._waiting: Wait | None = None
        self._armed: float | None = None
        self._next_call_id = 0
        self._finished = False
        self._unconfirmed_publish = False
        self.more_to_do = False
        """True when the core stopped early to see its publishes succeed: feed a Tick after them."""

    # --- the driver's interface ---------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._finished

    def handle(self, event: Event, now: float) -> list[Action]:
        """Take one event observed at monotonic time ``now``; return what to do, in order."""
        self.now = now
        if self._finished:
            return []
        if isinstance(event, Tick):
            self._armed = None  # the driver's timer fired: arm again whatever is still ahead
        self._unconfirmed_publish = False  # the driver carried out all earlier actions
        self.more_to_do = False
        if self._steps is None:
            self._steps = self._run()
            self._resume(None)
        self._accept(event)
        self._pump()
        actions, self._actions = self._actions, []
        return actions

    def _accept(self, event: Event) -> None:
        if isinstance(event, CarMessage):
            self._accept_car_message(event)
        elif isinstance(event, CallDone):
            if isinstance(self._waiting, _Reply) and self._waiting.call_id == event.call_id:
                if event.error is not None:
                    self._throw(ModuleCallError(event.error))
                else:
                    self._resume(event.result)
        elif isinstance(event, ModuleCommands):
            self._accept_commands(event.module_id, event.commands)
        elif isinstance(event, PublishFailed):
            if self._in_session:
                # docs/protocol.md §4.14: WARNING during the connect sequence, ERROR when running.
                level = logging.ERROR if self.state == CarState.RUNNING else logging.WARNING
                reason = f"Publishing to the car failed: {event.reason}"
                self._throw(SessionReset(ResetReason.PUBLISH_FAILED, reason, level))
        elif isinstance(event, BrokerState):
            self.broker_connected = event.connected
            self._inbox.append(event)
        elif isinstance(event, Stop):
            self._stopping = True
            self._inbox.append(event)

    def _accept_car_message(self, message: CarMessage) -> None:
        self.stats.last_message_at = self.now
        if self._queued_messages >= self.queue_limit:
            self.stats.dropped_overflow += 1
            if not self._overflow_logged:
                self._overflow_logged = True
                self.log.warning(
                    "Incoming queue full (%d events); dropping messages from this car until it drains.",
                    self.queue_limit,
                )
            return
        self._overflow_logged = False
        self._queued_messages += 1
        self._inbox.append(message)

    def _accept_commands(self, module_id: int, commands: Sequence[QueuedCommand]) -> None:
        """A batch from a module's waiting thread (§5.7): queue it, signal if a device is registered."""
        queue = self.command_queues.get(module_id)
        if queue is None or not commands:
            return
        active = self.registry.has_module(module_id) or self.connecting[module_id] > 0
        if not active and len(commands) > 1:
            # Without a registered device only the newest command is kept (docs/protocol.md §5.7).
            self.stats.commands_dropped["no_device"] += len(commands) - 1
            self.log.warning(
                "Module %d produced %d commands while none of its devices is connected; "
                "keeping only the newest.",
                module_id,
                len(commands),
            )
            commands = commands[-1:]
        queue.extend(commands)
        if active:
            self.mark_commands_ready(module_id)

    # --- the engine: resume the generator until it waits for something not yet there ---

    def _resume(self, value: object) -> None:
        self._advance(lambda steps: steps.send(value))

    def _throw(self, error: BaseException) -> None:
        self._advance(lambda steps: steps.throw(error))

    def _advance(self, step: Callable[[Steps], Wait]) -> None:
        assert self._steps is not None
        self._waiting = None
        try:
            self._waiting = step(self._steps)
        except StopIteration:
            self._finished = True
            self._actions.append(Finished())

    def _pump(self) -> None:
        """Feed the waiting generator from the inbox or the clock; arm the next deadline."""
        while True:
            waiting = self._waiting
            if isinstance(waiting, _NextEvent):
                if self._inbox and self._unconfirmed_publish:
                    # A publish must be seen to succeed before the next event is taken, so a
                    # failed publish ends the session where it happened (docs/protocol.md §4.14).
                    self.more_to_do = True
                    return
                if self._inbox:
                    item = self._inbox.popleft()
                    if isinstance(item, CarMessage):
                        self._queued_messages -= 1
                    self._resume(item)
                    continue
                if waiting.deadline is not None and self.now >= waiting.deadline:
                    self._resume(None)
                    continue
                self._arm(waiting.deadline)
            elif isinstance(waiting, _Pause):
                if self._stopping or self.now >= waiting.until:
                    self._resume(None)
                    continue
                self._arm(waiting.until)
            return

    def _arm(self, at: float | None) -> None:
        if at != self._armed:
            self._armed = at
            self._actions.append(ArmDeadline(at))

    # --- what the protocol steps use ------------------------------------------------------

    def next_event(self, deadline: float | None) -> Generator[Wait, object, InboxItem | None]:
        """The oldest inbox item, or None once ``deadline`` passed without one."""
        item = yield _NextEvent(deadline)
        assert item is None or isinstance(item, CarMessage | CommandsReady | BrokerState | Stop)
        return item

    def call(self, module_id: int, call: ModuleCall) -> Generator[Wait, object, object]:
        """Ask the driver to run ``call`` on the module's context and wait for its result."""
        self._next_call_id += 1
        call_id = self._next_call_id
        self._actions.append(CallModule(call_id, module_id, call))
        return (yield _Reply(call_id))

    def publish(self, message: ext.ExternalServer, kind: str) -> None:
        self._actions.append(Publish(message.SerializeToString(), kind))
        self._unconfirmed_publish = True
        self.stats.messages_out[kind] += 1

    def parse(self, message: CarMessage) -> ParsedMessage | None:
        parsed = messages.parse_client_message(message.payload)
        if parsed.kind == MessageKind.INVALID:
            self.stats.invalid_messages[parsed.category] += 1
            self.log.warning(
                "Dropping a message that is not a valid ExternalClient (%d bytes): %s",
                parsed.size,
                parsed.reason,
            )
            return None
        self.stats.messages_in[parsed.kind.value] += 1
        return parsed

    def raise_for_control(self, item: BrokerState | Stop) -> None:
        if isinstance(item, Stop):
            raise SessionStopped
        if not item.connected:
            raise SessionReset(ResetReason.BROKER_LOST, "Unexpected disconnection of MQTT client.")

    def set_state(self, wanted: CarState) -> None:
        new = next_state(self.state, wanted)
        if new != self.state:
            self.state = new
            self.stats.state_since = self.now

    def mark_commands_ready(self, module_id: int) -> None:
        self._inbox.append(CommandsReady(module_id))

    def take_commands(self, module_id: int) -> list[QueuedCommand]:
        queue = self.command_queues[module_id]
        taken = list(queue)
        queue.clear()
        return taken

    # --- the loop of §4.3 -----------------------------------------------------------------

    def _run(self) -> Steps:
        try:
            while not self._stopping:
                try:
                    self.set_state(CarState.UNINITIALIZED)
                    yield from self._wait_for_broker()
                    self._in_session = True
                    self.set_state(CarState.CONNECTED)
                    yield from connect_sequence(self)
                    self.set_state(CarState.INITIALIZED)
                    yield from normal_communication(self)
                except SessionReset as reset:
                    self._end_session(reset.reason, reset.message, reset.level)
                except SessionStopped:
                    pass
                except Exception:
                    self.log.exception("Unexpected error in the car session; resetting it.")
                    self._end_session(ResetReason.UNEXPECTED_ERROR, "unexpected error", logging.ERROR)
                self._in_session = False
                yield from self._clean_up()
                if not self._stopping:
                    yield _Pause(self.now + self.timings.reconnect_delay_s)
        finally:
            self.set_state(CarState.STOPPED)

    def _end_session(self, reason: ResetReason, message: str, level: int) -> None:
        self.set_state(CarState.ERROR)
        self.stats.resets[reason.value] += 1
        if reason != ResetReason.UNEXPECTED_ERROR:
            self.log.log(level, "Session reset (%s): %s", reason.value, message)
        self._actions.append(SessionEnded(reason, message, level))

    def _wait_for_broker(self) -> Steps:
        while not self.broker_connected:
            item = yield from self.next_event(None)
            if isinstance(item, Stop):
                raise SessionStopped
            # messages cannot arrive without a connection; anything else waits for the broker

    # --- clean-up (§4.13) -----------------------------------------------------------------

    def _clean_up(self) -> Steps:
        if self.broker_connected:
            self._next_call_id += 1
            self._actions.append(SendDisconnectNotification(self._next_call_id))
            acknowledged = yield _Reply(self._next_call_id)
            if not acknowledged:
                self.log.warning("Disconnect notification was not acknowledged before disconnecting.")
        self._discard_inbox()
        self.session_deadline = None
        unacknowledged = len(self.command_tracker)
        if unacknowledged:
            self.stats.commands_dropped["unacknowledged_at_reset"] += unacknowledged
            self.log.warning("%d command(s) sent to the car were never acknowledged.", unacknowledged)
        self.command_tracker.reset()
        self.status_checker.reset()
        for device in self.registry.devices():
            try:
                yield from device_disconnected(self, DISCONNECT_TIMEOUT, device)
            except ModuleCallError as exc:  # context already destroyed during shutdown
                self.log.debug("device_disconnected skipped: %s", exc)
        self.registry.clear()
        self._discard_inbox()

    def _discard_inbox(self) -> None:
        """Drop received-but-unprocessed messages and signals; keep only a pending stop."""
        stop = any(isinstance(item, Stop) for item in self._inbox)
        self._inbox.clear()
        self._queued_messages = 0
        if stop:
            self._inbox.append(Stop())
