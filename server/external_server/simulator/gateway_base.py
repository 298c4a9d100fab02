"""The plumbing of one simulated Module Gateway: its state, what it sends and what it receives.

Receive times are taken in the MQTT callback, so the measured status→StatusResponse latency
does not include the gateway task's queueing. The protocol steps are in ``gateway.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable

from google.protobuf.message import DecodeError

from ..device import Device
from ..transport import CarTopics, PublishError
from ..wire import ExternalProtocol_pb2 as ext
from ..wire import InternalProtocol_pb2 as internal
from . import messages
from .car_rules import CommandCounterCheck, response_for
from .config import GatewayConfig, JsonStatusData
from .connection import SharedConnection
from .gateway_types import GatewayState, ReceivedCommand
from .inbox import Inbox, Kind
from .stats import GatewayStats, LatencySummary


class GatewayBase:
    """State, observation, sending and event plumbing of one simulated gateway.

    The protocol behaviour (connect sequence, normal communication) is in
    :class:`~.gateway.SimulatedGateway`, which builds on this.
    """

    def __init__(
        self, connection: SharedConnection, config: GatewayConfig, *, logger: logging.Logger | None = None
    ) -> None:
        self.config = config
        self.connection = connection
        self.topics = CarTopics(config.company, config.car)
        self.stats = GatewayStats()
        self.commands: deque[ReceivedCommand] = deque(maxlen=config.keep_commands)
        self._log = logger or logging.getLogger("external_server.simulator.gateway")
        self._status_data = config.status_data or JsonStatusData(config.car)
        self._timings = config.timings
        self._devices: list[Device] = list(config.devices)
        self._announce: set[tuple[int, int, str]] = set()
        self._state = GatewayState.IDLE
        self._final_state: GatewayState | None = None
        self._session_id = ""
        self._status_counter = 0
        self._command_counters = CommandCounterCheck()
        self._pending: dict[int, float] = {}
        self._waiters: dict[int, asyncio.Future[bool]] = {}
        self._farewells: set[int] = set()
        self._inbox = Inbox()
        self._changed = asyncio.Event()
        self._stop_requested = False
        self._drain_on_stop = True
        self._link_epoch = 0
        self._sequence = 0
        self._round_robin = 0
        self._next_status_at = 0.0
        self._reconnect_at = 0.0
        self._end_at = math.inf
        self._failing_in_a_row = 0
        self._task: asyncio.Task[GatewayStats] | None = None
        connection.route(self.topics.external_server, self._on_payload)
        connection.route(self.topics.disconnect_notification, self._on_notification)
        connection.add_state_listener(self._on_link_state)

    # ---- observation -----------------------------------------------------------

    @property
    def car(self) -> str:
        return self.config.car

    @property
    def state(self) -> GatewayState:
        return self._state

    @property
    def final_state(self) -> GatewayState | None:
        """The state the run ended in (CONNECTED = still in normal communication); None while running."""
        return self._final_state

    @property
    def session_id(self) -> str:
        """Id of the current (or last) session; empty before the first attempt."""
        return self._session_id

    @property
    def devices(self) -> tuple[Device, ...]:
        """Devices currently connected on the gateway side (announced in the next Connect)."""
        return tuple(self._devices)

    @property
    def unanswered_statuses(self) -> int:
        return len(self._pending)

    def latency_summary(self) -> LatencySummary:
        return LatencySummary.from_samples(self.stats.latencies_s)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds (checked after every state change, status answer or command)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return predicate()
        return True

    async def wait_connected(self, timeout: float = 30.0, *, sessions: int = 1) -> bool:  # noqa: ASYNC109
        """True once in normal communication after at least ``sessions`` completed connect sequences."""
        return await self.wait_until(
            lambda: self._state is GatewayState.CONNECTED and self.stats.sessions >= sessions, timeout
        )

    # ---- sending ---------------------------------------------------------------

    def _next_device(self) -> Device:
        device = self._devices[self._round_robin % len(self._devices)]
        self._round_robin += 1
        return device

    def _send_status(
        self,
        device: Device,
        state: ext.Status.DeviceState | None,
        *,
        in_sequence: bool = False,
        counted: bool = True,
    ) -> int | None:
        """Publish the next status of ``device`` (RUNNING, or CONNECTING when newly plugged); its counter."""
        if state is None:
            if device.key in self._announce:
                self._announce.discard(device.key)
                state = ext.Status.CONNECTING
            else:
                state = ext.Status.RUNNING
        self._status_counter += 1
        counter = self._status_counter
        data = self._status_data(device, self._sequence)
        self._sequence += 1
        sent_at = asyncio.get_running_loop().time()
        if not self._publish(messages.status(self._session_id, state, counter, device, data)):
            return None
        if in_sequence:
            self.stats.connecting_statuses_sent += 1
            return counter
        if counted:
            self.stats.statuses_sent += 1
        self._pending[counter] = sent_at
        return counter

    def _answer_command(self, command: ext.Command, response: ext.CommandResponse.Type, at: float) -> bool:
        self.stats.commands_received += 1
        self.commands.append(
            ReceivedCommand(
                session_id=command.sessionId,
                counter=command.messageCounter,
                device=Device.from_proto(command.deviceCommand.device),
                data=command.deviceCommand.commandData,
                received_at=at,
                response=response,
            )
        )
        self._notify()
        if not self._publish(messages.command_response(command.sessionId, command.messageCounter, response)):
            return False
        self.stats.command_responses_sent += 1
        return True

    def _response_for(self, device: internal.Device) -> ext.CommandResponse.Type | None:
        return response_for(Device.from_proto(device), self._devices, self.config.devices)

    def _publish(self, message: ext.ExternalClient) -> bool:
        try:
            self.connection.publish_nowait(self.topics.module_gateway, message.SerializeToString())
        except PublishError:
            return False
        return True

    # ---- events ------------------------------------------------------------------

    def _parse(self, payload: bytes) -> ext.ExternalServer | None:
        try:
            message = ext.ExternalServer.FromString(payload)
        except DecodeError:
            self.stats.malformed += 1
            self._log.warning("%s: undecodable message from the server (%d bytes).", self.car, len(payload))
            return None
        return message

    def _on_payload(self, payload: bytes) -> None:
        self._inbox.push(Kind.MESSAGE, payload)

    def _on_notification(self, _payload: bytes) -> None:
        self.stats.notifications += 1
        self._inbox.push(Kind.NOTIFICATION, b"")

    def _on_link_state(self, connected: bool) -> None:
        if not connected:
            self._link_epoch += 1
            self._inbox.push(Kind.LINK_DOWN, b"")
        else:
            self._inbox.wake()

    def _set_state(self, state: GatewayState) -> None:
        if state is not self._state:
            self._state = state
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _release_waiters(self) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        self._waiters.clear()
