"""Shared helpers of the normal-communication integration tests (protocol.md §4.8–§4.14).

``connect_sequence`` plays the gateway's side of a complete connect sequence (§4.15 steps
1–5) and leaves the car in normal communication; ``serve_car`` starts a server and one
car client and stops both; ``ModuleSpy`` records the arguments of the module calls the
server makes, on top of the example module's own counters (the real module still runs).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from external_server.device import Device
from external_server.modules.context import ModuleContext
from external_server.session.state import CarState
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, ServerUnderTest, start_server
from mosquitto_broker import MosquittoBroker

CAR = "car_a"
SESSION_ID = "id"
T_S = 1.0
"""Response timeout T (connect-sequence reads, missing-status and command timers)."""
S_S = 2.0
"""Session inactivity timeout S."""
D_S = 0.1
"""Pause D after every session run."""
WAIT_S = 5.0
"""Upper bound for anything that should happen promptly."""

EXAMPLE_MODULE = 1000
UNCONFIGURED_MODULE = 1001
SUPPORTED_TYPES = "0,1"
UNSUPPORTED_TYPE = 7

DEVICE_1 = Device(EXAMPLE_MODULE, 0, "role_1", "Device 1")
DEVICE_2 = Device(EXAMPLE_MODULE, 0, "role_2", "Device 2")
NEW_DEVICE = Device(EXAMPLE_MODULE, 1, "io_button", "Button")
UNSUPPORTED_DEVICE = Device(EXAMPLE_MODULE, UNSUPPORTED_TYPE, "unsupported", "Unsupported")
FOREIGN_MODULE_DEVICE = Device(UNCONFIGURED_MODULE, 0, "foreign", "Foreign")

CONNECTING = ext.Status.CONNECTING
RUNNING = ext.Status.RUNNING
ERROR = ext.Status.ERROR
DISCONNECT = ext.Status.DISCONNECT


@dataclass(frozen=True)
class NormalSession:
    """What a completed connect sequence left behind."""

    session_id: str
    devices: tuple[Device, ...]
    first_command_counters: tuple[int, ...]
    next_status_counter: int
    """The counter the gateway uses for its first normal-communication status (N+1 for counters 1..N)."""

    @property
    def next_command_counter(self) -> int:
        return max(self.first_command_counters) + 1


async def connect_sequence(
    server: ServerUnderTest,
    car: CarClient,
    devices: Sequence[Device],
    *,
    session_id: str = SESSION_ID,
    first_status_counter: int = 1,
    car_name: str = CAR,
) -> NormalSession:
    """Connect, N CONNECTING statuses, N StatusResponses, N first Commands answered OK, then RUNNING."""
    car.send_connect(session_id, devices)
    response = await car.expect("connectResponse", WAIT_S)
    assert response.connectResponse.sessionId == session_id
    assert response.connectResponse.type == ext.ConnectResponse.OK
    counters = [first_status_counter + index for index in range(len(devices))]
    for counter, device in zip(counters, devices, strict=True):
        car.send_status(session_id, CONNECTING, counter, device, f"first {counter}".encode())
    for counter in counters:
        status_response = await car.expect("statusResponse", WAIT_S)
        assert status_response.statusResponse.sessionId == session_id
        assert status_response.statusResponse.messageCounter == counter
    command_counters: list[int] = []
    for _ in devices:
        command = await car.expect("command", WAIT_S)
        assert command.command.sessionId == session_id
        command_counters.append(command.command.messageCounter)
    for counter in command_counters:
        car.send_command_response(session_id, counter)
    await server.wait_state(car_name, CarState.RUNNING, WAIT_S)
    return NormalSession(
        session_id, tuple(devices), tuple(command_counters), first_status_counter + len(devices)
    )


@contextlib.asynccontextmanager
async def serve_car(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    *,
    module_config: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[ServerUnderTest, CarClient]]:
    """A server (T, S, D of this module unless overridden) and a connected car client for ``car_a``."""
    timings: dict[str, Any] = {
        "response_timeout_s": T_S,
        "session_timeout_s": S_S,
        "reconnect_delay_s": D_S,
    }
    timings.update(options)
    config = {"supported_device_types": SUPPORTED_TYPES, **(module_config or {})}
    server = await start_server(tmp_path, mosquitto.port, module_config=config, **timings)
    try:
        async with CarClient(mosquitto.address, COMPANY, CAR) as car:
            yield server, car
    finally:
        await server.stop()


async def wait_for_reset(server: ServerUnderTest, car: CarClient, timeout_s: float = WAIT_S) -> None:
    """The session run ended (disconnect notification) and the next run waits for a Connect."""
    assert await car.receive_disconnect_notification(timeout_s), "no disconnect notification (no reset)"
    await server.wait_state(CAR, CarState.CONNECTED, timeout_s)


async def expect_status_responses(
    car: CarClient, counters: Sequence[int], session_id: str = SESSION_ID
) -> None:
    """The next messages are StatusResponses with exactly these counters, in this order."""
    for counter in counters:
        message = await car.expect("statusResponse", WAIT_S)
        assert message.statusResponse.sessionId == session_id
        assert message.statusResponse.type == ext.StatusResponse.OK
        assert message.statusResponse.messageCounter == counter


def status_response_bytes(session_id: str, counter: int) -> bytes:
    return ext.ExternalServer(
        statusResponse=ext.StatusResponse(
            sessionId=session_id, type=ext.StatusResponse.OK, messageCounter=counter
        )
    ).SerializeToString()


def car_records(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    """Records of the server's loggers (``external_server…``) at ``level`` or above."""
    return [
        record
        for record in caplog.records
        if record.name.startswith("external_server") and record.levelno >= level
    ]


