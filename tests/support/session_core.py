"""A driver for the pure session core in unit tests: fake clock, scripted module, decoded output.

``CoreRig`` plays the asyncio driver's part synchronously: it feeds events to a
:class:`SessionCore`, answers its module calls at once from a :class:`ScriptedModule`
(unless a test holds them), and keeps what the core published, decoded. Time only moves
when a test calls :meth:`CoreRig.advance`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from external_server.abi_codes import NOT_OK, OK
from external_server.commands import QueuedCommand
from external_server.device import Device
from external_server.protocol import messages
from external_server.session.core import SessionCore, SessionTimings
from external_server.session.events import (
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
    SessionEnded,
    Stop,
    Tick,
)
from external_server.session.state import CarState
from external_server.wire import ExternalProtocol_pb2 as ext

T = 1.0
S = 3.0
D = 0.5
MODULE = 1000


@dataclass
class ScriptedModule:
    """Answers module calls like a module would; tests change the answers or queue commands."""

    supported_types: set[int] = field(default_factory=lambda: {0, 1, 2})
    connect_rc: int = OK
    refused_roles: set[str] = field(default_factory=set)
    """Roles whose ``device_connected`` returns NOT_OK (-1) whatever ``connect_rc`` says."""
    forward_rc: int = OK
    error_rc: int = OK
    ack_rc: int = OK
    disconnect_rc: int = OK
    produced: list[QueuedCommand] = field(default_factory=list)
    """Commands the module holds; a DrainCommands call takes them."""
    on_device_connected: Callable[[Device], Iterable[QueuedCommand]] | None = None
    calls: list[ModuleCall] = field(default_factory=list)

    def answer(self, call: ModuleCall) -> object:
        self.calls.append(call)
        if isinstance(call, IsDeviceTypeSupported):
            return call.device_type in self.supported_types
        if isinstance(call, DeviceConnected):
            rc = NOT_OK if call.device.role in self.refused_roles else self.connect_rc
            if rc == OK and self.on_device_connected is not None:
                self.produced.extend(self.on_device_connected(call.device))
            return rc
        if isinstance(call, ForwardStatus):
            return (self.forward_rc, self.error_rc if call.error else OK)
        if isinstance(call, CommandAck):
            return self.ack_rc
        if isinstance(call, DeviceDisconnected):
            return self.disconnect_rc
        assert isinstance(call, DrainCommands)
        taken, self.produced = self.produced, []
        return taken

    def named(self, kind: type) -> list[ModuleCall]:
        return [call for call in self.calls if isinstance(call, kind)]

    def connected(self) -> list[Device]:
        """Devices handed to ``device_connected``, in call order."""
        return [call.device for call in self.calls if isinstance(call, DeviceConnected)]

    def forwarded(self) -> list[tuple[bytes, Device]]:
        """``forward_status`` calls as (data, device), in call order."""
        return [(call.data, call.device) for call in self.calls if isinstance(call, ForwardStatus)]

    def forwarded_errors(self) -> list[tuple[bytes, Device]]:
        """``forward_error_message`` calls (a ForwardStatus with a non-empty error)."""
        return [
            (call.error, call.device) for call in self.calls if isinstance(call, ForwardStatus) and call.error
        ]

    def acks(self) -> list[tuple[bytes, Device]]:
        """``command_ack`` calls as (data, device), in call order."""
        return [(call.data, call.device) for call in self.calls if isinstance(call, CommandAck)]

    def disconnected(self) -> list[tuple[int, Device]]:
        """``device_disconnected`` calls as (disconnect type, device), in call order."""
        return [
            (call.disconnect_type, call.device) for call in self.calls if isinstance(call, DeviceDisconnected)
        ]


class CoreRig:
    """One car's session core with module 1000 (and any extra modules), driven by hand."""

    def __init__(
        self,
        *,
        modules: dict[int, ScriptedModule] | None = None,
        send_invalid_command: bool = False,
        broker_connected: bool = True,
        queue_limit: int = 10_000,
        timings: SessionTimings | None = None,
    ) -> None:
        self.modules = modules if modules is not None else {MODULE: ScriptedModule()}
        self.now = 100.0
        self.latencies: list[float] = []
        self.core = SessionCore(
            module_ids=list(self.modules),
            timings=timings or SessionTimings(T, S, D),
            send_invalid_command=send_invalid_command,
            logger=logging.getLogger("test.session_core"),
            broker_connected=broker_connected,
            queue_limit=queue_limit,
            on_status_latency=self.latencies.append,
        )
        self.published: deque[ext.ExternalServer] = deque()
        self.notifications = 0
        self.notification_acks = True
        self.resets: list[SessionEnded] = []
        self.held: list[CallModule] = []
        self.hold_calls: Callable[[CallModule], bool] = lambda call: False
        self.fail_publish_of: Callable[[Publish], bool] = lambda publish: False
        self.call_error: Callable[[CallModule], str | None] = lambda call: None
        """A non-None result makes the call "raise": answered with ``CallDone(error=…)``."""
        self.armed: float | None = None
        self.finished = False
        self.states: list[CarState] = [self.core.state]
        """Every state the core took, transient ones (ERROR, UNINITIALIZED) included."""
        self.events_fed: list[Event] = []
        original_set_state = self.core.set_state

        def recording_set_state(wanted: CarState) -> None:
            original_set_state(wanted)
            if self.core.state != self.states[-1]:
                self.states.append(self.core.state)

        setattr(self.core, "set_state", recording_set_state)  # noqa: B010  (method on the instance)
        self.feed(Tick())

    # --- feeding ---------------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        pending: deque[Event] = deque([event])
        while pending:
            next_event = pending.popleft()
            self.events_fed.append(next_event)
            if isinstance(next_event, Tick):
                self.armed = None  # like the core: a Tick consumes the armed deadline
            failed = False
            for action in self.core.handle(next_event, self.now):
                follow_up = self._carry_out(action)
                if follow_up is not None:
                    pending.append(follow_up)
                    if isinstance(follow_up, PublishFailed):
                        failed = True
                        break
            # As the driver does: the publishes went out, so let the core go on (``more_to_do``:
            # it stopped early to see them succeed).
            if not failed and self.core.more_to_do:
                pending.append(Tick())

    def _carry_out(self, action: Action) -> Event | None:
        if isinstance(action, Publish):
            if self.fail_publish_of(action):
                return PublishFailed("broker gone")
            self.published.append(ext.ExternalServer.FromString(action.payload))
        elif isinstance(action, CallModule):
            if self.hold_calls(action):
                self.held.append(action)
                return None
            error = self.call_error(action)
            if error is not None:
                self.modules[action.module_id].calls.append(action.call)
                return CallDone(action.call_id, error=error)
            return CallDone(action.call_id, self.modules[action.module_id].answer(action.call))
        elif isinstance(action, SendDisconnectNotification):
            self.notifications += 1
            return CallDone(action.call_id, self.notification_acks)
        elif isinstance(action, ArmDeadline):
            self.armed = action.at
        elif isinstance(action, SessionEnded):
            self.resets.append(action)
        elif isinstance(action, Finished):
            self.finished = True
        return None

    def release_held(self) -> None:
        """Answer the calls held so far, in order."""
        held, self.held = self.held, []
        for call in held:
            self.feed(CallDone(call.call_id, self.modules[call.module_id].answer(call.call)))

    def advance(self, seconds: float) -> None:
        """Let time pass; the core sees a Tick at every deadline it armed on the way."""
        target = self.now + seconds
        while self.armed is not None and self.armed <= target:
            self.now = max(self.now, self.armed)
            armed = self.armed
            self.feed(Tick())
            if self.armed == armed:
                break
        self.now = target
        self.feed(Tick())

    # --- the car's side --------------------------------------------------------------------

    def send(self, message: ext.ExternalClient) -> None:
        self.feed(CarMessage(message.SerializeToString(), self.now))

    def send_raw(self, payload: bytes) -> None:
        self.feed(CarMessage(payload, self.now))

    def connect(self, session_id: str, devices: Sequence[Device]) -> None:
        self.send(messages.connect(session_id, "company", "car", devices))

    def status(
        self, session_id: str, state: int, counter: int, device: Device, data: bytes = b"", error: bytes = b""
    ) -> None:
        self.send(messages.status(session_id, state, counter, device, data, error or None))

    def command_response(self, session_id: str, counter: int, kind: int = 0) -> None:
        self.send(messages.command_response(session_id, kind, counter))

    def module_commands(self, commands: list[QueuedCommand], module_id: int = MODULE) -> None:
        self.feed(ModuleCommands(module_id, tuple(commands)))

    def broker(self, connected: bool) -> None:
        self.feed(BrokerState(connected))

    def stop(self) -> None:
        self.feed(Stop())

    # --- reading what came out -------------------------------------------------------------

    def take(self) -> list[ext.ExternalServer]:
        out = list(self.published)
        self.published.clear()
        return out

    def take_kinds(self) -> list[str]:
        return [str(message.WhichOneof("MessageType")) for message in self.take()]

    def reset_reasons(self) -> list[str]:
        return [ended.reason.value for ended in self.resets]

    @property
    def module(self) -> ScriptedModule:
        """The scripted module 1000."""
        return self.modules[MODULE]

    def states_since(self, start: int) -> list[CarState]:
        return self.states[start:]

    def pending_counters(self) -> list[int]:
        return [command.counter for command in self.core.command_tracker.pending()]

    def run_sequence(
        self, session_id: str, devices: Sequence[Device], first_counter: int = 1
    ) -> list[ext.Command]:
        """A complete, well-behaved connect sequence (Connect order, status counters from
        ``first_counter``); checks the car's view on the way and returns the first commands.
        Everything published is taken."""
        self.connect(session_id, devices)
        assert kinds(self.take()) == ["connectResponse"]
        for counter, device in enumerate(devices, start=first_counter):
            self.status(session_id, ext.Status.CONNECTING, counter, device)
        out = self.take()
        statuses = [message for message in out if message.WhichOneof("MessageType") == "statusResponse"]
        assert [message.statusResponse.messageCounter for message in statuses] == list(
            range(first_counter, first_counter + len(devices))
        )
        commands = [message.command for message in out if message.WhichOneof("MessageType") == "command"]
        assert len(commands) == len(devices)
        for command in commands:
            self.command_response(session_id, command.messageCounter)
        assert self.core.state == CarState.RUNNING, self.core.state
        return commands

    def open_session(self, session_id: str, devices: list[Device]) -> list[ext.ExternalServer]:
        """A complete connect sequence; returns the first commands (answered in order)."""
        self.connect(session_id, devices)
        for counter, device in enumerate(devices):
            self.status(session_id, ext.Status.CONNECTING, counter, device)
        out = self.take()
        commands = [message for message in out if message.WhichOneof("MessageType") == "command"]
        for command in commands:
            self.command_response(session_id, command.command.messageCounter)
        return commands


# --- decoding helpers ----------------------------------------------------------------------


def kinds(messages: Iterable[ext.ExternalServer]) -> list[str]:
    """The oneof member names of published messages ("connectResponse", "command", …)."""
    return [str(message.WhichOneof("MessageType")) for message in messages]


def logged(records: Iterable[logging.LogRecord], text: str, level: int | None = None) -> bool:
    """Whether a record (at ``level``, if given) contains ``text``."""
    return any(
        text in record.getMessage() and (level is None or record.levelno == level) for record in records
    )


def reset_record(records: Iterable[logging.LogRecord], reason: str) -> logging.LogRecord:
    """The one "Session reset (<reason>)" log record."""
    found = [record for record in records if f"Session reset ({reason})" in record.getMessage()]
    assert len(found) == 1, [record.getMessage() for record in found]
    return found[0]
