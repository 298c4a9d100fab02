"""One car's session: the state machine of protocol.md §4, run as one asyncio task.

All protocol handling of a car is sequential (one event at a time, §10.16); the
module calls it makes run on the module runtime's thread pool, so a slow module
or a flood from this car never blocks another car's task.

Design decisions on reference quirks (design.md, protocol.md §10) are marked
``DECISION`` where they are taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from ..device import Device
from ..modules.abi import CONTEXT_INCORRECT, DISCONNECT_ANNOUNCED, DISCONNECT_TIMEOUT, NOT_OK, OK
from ..modules.context import ModuleContext
from ..protocol import messages
from ..protocol.command_tracker import CommandTracker
from ..protocol.first_commands import select_first_commands
from ..protocol.messages import (
    CommandResponseMessage,
    ConnectMessage,
    MessageKind,
    ParsedMessage,
    StatusMessage,
)
from ..protocol.registry import DeviceRegistry
from ..protocol.status_order import StatusOrderChecker
from ..runtime import ModuleRuntime, QueuedCommand
from ..transport import PublishError
from ..wire import ExternalProtocol_pb2 as ext
from .link import CarLink
from .reset import ResetReason, SessionReset, SessionStopped
from .state import CarState, next_state
from .stats import SessionStats

_DEFAULT_QUEUE_LIMIT = 10_000
_NOTIFICATION_ACK_TIMEOUT_S = 2.0

CarLogger = logging.LoggerAdapter[logging.Logger] | logging.Logger
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SessionTimings:
    """T, S and D of protocol.md §4.1, in seconds."""

    response_timeout_s: float
    session_timeout_s: float
    reconnect_delay_s: float


@dataclass(frozen=True, slots=True)
class _CarMessage:
    payload: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class _CommandsAvailable:
    module_id: int


@dataclass(frozen=True, slots=True)
class _BrokerState:
    connected: bool


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Event = _CarMessage | _CommandsAvailable | _BrokerState | _Stop
StatusLatencyObserver = Callable[[float], None]


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


class CarSession:
    """Runs connect sequence → normal communication → clean-up → pause D, forever, for one car."""

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
        clock: Clock = time.monotonic,
        queue_limit: int = _DEFAULT_QUEUE_LIMIT,
        on_status_latency: StatusLatencyObserver | None = None,
    ) -> None:
        self.company = company
        self.car = car
        self._link = link
        self._modules = dict(modules)  # insertion order = module order (specific, then common)
        self._timings = timings
        self._send_invalid_command = send_invalid_command
        self._log = logger
        self._clock = clock
        self._queue_limit = queue_limit
        self._on_status_latency = on_status_latency
        self._events: deque[_Event] = deque()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._command_queues: dict[int, deque[QueuedCommand]] = {
            module_id: deque() for module_id in self._modules
        }
        self._connecting: Counter[int] = Counter()  # device_connected calls in flight, per module
        self.registry = DeviceRegistry()
        self.status_checker: StatusOrderChecker[StatusMessage] = StatusOrderChecker(
            timings.response_timeout_s
        )
        self.command_tracker = CommandTracker(timings.response_timeout_s)
        self.session_id = ""
        self.state = CarState.UNINITIALIZED
        self.stats = SessionStats()
        self._session_deadline: float | None = None
        self._overflow_logged = False

    def snapshot(self) -> dict[str, object]:
        """What /status shows for this car: plain JSON-ready data."""
        return {
            "state": self.state.value,
            "session_id": self.session_id,
            "devices": [
                {"module": d.module, "type": d.device_type, "role": d.role, "name": d.name}
                for d in self.registry.devices()
            ],
            "last_message_at": _iso(self.stats.last_message_at),
            "state_since": _iso(self.stats.state_since),
            "sessions_started": self.stats.sessions_started,
            "messages_in": dict(self.stats.messages_in),
            "messages_out": dict(self.stats.messages_out),
            "invalid_messages": dict(self.stats.invalid_messages),
            "ignored": dict(self.stats.ignored),
            "module_errors": dict(self.stats.module_errors),
            "dropped_overflow": self.stats.dropped_overflow,
            "resets": dict(self.stats.resets),
            "pending_commands": len(self.command_tracker),
        }

    # --- inputs from the transport and the module threads (all on the loop) ---

    def on_car_message(self, payload: bytes) -> None:
        """A payload arrived on this car's module_gateway topic."""
        now = self._clock()
        self.stats.last_message_at = time.time()
        if len(self._events) >= self._queue_limit:
            self.stats.dropped_overflow += 1
            if not self._overflow_logged:
                self._overflow_logged = True
                self._log.warning(
                    "Incoming queue full (%d events); dropping messages from this car until it drains.",
                    self._queue_limit,
                )
            return
        self._overflow_logged = False
        self._post(_CarMessage(payload, now))

    def on_broker_state(self, connected: bool) -> None:
        self._post(_BrokerState(connected))

    def on_module_commands(self, module_id: int, batch: list[QueuedCommand]) -> None:
        """A batch from a module's waiting thread (§5.7): queue it, signal if a device is registered."""
        queue = self._command_queues[module_id]
        active = self.registry.has_module(module_id) or self._connecting[module_id] > 0
        if not active:
            batch = batch[-1:]  # without a registered device only the newest command is kept
        queue.extend(batch)
        if active:
            self._post(_CommandsAvailable(module_id))

    def request_stop(self) -> None:
        self._stopping = True
        self._stop_requested.set()
        self._post(_Stop())

    def _post(self, event: _Event) -> None:
        self._events.append(event)
        self._wakeup.set()

    # --- the loop of §4.3 ---------------------------------------------------

    async def run(self) -> None:
        try:
            while not self._stopping:
                try:
                    self._set_state(CarState.UNINITIALIZED)
                    await self._wait_for_broker()
                    self._set_state(CarState.CONNECTED)
                    await self._connect_sequence()
                    self._set_state(CarState.INITIALIZED)
                    await self._normal_communication()
                except SessionReset as reset:
                    self._set_state(CarState.ERROR)
                    self.stats.resets[reset.reason.value] += 1
                    self._log.log(reset.level, "Session reset (%s): %s", reset.reason.value, reset.message)
                except SessionStopped:
                    pass
                except Exception:
                    self._set_state(CarState.ERROR)
                    self.stats.resets[ResetReason.UNEXPECTED_ERROR.value] += 1
                    self._log.exception("Unexpected error in the car session; resetting it.")
                finally:
                    await self._clean_up()
                if not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_requested.wait(), self._timings.reconnect_delay_s)
        finally:
            self._set_state(CarState.STOPPED)

    def _set_state(self, wanted: CarState) -> None:
        new = next_state(self.state, wanted)
        if new != self.state:
            self.state = new
            self.stats.state_since = time.time()

    async def _wait_for_broker(self) -> None:
        while not self._link.connected:
            event = await self._next_event(None)
            if isinstance(event, _Stop):
                raise SessionStopped
            # messages cannot arrive without a connection; anything else waits for the broker

    # --- event plumbing -------------------------------------------------------

    async def _next_event(self, timeout_s: float | None) -> _Event | None:
        """The oldest event, or None after ``timeout_s`` without one."""
        if not self._events:
            self._wakeup.clear()
            if timeout_s is None:
                await self._wakeup.wait()
            elif timeout_s <= 0:
                return None
            else:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout_s)
                except TimeoutError:
                    return None
        return self._events.popleft()

    async def _read_car_message(self, timeout_s: float) -> ParsedMessage | None:
        """Next parsed car message within ``timeout_s`` (connect sequence reads, §4.4–§4.7)."""
        deadline = self._clock() + timeout_s
        while True:
            event = await self._next_event(deadline - self._clock())
            if event is None:
                return None
            if isinstance(event, _CarMessage):
                parsed = self._parse(event)
                if parsed is not None:
                    return parsed
            elif isinstance(event, _CommandsAvailable):
                continue  # the commands stay queued; phase C drains, normal communication flushes
            else:
                self._raise_for_control_event(event)

    def _raise_for_control_event(self, event: _BrokerState | _Stop) -> None:
        if isinstance(event, _Stop):
            raise SessionStopped
        if not event.connected:
            raise SessionReset(ResetReason.BROKER_LOST, "Unexpected disconnection of MQTT client.")

    def _parse(self, event: _CarMessage) -> ParsedMessage | None:
        parsed = messages.parse_client_message(event.payload)
        if parsed.kind == MessageKind.INVALID:
            self.stats.invalid_messages[parsed.category] += 1
            self._log.warning(
                "Dropping a message that is not a valid ExternalClient (%d bytes): %s",
                parsed.size,
                parsed.reason,
            )
            return None
        self.stats.messages_in[parsed.kind.value] += 1
        return parsed

    def _publish(self, message: ext.ExternalServer, kind: str) -> None:
        try:
            self._link.publish(message.SerializeToString())
        except PublishError as exc:
            # §4.14 row 8: WARNING during the connect sequence, ERROR in normal communication.
            level = logging.ERROR if self.state == CarState.RUNNING else logging.WARNING
            raise SessionReset(
                ResetReason.PUBLISH_FAILED, f"Publishing to the car failed: {exc}", level
            ) from exc
        self.stats.messages_out[kind] += 1

    # --- connect sequence (§4.4–§4.7) ------------------------------------------

    async def _connect_sequence(self) -> None:
        await self._phase_a_connect()
        await self._phase_b_first_statuses()
        sent = self._phase_c_first_commands()
        await self._phase_d_first_responses(sent)

    async def _phase_a_connect(self) -> None:
        timeout = self._timings.response_timeout_s
        started = self._clock()
        while True:
            parsed = await self._read_car_message(timeout)
            if parsed is None:
                raise SessionReset(ResetReason.NO_CONNECT, "Connect message has not been received.")
            if parsed.kind == MessageKind.CONNECT:
                connect = parsed
                break
            self._log.info("Discarding %s message while waiting for connect.", parsed.kind.value)
            if self._clock() - started > timeout:
                raise SessionReset(ResetReason.NO_CONNECT, "Connect message has not been received.")
        if not connect.session_id:
            raise SessionReset(ResetReason.INVALID_CONNECT, "Connect message has an empty session id.")
        if not connect.devices:
            raise SessionReset(ResetReason.INVALID_CONNECT, "Connect message contains no devices.")
        self.session_id = connect.session_id
        self.stats.sessions_started += 1
        self._log.info(
            "Connect received, session id '%s', %d device(s).", self.session_id, len(connect.devices)
        )
        for announced in connect.devices:
            device = announced.with_priority(0)
            runtime = self._modules.get(device.module)
            if runtime is None:
                self._log.warning("Ignoring device %s from unsupported module %d.", device, device.module)
                continue
            if not await runtime.is_device_type_supported(device.device_type):
                self._log.warning(
                    "Ignoring device %s: type %d is not supported by module %d.",
                    device,
                    device.device_type,
                    device.module,
                )
                continue
            if self.registry.is_registered(device):
                continue
            await self._connect_device(runtime, device)
        self._publish(messages.connect_response(self.session_id), "connect_response")

    async def _connect_device(self, runtime: ModuleRuntime, device: Device) -> bool:
        """``device_connected`` then registration; the module's stale commands go on its first device.

        Stale = queued before ``device_connected`` was called (produced while no device of the
        module was connected). A command the module produces *during* the call (e.g. a greeting
        for the new device) may reach the loop before the call returns and is kept.
        """
        queue = self._command_queues[device.module]
        stale = len(queue) if not self.registry.has_module(device.module) else 0
        self._connecting[device.module] += 1
        try:
            rc = await runtime.call("device_connected", lambda context: context.device_connected(device))
        finally:
            self._connecting[device.module] -= 1
        if rc != OK:
            self.stats.module_errors["device_connected"] += 1
            self._log.error(
                "Module %d refused device %s (device_connected returned %d).", device.module, device, rc
            )
            return False
        self.registry.register(device)
        if stale:
            self._log.info("Discarding %d stale command(s) of module %d.", stale, device.module)
            for _ in range(stale):
                queue.popleft()
        self._log.info("Device %s connected.", device)
        return True

    async def _phase_b_first_statuses(self) -> None:
        self.status_checker.adopt_baseline()
        expected = len(self.registry)
        answered = 0
        to_forward: list[tuple[ModuleRuntime, StatusMessage]] = []
        while answered < expected:
            status = await self._read_car_message(self._timings.response_timeout_s)
            if status is None or status.kind != MessageKind.STATUS:
                raise SessionReset(
                    ResetReason.FIRST_STATUS, "First status from device has not been received."
                )
            device = status.device
            runtime = self._modules.get(device.module)
            if runtime is None:  # DECISION §10.8: ignore instead of failing the phase
                self._log.warning(
                    "Ignoring first status of device %s from unknown module %d.", device, device.module
                )
                continue
            if not await runtime.is_device_type_supported(device.device_type):
                self._log.warning("Ignoring first status of device %s: type not supported.", device)
                continue
            if status.session_id != self.session_id:
                self._log.info("Ignoring status with different session ID '%s'.", status.session_id)
                continue
            if status.state != ext.Status.CONNECTING:
                self._log.error(
                    "First status from device %s must contain CONNECTING state, got state %d.",
                    device,
                    status.state,
                )
                raise SessionReset(ResetReason.FIRST_STATUS, "First status was not in CONNECTING state.")
            if self.registry.is_registered(device):
                self._publish(messages.status_response(self.session_id, status.counter), "status_response")
                answered += 1
            to_forward.append((runtime, status))
        for runtime, status in to_forward:
            await self._forward_status(runtime, status)

    def _phase_c_first_commands(self) -> int:
        if not self.registry:
            raise SessionReset(
                ResetReason.NO_DEVICES, "All devices have been disconnected, restarting server."
            )
        drained = [(module_id, self._drain(module_id)) for module_id in self._modules]
        selection = select_first_commands(drained, self.registry)
        for dropped in selection.dropped:
            self._log.warning("Device '%s' not connected. Command from API will be ignored.", dropped.device)
        now = self._clock()
        for first in selection.commands:
            counter = self.command_tracker.register_sent(
                first.device, first.data, first.server_generated, now
            )
            self._publish(messages.command(self.session_id, counter, first.device, first.data), "command")
        return len(selection.commands)

    async def _phase_d_first_responses(self, commands_sent: int) -> None:
        for _ in range(commands_sent):
            response = await self._read_first_command_response()
            for released in self.command_tracker.acknowledge(response.counter).released:
                if released.server_generated or not self.registry.is_registered(released.device):
                    continue
                runtime = self._modules.get(released.device.module)
                if runtime is not None:
                    await self._command_ack(runtime, released.data, released.device)

    async def _read_first_command_response(self) -> CommandResponseMessage:
        while True:
            parsed = await self._read_car_message(self._timings.response_timeout_s)
            if parsed is None:
                raise SessionReset(
                    ResetReason.FIRST_COMMAND_RESPONSE, "Command response has not been received."
                )
            if parsed.kind == MessageKind.CONNECT:
                raise SessionReset(
                    ResetReason.CONNECT_DURING_SEQUENCE,
                    "Received connect message while waiting for command response. Restarting init sequence.",
                )
            if parsed.kind != MessageKind.COMMAND_RESPONSE:
                self._log.info("Expected command response, received %s. Skipping.", parsed.kind.value)
                continue
            if parsed.session_id != self.session_id:
                self._log.info("Skipping command response with different session ID '%s'.", parsed.session_id)
                continue
            return parsed

    # --- normal communication (§4.8) --------------------------------------------

    async def _normal_communication(self) -> None:
        self._set_state(CarState.RUNNING)
        self._log.info("Connect sequence finished; normal communication with session '%s'.", self.session_id)
        self._session_deadline = self._clock() + self._timings.session_timeout_s
        for module_id in self._modules:  # DECISION §4.8 note: flush what modules queued meanwhile
            if self._command_queues[module_id] and self.registry.has_module(module_id):
                self._send_module_commands(module_id)
        while True:
            now = self._clock()
            self._check_deadlines(now)
            event = await self._next_event(self._nearest_deadline() - now)
            if event is None:
                continue
            if isinstance(event, _CarMessage):
                await self._handle_car_message(event)
            elif isinstance(event, _CommandsAvailable):
                self._send_module_commands(event.module_id)
            else:
                self._raise_for_control_event(event)

    def _nearest_deadline(self) -> float:
        assert self._session_deadline is not None  # set on entering normal communication
        deadlines = [self._session_deadline]
        for deadline in (self.status_checker.next_deadline(), self.command_tracker.next_deadline()):
            if deadline is not None:
                deadlines.append(deadline)
        return min(deadlines)

    def _check_deadlines(self, now: float) -> None:
        if self.command_tracker.expired(now):
            raise SessionReset(ResetReason.COMMAND_RESPONSE_TIMEOUT, "Command response timeout.")
        if self.status_checker.expired(now):
            raise SessionReset(ResetReason.STATUS_TIMEOUT, "Missing status was not received in time.")
        if self._session_deadline is not None and now >= self._session_deadline:
            raise SessionReset(ResetReason.SESSION_TIMEOUT, "Session timeout: no message from the car.")

    async def _handle_car_message(self, event: _CarMessage) -> None:
        parsed = self._parse(event)
        if parsed is None:
            return
        if parsed.kind == MessageKind.CONNECT:
            self._handle_connect(parsed)
        elif parsed.kind == MessageKind.STATUS:
            await self._handle_status(parsed, event.received_at)
        elif parsed.kind == MessageKind.COMMAND_RESPONSE:
            await self._handle_command_response(parsed)
        else:
            self.stats.ignored["unknown_type"] += 1
            self._log.warning("Received message of unknown type. Ignoring.")

    def _handle_connect(self, connect: ConnectMessage) -> None:
        if connect.session_id == self.session_id:
            self._log.info("Received connect message for an already existing session '%s'.", self.session_id)
            self._publish(messages.connect_response(self.session_id, already_logged=True), "connect_response")
            return
        raise SessionReset(
            ResetReason.NEW_SESSION,
            "Received connect message with session ID not matching current one. "
            "Restarting to handle new gateway connection.",
        )

    async def _handle_status(self, status: StatusMessage, received_at: float) -> None:
        if status.session_id != self.session_id:
            self.stats.ignored["foreign_session"] += 1
            self._log.info("Ignoring status with different session ID '%s'.", status.session_id)
            return
        now = self._clock()
        self._session_deadline = now + self._timings.session_timeout_s
        result = self.status_checker.check(status.counter, status, now)
        if result.ignored_old:
            self.stats.ignored["old_status_counter"] += 1
            self._log.warning(
                "Status with counter %d smaller than expected value %d is ignored.",
                status.counter,
                result.expected,
            )
        elif result.duplicate:
            self.stats.ignored["duplicate_status_counter"] += 1
            self._log.warning("Status with counter %d is already held; duplicate ignored.", status.counter)
        if result.newly_missing:
            missing = result.newly_missing
            self._log.warning(
                "Status with counter %s is missing.",
                str(missing.start) if len(missing) == 1 else f"{missing.start}..{missing.stop - 1}",
            )
        for released in result.released:
            await self._process_status(released, received_at)
        if not self.registry:
            raise SessionReset(
                ResetReason.ALL_DEVICES_DISCONNECTED, "All devices have been disconnected, restarting server."
            )

    async def _process_status(self, status: StatusMessage, received_at: float) -> None:
        device = status.device
        runtime = self._modules.get(device.module)
        if runtime is None:
            self.stats.ignored["unknown_module"] += 1
            self._log.warning("Status of device %s from unknown module %d is ignored.", device, device.module)
            return
        if not await runtime.is_device_type_supported(device.device_type):
            self.stats.ignored["unsupported_type"] += 1
            self._log.warning(
                "Status of device %s ignored: device type %d is not supported by module %d.",
                device,
                device.device_type,
                device.module,
            )
            return
        registered = self.registry.is_registered(device)
        state = status.state
        if state == ext.Status.CONNECTING:
            # DECISION §10.2: a CONNECTING status of a registered device is answered too.
            handled = registered or await self._connect_device(runtime, device.with_priority(0))
        elif state == ext.Status.RUNNING:
            handled = registered
            if not handled:
                self._log.info("Device %s is not connected. Ignoring status.", device)
        elif state == ext.Status.DISCONNECT:
            handled = registered
            if not handled:
                self._log.info("Device %s is already disconnected. Ignoring status.", device)
        else:
            handled = False
            self._log.warning("Ignoring device status with unknown state: %d.", state)
        if not handled:
            self.stats.ignored["status_not_handled"] += 1
            return
        await self._forward_status(runtime, status)
        self._publish(messages.status_response(self.session_id, status.counter), "status_response")
        if self._on_status_latency is not None:
            self._on_status_latency(self._clock() - received_at)
        if state == ext.Status.DISCONNECT:
            self.registry.unregister(device)
            await self._device_disconnected(runtime, DISCONNECT_ANNOUNCED, device)

    async def _handle_command_response(self, response: CommandResponseMessage) -> None:
        if response.session_id != self.session_id:
            self.stats.ignored["foreign_session"] += 1
            self._log.info("Ignoring command response with different session ID '%s'.", response.session_id)
            return
        self._session_deadline = self._clock() + self._timings.session_timeout_s
        if response.type == ext.CommandResponse.DEVICE_NOT_CONNECTED:
            pending = self.command_tracker.find(response.counter)
            if pending is None:
                self._log.info("DEVICE_NOT_CONNECTED for unknown command counter %d.", response.counter)
            else:
                self.registry.unregister(pending.device)
                runtime = self._modules.get(pending.device.module)
                if runtime is not None:
                    await self._device_disconnected(runtime, DISCONNECT_ANNOUNCED, pending.device)
        result = self.command_tracker.acknowledge(response.counter)
        if not result.released:
            self._log.info(
                "Command response with counter %d released no command (%s).",
                response.counter,
                result.reason.value,
            )
        else:
            self._log.info(
                "Command response with counter %d acknowledged %d command(s).",
                response.counter,
                len(result.released),
            )
        for released in result.released:
            runtime = self._modules.get(released.device.module)
            if runtime is None:
                self._log.warning(
                    "No module %d for acknowledged command of %s.", released.device.module, released.device
                )
                continue
            await self._command_ack(runtime, released.data, released.device)

    def _send_module_commands(self, module_id: int) -> None:
        now = self._clock()
        for queued in self._drain(module_id):
            device = queued.device
            if device.module != module_id:
                if not self._send_invalid_command:
                    self._log.warning(
                        "Command for device %s from module %d has a different module number; dropped.",
                        device,
                        module_id,
                    )
                    continue
                self._log.warning(
                    "Sending command for device %s from module %d (module mismatch).", device, module_id
                )
            if not self.registry.is_registered(device):
                self._log.warning("Device %s is not connected; sending its command anyway.", device)
            if not queued.data:
                self._log.warning("Sending an empty command to device %s.", device)
            counter = self.command_tracker.register_sent(device, queued.data, False, now)
            self._publish(messages.command(self.session_id, counter, device, queued.data), "command")

    def _drain(self, module_id: int) -> list[QueuedCommand]:
        queue = self._command_queues[module_id]
        drained = list(queue)
        queue.clear()
        return drained

    # --- module calls ---------------------------------------------------------

    async def _forward_status(self, runtime: ModuleRuntime, status: StatusMessage) -> None:
        data, error, device = status.data, status.error_message or b"", status.device

        def forward(context: ModuleContext) -> tuple[int, int]:
            status_rc = context.forward_status(data, device)
            error_rc = context.forward_error_message(error, device) if error else OK
            return status_rc, error_rc

        status_rc, error_rc = await runtime.call("forward_status", forward)
        if status_rc != OK:
            self.stats.module_errors["forward_status"] += 1
            self._log.error(
                "forward_status of module %d failed for %s: %d.", device.module, device, status_rc
            )
        if error_rc != OK:
            self.stats.module_errors["forward_error_message"] += 1
            self._log.error(
                "forward_error_message of module %d failed for %s: %d.", device.module, device, error_rc
            )

    async def _command_ack(self, runtime: ModuleRuntime, data: bytes, device: Device) -> None:
        rc = await runtime.call("command_ack", lambda context: context.command_ack(data, device))
        if rc != OK:
            self.stats.module_errors["command_ack"] += 1
            self._log.error("command_ack of module %d failed for %s: %d.", device.module, device, rc)

    async def _device_disconnected(
        self, runtime: ModuleRuntime, disconnect_type: int, device: Device
    ) -> None:
        rc = await runtime.call(
            "device_disconnected", lambda context: context.device_disconnected(disconnect_type, device)
        )
        self._log_device_disconnected(rc, device)

    def _log_device_disconnected(self, rc: int, device: Device) -> None:
        if rc == OK:
            return
        self.stats.module_errors["device_disconnected"] += 1
        if rc == NOT_OK:
            self._log.warning("Device %s is not among connected devices of its module.", device)
        elif rc == CONTEXT_INCORRECT:
            self._log.error("device_disconnected for %s: context incorrect.", device)
        else:
            self._log.error("Error in device_disconnected for %s, return code %d.", device, rc)

    # --- clean-up (§4.13) -------------------------------------------------------

    async def _clean_up(self) -> None:
        if self._link.connected and not await self._link.publish_disconnect_notification(
            _NOTIFICATION_ACK_TIMEOUT_S
        ):
            self._log.warning("Disconnect notification was not acknowledged before disconnecting.")
        self._discard_events()
        self._session_deadline = None
        self.command_tracker.reset()
        self.status_checker.reset()
        for device in self.registry.devices():
            runtime = self._modules.get(device.module)
            if runtime is None:
                continue
            try:
                await self._device_disconnected(runtime, DISCONNECT_TIMEOUT, device)
            except RuntimeError as exc:  # context already destroyed during shutdown
                self._log.debug("device_disconnected skipped: %s", exc)
        self.registry.clear()
        self._discard_events()

    def _discard_events(self) -> None:
        """Drop received-but-unprocessed messages and signals; keep only a pending stop.

        Broker state is read from the link when the next run starts, so stale
        up/down signals are dropped too.
        """
        kept = [event for event in self._events if isinstance(event, _Stop)]
        self._events.clear()
        self._events.extend(kept)