def logged(caplog: pytest.LogCaptureFixture, text: str, level: int) -> list[logging.LogRecord]:
    """Server records at exactly ``level`` whose message contains ``text`` (case-insensitive)."""
    return [
        record
        for record in car_records(caplog, level)
        if record.levelno == level and text.lower() in record.getMessage().lower()
    ]


@dataclass
class ModuleSpy:
    """Arguments of the module calls the server made (recorded, then passed to the real module).

    Every call is recorded whatever the module returns; the example module's counters tell
    which calls it accepted.
    """

    statuses: list[tuple[bytes, Device]] = field(default_factory=list)
    error_messages: list[tuple[bytes, Device]] = field(default_factory=list)
    acks: list[tuple[bytes, Device]] = field(default_factory=list)
    disconnected: list[tuple[int, Device]] = field(default_factory=list)
    connected: list[Device] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, into: list[Any], item: Any) -> None:
        with self._lock:
            into.append(item)

    def snapshot(self) -> dict[str, list[Any]]:
        with self._lock:
            return {
                "statuses": list(self.statuses),
                "error_messages": list(self.error_messages),
                "acks": list(self.acks),
                "disconnected": list(self.disconnected),
                "connected": list(self.connected),
            }


def install_spy(
    monkeypatch: pytest.MonkeyPatch, server: ServerUnderTest, car: str = CAR, module_id: int = EXAMPLE_MODULE
) -> ModuleSpy:
    """Wrap the car's module context so every call's arguments are recorded."""
    spy = ModuleSpy()
    runtime = next(r for r in server.server.cars[car].runtimes if r.module_id == module_id)
    context: ModuleContext = runtime.context

    def wrap(name: str, record: Callable[[tuple[Any, ...]], None]) -> None:
        original = getattr(context, name)

        def wrapper(*args: Any) -> Any:
            result = original(*args)
            record(args)  # after the call, so the module's counters already include it
            return result

        monkeypatch.setattr(context, name, wrapper)

    wrap("forward_status", lambda args: spy.record(spy.statuses, (bytes(args[0]), args[1])))
    wrap("forward_error_message", lambda args: spy.record(spy.error_messages, (bytes(args[0]), args[1])))
    wrap("command_ack", lambda args: spy.record(spy.acks, (bytes(args[0]), args[1])))
    wrap("device_disconnected", lambda args: spy.record(spy.disconnected, (int(args[0]), args[1])))
    wrap("device_connected", lambda args: spy.record(spy.connected, args[0]))
    return spy
