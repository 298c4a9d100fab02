"""One simulated Module Gateway external client: the car side of docs/protocol.md §4.15.

Each gateway is one asyncio task processing its events strictly in order
(messages, disconnect notifications, link changes) against deadlines (next
status, oldest unanswered status, end of run), like the real gateway's single
receive loop. State, sending and receiving are in ``gateway_base.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math

from ..device import Device
from ..wire import ExternalProtocol_pb2 as ext
from . import messages
from .car_rules import CommandCounterCheck
from .gateway_base import GatewayBase
from .gateway_types import GatewayState, ReceivedCommand
from .inbox import InboxEvent, Kind
from .stats import GatewayStats

__all__ = ["GatewayState", "ReceivedCommand", "SimulatedGateway"]

_CATCH_UP_LIMIT_S = 1.0
"""Open loop: after a stall, send at most this much of the backlog in a burst, then keep the rate."""

_STOPPED = "stopped"


class SimulatedGateway(GatewayBase):
    """The §4.15 behaviour for one car on a :class:`SharedConnection`.

    Create it before the connection is started (topics are routed then), call
    :meth:`start` (or await :meth:`run`), and :meth:`close` at the end.
    """

    # ---- control -----------------------------------------------------------------

    def start(self) -> asyncio.Task[GatewayStats]:
        """Run the gateway as a named task (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"gateway:{self.config.company}/{self.config.car}"
            )
        return self._task

    def stop(self, *, drain: bool = True) -> None:
        """Stop sending; with ``drain`` wait (≤ drain_timeout_s) for answers to statuses in flight."""
        self._stop_requested = True
        self._drain_on_stop = self._drain_on_stop and drain
        self._inbox.wake()

    async def close(self, *, drain: bool = True) -> GatewayStats:
        """Stop and wait until the gateway task has ended."""
        self.stop(drain=drain)
        if self._task is not None:
            return await self._task
        return self.stats

    async def disconnect_device(self, device: Device) -> bool:
        """Unplug a device: send its DISCONNECT status; True when the server answered it in time.

        Outside normal communication the device is just removed (no status; returns False).
        """
        match = next((known for known in self._devices if known.same_device(device)), None)
        if match is None:
            return False
        self._devices.remove(match)
        self._announce.discard(match.key)
        self._inbox.wake()
        if self._state is not GatewayState.CONNECTED:
            return False
        counter = self._send_status(match, ext.Status.DISCONNECT)
        if counter is None:
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters[counter] = waiter
        try:
            async with asyncio.timeout(self._timings.disconnect_wait_s):
                return await waiter
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(counter, None)

    def connect_device(self, device: Device) -> None:
        """Plug a device in: its next status is CONNECTING (normal mode), else the next Connect has it."""
        if any(known.same_device(device) for known in self._devices):
            return
        self._devices.append(device)
        if self._state in (GatewayState.CONNECTED, GatewayState.CONNECTING_SEQUENCE):
            self._announce.add(device.key)  # not in the current Connect: announce it with its first status
        self._inbox.wake()

    # ---- main loop -------------------------------------------------------------

    async def run(self) -> GatewayStats:
        """Connect, communicate, reconnect — until the configured bound or :meth:`stop`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self.config.duration_s is not None:
            self._end_at = started + self.config.duration_s
        try:
            await self._sleep_until(started + self.config.start_delay_s)
            while await self._wait_ready_to_connect():
                if await self._connect_sequence():
                    await self._normal_communication()
        finally:
            self._release_waiters()
            self._final_state = self._state
            self._set_state(GatewayState.STOPPED)
        return self.stats

    def _finishing(self) -> bool:
        limit = self.config.max_statuses
        return (
            self._stop_requested
            or asyncio.get_running_loop().time() >= self._end_at
            or (limit is not None and self.stats.statuses_sent >= limit)
        )

    async def _sleep_until(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not self._finishing() and loop.time() < deadline:
            await self._inbox.next(min(deadline, self._end_at))

    async def _wait_ready_to_connect(self) -> bool:
        """Wait for: a device to announce, the broker, and the reconnect time. False when the run is over."""
        loop = asyncio.get_running_loop()
        while not self._finishing():
            now = loop.time()
            if self._devices and self.connection.connected and now >= self._reconnect_at:
                return True
            deadline = self._end_at
            if self._devices and self.connection.connected:
                deadline = min(deadline, self._reconnect_at)
            await self._inbox.next(deadline)  # anything arriving between sessions is ignored
        return False

    # ---- connect sequence ------------------------------------------------------

    async def _connect_sequence(self) -> bool:
        loop = asyncio.get_running_loop()
        self._set_state(GatewayState.CONNECTING_SEQUENCE)
        self.stats.connect_attempts += 1
        self._inbox.clear()  # nothing received before our Connect can belong to the new session
        self._pending.clear()
        self._farewells.clear()
        self._announce.clear()
        session_id = messages.new_session_id()
        self._session_id = session_id
        self._status_counter = 0
        self._command_counters = CommandCounterCheck()
        epoch = self._link_epoch
        devices = list(self._devices)
        started = loop.time()

        if not self._publish(messages.connect(session_id, self.config.company, self.config.car, devices)):
            return self._sequence_failed("publish failed")
        reply, reason = await self._read(epoch)
        if reply is None:
            return self._sequence_failed(reason)
        if messages.kind_of(reply) != "connectResponse":
            return self._sequence_failed(f"expected connectResponse, got {messages.kind_of(reply)}")
        if reply.connectResponse.sessionId != session_id:
            return self._sequence_failed("connectResponse with another session id")
        if reply.connectResponse.type == ext.ConnectResponse.ALREADY_LOGGED:
            return self._sequence_failed("connectResponse ALREADY_LOGGED")

        for device in devices:
            if self._send_status(device, ext.Status.CONNECTING, in_sequence=True) is None:
                return self._sequence_failed("publish failed")
        for _ in devices:
            reply, reason = await self._read(epoch)
            if reply is None:
                return self._sequence_failed(reason)
            if messages.kind_of(reply) != "statusResponse":
                return self._sequence_failed(f"expected statusResponse, got {messages.kind_of(reply)}")
            answer = reply.statusResponse
            if answer.sessionId != session_id or answer.type != ext.StatusResponse.OK:
                return self._sequence_failed("statusResponse with another session id or type")

        for _ in devices:
            reply, reason = await self._read(epoch)
            if reply is None:
                return self._sequence_failed(reason)
            if messages.kind_of(reply) != "command":
                return self._sequence_failed(f"expected command, got {messages.kind_of(reply)}")
            command = reply.command
            if command.sessionId != session_id:
                return self._sequence_failed("command with another session id")
            if not self._command_counters.accept(command.messageCounter):
                return self._sequence_failed("command counter out of order")
            response = self._response_for(command.deviceCommand.device)
            if response is None:
                return self._sequence_failed("command for a module this gateway does not handle")
            if not self._answer_command(command, response, loop.time()):
                return self._sequence_failed("publish failed")

        self.stats.sessions += 1
        self.stats.connect_durations_s.append(loop.time() - started)
        self._failing_in_a_row = 0
        self._log.info(
            "%s: connected, session %s, %d device(s), connect sequence %.1f ms.",
            self.car,
            session_id,
            len(devices),
            (loop.time() - started) * 1000.0,
        )
        self._set_state(GatewayState.CONNECTED)
        return True

    async def _read(self, epoch: int) -> tuple[ext.ExternalServer | None, str]:
        """One read of the connect sequence: a message within the timeout, or None and why not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timings.connect_response_timeout_s
        while True:
            if self._stop_requested or loop.time() >= self._end_at:
                return None, _STOPPED
            if epoch != self._link_epoch:
                return None, "connection lost"
            if loop.time() >= deadline:
                return None, "timeout"
            event = await self._inbox.next(min(deadline, self._end_at))
            if event is None:
                continue
            if event.kind is Kind.NOTIFICATION:
                return None, "disconnect notification"
            if event.kind is Kind.MESSAGE:
                message = self._parse(event.payload)
                if message is None:
                    return None, "malformed message"
                return message, ""

    def _sequence_failed(self, reason: str) -> bool:
        loop = asyncio.get_running_loop()
        if reason == _STOPPED:
            self._set_state(GatewayState.DISCONNECTED)
            return False
        self.stats.connect_failures += 1
        self.stats.failures[reason] += 1
        self._failing_in_a_row += 1
        self._reconnect_at = loop.time() + self._timings.reconnect_delay_s
        level = logging.WARNING if self._failing_in_a_row == 1 else logging.DEBUG
        self._log.log(
            level,
            "%s: connect sequence of session %s failed (%s); retrying in %.1f s%s.",
            self.car,
            self._session_id,
            reason,
            self._timings.reconnect_delay_s,
            " (further failures in a row are logged at DEBUG)" if level == logging.WARNING else "",
        )
        self._set_state(GatewayState.DISCONNECTED)
        return False

    # ---- normal communication --------------------------------------------------

    async def _normal_communication(self) -> None:
        loop = asyncio.get_running_loop()
        session_id, epoch = self._session_id, self._link_epoch
        interval = 0.0 if self.config.closed_loop else 1.0 / self.config.rate_hz
        status_timeout = self._timings.status_response_timeout_s
        self._next_status_at = loop.time()
        sending, drain_deadline = True, math.inf
        while True:
            now = loop.time()
            if sending and self._finishing():
                sending = False
                drain_deadline = now + (self._timings.drain_timeout_s if self._drain_on_stop else 0.0)
                if self.config.disconnect_at_end and self._drain_on_stop and not self._unplug_all():
                    return
            if not sending and (not self._pending or now >= drain_deadline):
                return
            oldest = next(iter(self._pending.values()), None)
            if oldest is not None and now - oldest >= status_timeout:
                self.stats.status_timeouts += 1
                self._drop("status response timeout")
                return
            may_send = sending and bool(self._devices) and not (self.config.closed_loop and self._pending)
            if may_send and now >= self._next_status_at:
                if self._send_status(self._next_device(), None) is None:
                    self._drop("publish failed")
                    return
                self._next_status_at = max(self._next_status_at + interval, now - _CATCH_UP_LIMIT_S)
                continue
            deadline = drain_deadline if not sending else self._end_at
            if oldest is not None:
                deadline = min(deadline, oldest + status_timeout)
            if may_send:
                deadline = min(deadline, self._next_status_at)
            event = await self._inbox.next(deadline)
            if event is None:
                continue
            if not sending and self._farewells and event.kind is Kind.NOTIFICATION:
                return  # the server ended the session because we unplugged everything: done
            reason = self._handle(event, session_id, epoch)
            if reason is not None:
                self._drop(reason)
                return

    def _handle(self, event: InboxEvent, session_id: str, epoch: int) -> str | None:
        """Apply one event of normal communication; a reason string means: drop the connection."""
        if event.kind is Kind.NOTIFICATION:
            return "disconnect notification"
        if event.kind is Kind.LINK_DOWN:
            return "connection lost" if epoch != self._link_epoch else None
        message = self._parse(event.payload)
        if message is None:
            return None
        kind = messages.kind_of(message)
        if kind == "statusResponse":
            return self._on_status_response(message.statusResponse, session_id, event.at)
        if kind == "command":
            command = message.command
            if command.sessionId != session_id:
                return "command with another session id"
            if not self._command_counters.accept(command.messageCounter):
                return "command counter out of order"
            response = self._response_for(command.deviceCommand.device)
            if response is None:
                response = ext.CommandResponse.DEVICE_NOT_SUPPORTED
            return None if self._answer_command(command, response, event.at) else "publish failed"
        if kind == "connectResponse":
            return "connectResponse in normal communication"
        self._log.warning("%s: ignoring a message of unknown type.", self.car)
        self.stats.malformed += 1
        return None

    def _on_status_response(self, response: ext.StatusResponse, session_id: str, at: float) -> str | None:
        if response.sessionId != session_id:
            return "statusResponse with another session id"
        sent = self._pending.pop(response.messageCounter, None)
        if sent is not None and response.messageCounter in self._farewells:
            self._farewells.discard(response.messageCounter)
            return None
        if sent is None:
            self._log.info(
                "%s: statusResponse for counter %d, not pending.", self.car, response.messageCounter
            )
            return "statusResponse for a counter not pending"
        self.stats.statuses_answered += 1
        self.stats.latencies_s.append(at - sent)
        waiter = self._waiters.pop(response.messageCounter, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(True)
        self._notify()
        if not self._pending and not self._devices:
            return "no device connected"
        return None

    def _unplug_all(self) -> bool:
        """End of run: a DISCONNECT status per device so the server closes the session now (not counted)."""
        for device in self._devices:
            counter = self._send_status(device, ext.Status.DISCONNECT, counted=False)
            if counter is None:
                return False
            self._farewells.add(counter)
        return True

    def _drop(self, reason: str) -> None:
        """Leave normal communication; reconnect with the next status (no 10 s delay, §4.15)."""
        loop = asyncio.get_running_loop()
        self.stats.drops[reason] += 1
        self._pending.clear()
        self._farewells.clear()
        self._release_waiters()
        self._reconnect_at = max(loop.time(), self._next_status_at)
        self._log.info("%s: dropped session %s (%s).", self.car, self._session_id, reason)
        self._set_state(GatewayState.DISCONNECTED)
