"""The connect sequence (protocol.md §4.3–§4.7, §4.12–§4.14) against a real server.

Checklist §8.7 (items 90–91) and §8.8 (items 92–137), plus the design decisions on
reference quirks (design.md) that concern the connect sequence. Every test drives an
in-process :class:`CompanyServer` on a real mosquitto with the real example module
through a :class:`CarClient`, and observes only what a car sees on MQTT, what the
module saw (its counters) and the session's state/registry.

Timing: T (response timeout) is 1 s unless a test needs a clear margin between "at
once" and "after T" (then T = 3 s); D (pause after a run) is 0.1 s. Resets are detected
through the disconnect notification every clean-up publishes (§3.3), never by sleeping.
No assertion bounds how fast the machine is: a timer's exact length is the session core's
fake-clock unit tests' business; here a reset is checked for its reason and for not coming
before its deadline (measured from a moment taken before the timer started), with
generous waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from external_server.app import CompanyServer
from external_server.cli import CliOptions
from external_server.config.loading import load_config
from external_server.device import Device
from external_server.session.car_session import CarSession
from external_server.session.reset import ResetReason
from external_server.session.state import CarState
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, ServerUnderTest, server_config_document, start_server
from mosquitto_broker import MosquittoBroker
from support.waiting import free_port

pytestmark = pytest.mark.broker

CAR = "car_a"
MODULE = 1000
T = 1.0
"""Response timeout (``timeout``) used by most tests."""
LONG_T = 3.0
"""Response timeout for tests that must tell "failed at once" from "failed after T"."""
D = 0.1
S = 3.0
NOTHING_S = 0.3
"""How long a negative check waits for a message that must not come."""

A = Device(MODULE, 0, "test", "T")
B = Device(MODULE, 0, "second", "B")
C = Device(MODULE, 0, "third", "C")
UNSUPPORTED_TYPE = Device(MODULE, 123456, "odd", "U")
UNKNOWN_MODULE = Device(1100, 0, "foreign", "F")

CONNECTING = ext.Status.CONNECTING
RUNNING = ext.Status.RUNNING


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def record_states(session: CarSession, monkeypatch: pytest.MonkeyPatch) -> list[CarState]:
    """Every state the session takes from now on (transient ones like ERROR included)."""
    states = [session.state]
    original = session.core.set_state

    def recording(wanted: CarState) -> None:
        original(wanted)
        if session.state != states[-1]:
            states.append(session.state)

    monkeypatch.setattr(session.core, "set_state", recording)
    return states


@dataclass
class Rig:
    """One server (one car, module 1000) and one scripted car."""

    server: ServerUnderTest
    car: CarClient
    states: list[CarState]
    t: float
    _resets_seen: Counter[str] = field(default_factory=Counter)
    phase_a_began: float = 0.0
    """When the phase A that :meth:`ready_for_connect` waited for began (the session's clock)."""

    @property
    def session(self) -> CarSession:
        return self.server.session(CAR)

    def counters(self) -> dict[str, int]:
        return self.server.counters(CAR)

    def registered(self) -> list[Device]:
        return self.session.registry.devices()

    def session_queue_length(self) -> int:
        """Commands the session holds for module 1000 (handed over by the waiting thread)."""
        return len(self.session.core.command_queues[MODULE])

    def snapshot_resets(self) -> None:
        self._resets_seen = Counter(self.session.stats.resets)

    def new_resets(self) -> Counter[str]:
        return Counter(self.session.stats.resets) - self._resets_seen

    async def ready_for_connect(self, margin_s: float = 0.5) -> None:
        """Wait until a phase A has just begun, so a Connect sent now lands well inside it.

        The session cycles phase A → (no Connect within T) → reset → D → phase A while
        idle; a Connect arriving during the clean-up of such a cycle would be discarded
        (§4.13.3). Also forgets messages/notifications received so far.
        """
        session = self.session

        def fresh_phase_a() -> bool:
            since = session.stats.state_since
            return (
                session.state == CarState.CONNECTED
                and since is not None
                and time.monotonic() - since < self.t - margin_s
            )

        await self.server.wait_until(fresh_phase_a, timeout_s=2 * (self.t + D) + 10)
        self.phase_a_began = session.stats.state_since or 0.0
        self.car.clear()
        self.snapshot_resets()

    async def expect_reset(self, reason: ResetReason, timeout_s: float | None = None) -> None:
        """One session reset (seen as the disconnect notification) and that it had ``reason``."""
        wait = timeout_s if timeout_s is not None else self.t + 10.0
        assert await self.car.receive_disconnect_notification(wait), f"no session reset within {wait} s"
        assert self.new_resets() == Counter({reason.value: 1}), dict(self.session.stats.resets)
        self.snapshot_resets()

    async def expect(self, kind: str) -> ext.ExternalServer:
        return await self.car.expect(kind, timeout=self.t + 1.0)

    async def expect_nothing(self, within_s: float = NOTHING_S) -> None:
        message = await self.car.receive(timeout=within_s)
        assert message is None, f"unexpected message: {message}"

    async def expect_connect_response(self, session_id: str) -> None:
        response = (await self.expect("connectResponse")).connectResponse
        assert response.sessionId == session_id
        assert response.type == ext.ConnectResponse.OK

    async def expect_status_responses(self, session_id: str, counters: Sequence[int]) -> None:
        for counter in counters:
            response = (await self.expect("statusResponse")).statusResponse
            assert (response.sessionId, response.type, response.messageCounter) == (
                session_id,
                ext.StatusResponse.OK,
                counter,
            )

    async def expect_commands(self, session_id: str, count: int) -> list[ext.Command]:
        commands = [(await self.expect("command")).command for _ in range(count)]
        assert all(command.sessionId == session_id for command in commands)
        return commands

    def answer(self, session_id: str, commands: Sequence[ext.Command]) -> None:
        for command in commands:
            self.car.send_command_response(session_id, command.messageCounter)

    async def wait_state(self, state: CarState) -> None:
        await self.server.wait_state(CAR, state, timeout_s=self.t + 2.0)

    async def run_sequence(
        self, session_id: str, devices: Sequence[Device], first_counter: int = 1, data: bytes = b"{}"
    ) -> list[ext.Command]:
        """A complete, well-behaved connect sequence (Connect order, counters from ``first_counter``)."""
        self.car.send_connect(session_id, devices)
        await self.expect_connect_response(session_id)
        counters = list(range(first_counter, first_counter + len(devices)))
        for counter, device in zip(counters, devices, strict=True):
            self.car.send_status(session_id, CONNECTING, counter, device, data)
        await self.expect_status_responses(session_id, counters)
        commands = await self.expect_commands(session_id, len(devices))
        self.answer(session_id, commands)
        await self.wait_state(CarState.RUNNING)
        return commands

    async def queue_commands(self, *commands: tuple[Device, bytes]) -> None:
        """Let the module produce commands and wait until the session holds them.

        Only for a car with a registered device of module 1000 (otherwise the session
        keeps just the newest, see :meth:`queue_stale_commands`).
        """
        before = self.session_queue_length()
        for device, data in commands:
            self.server.inject_command(CAR, device, data)
        await self.server.wait_until(lambda: self.session_queue_length() >= before + len(commands))

    async def queue_stale_commands(self, *commands: tuple[Device, bytes]) -> None:
        """Module commands produced while no device of module 1000 is registered."""
        popped = self.counters()["commands_popped"]
        for device, data in commands:
            self.server.inject_command(CAR, device, data)
        await self.server.wait_until(lambda: self.counters()["commands_popped"] >= popped + len(commands))
        # the waiting thread hands the popped batch to the loop right after popping
        await self.server.wait_until(lambda: self.session_queue_length() >= 1, what="batch handed over")


@contextlib.asynccontextmanager
async def open_rig(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    t: float = T,
    **options: Any,
) -> AsyncIterator[Rig]:
    options.setdefault("session_timeout_s", S)
    options.setdefault("reconnect_delay_s", D)
    server = await start_server(tmp_path, mosquitto.port, cars=(CAR,), response_timeout_s=t, **options)
    try:
        states = record_states(server.session(CAR), monkeypatch)
        async with CarClient(mosquitto.address, COMPANY, CAR) as car:
            rig = Rig(server, car, states, t)
            rig.snapshot_resets()
            yield rig
    finally:
        await server.stop()


def build_unconnected_server(tmp_path: Path, port: int) -> ServerUnderTest:
    """Like ``start_server`` but without waiting for the broker (which may be down)."""
    command_dir = tmp_path / f"commands-{CAR}"
    command_dir.mkdir(exist_ok=True)
    document = server_config_document(
        broker_port=port,
        cars={CAR: {str(MODULE): {"command_dir": str(command_dir), "command_dir_poll_ms": 5}}},
        response_timeout_s=T,
        session_timeout_s=S,
        reconnect_delay_s=D,
    )
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(document))
    server = CompanyServer(load_config(config_path), CliOptions(config_path=config_path))
    server.build()
    task = asyncio.create_task(server.serve(), name="server-under-test")
    return ServerUnderTest(server, task, {CAR: command_dir})


def reset_records(caplog: pytest.LogCaptureFixture, reason: ResetReason) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name.startswith("external_server")
        and f"Session reset ({reason.value})" in record.getMessage()
    ]


def has_log(caplog: pytest.LogCaptureFixture, level: int, text: str) -> bool:
    return any(
        record.levelno == level and record.name.startswith("external_server") and text in record.getMessage()
        for record in caplog.records
    )


def since_index(states: list[CarState], start: int) -> list[CarState]:
    return states[start:]


# --------------------------------------------------------------------------------------
# §8.7 — initial state and broker
# --------------------------------------------------------------------------------------


async def test_new_car_server_is_uninitialized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """§8.7 item 90: a new car server has no connected devices, is not connected to MQTT,
    has its module created and initialized, session id "" and state UNINITIALIZED.

    Built against a closed loopback port, so it stays in that initial state. "state is
    read-only" is a property of the reference's Python API with no MQTT-observable
    equivalent; it is not asserted here.
    """
    under_test = build_unconnected_server(tmp_path, free_port())
    try:
        session = under_test.session(CAR)
        states = record_states(session, monkeypatch)
        assert under_test.server.connection is not None
        assert not await under_test.server.connection.wait_connected(0.5)
        assert session.state == CarState.UNINITIALIZED
        assert states == [CarState.UNINITIALIZED]
        assert session.session_id == ""
        assert session.registry.devices() == []
        runtimes = under_test.server.cars[CAR].runtimes
        assert [runtime.module_id for runtime in runtimes] == [MODULE]
        assert runtimes[0].context.get_module_number() == MODULE  # initialized context answers
        counters = under_test.counters(CAR)
        assert (counters["connects"], counters["devices"], counters["statuses"]) == (0, 0, 0)
        assert sum(session.stats.resets.values()) == 0
    finally:
        await under_test.stop()


async def test_unreachable_broker_logs_could_not_connect_and_retries(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.7 item 91 (and §4.14 row 1): without a broker the server logs a WARNING
    "Could not connect", keeps the car UNINITIALIZED (no session run starts, nothing to
    notify) and keeps retrying: once the broker is up the car reaches phase A (CONNECTED).
    """
    mosquitto.stop()
    under_test = build_unconnected_server(tmp_path, mosquitto.port)
    try:
        session = under_test.session(CAR)
        await under_test.wait_until(
            lambda: has_log(caplog, logging.WARNING, "Could not connect"), timeout_s=5
        )
        assert under_test.server.connection is not None
        assert not under_test.server.connection.connected
        assert session.state == CarState.UNINITIALIZED
        assert session.registry.devices() == []
        await asyncio.to_thread(mosquitto.start)
        assert await under_test.server.connection.wait_connected(15)
        await under_test.wait_state(CAR, CarState.CONNECTED, timeout_s=5)
    finally:
        await under_test.stop()


# --------------------------------------------------------------------------------------
# §8.8 — phase A (Connect)
# --------------------------------------------------------------------------------------


async def test_no_connect_fails_phase_a_with_error_state(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§8.8 item 92 (§4.4.3, §4.14 row 2): with a broker but no Connect the run fails after T
    with a WARNING, the state goes ERROR, only the disconnect notification is published and
    the server starts a new run (CONNECTED again)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        await rig.expect_reset(ResetReason.NO_CONNECT)
        assert time.monotonic() - rig.phase_a_began >= rig.t  # not before the budget T
        await rig.wait_state(CarState.CONNECTED)
        assert since_index(rig.states, start)[:3] == [
            CarState.ERROR,
            CarState.UNINITIALIZED,
            CarState.CONNECTED,
        ]
        assert rig.car.pending() == 0
        assert rig.session.session_id == ""
        records = reset_records(caplog, ResetReason.NO_CONNECT)
        assert records
        assert all(record.levelno == logging.WARNING for record in records)
        assert "Connect message has not been received" in records[0].getMessage()


async def test_phase_a_discards_non_connect_messages(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§4.4.2 (fix e0e8040) and §4.12 phase A row, §2.1: statuses, command responses, empty
    and undecodable payloads before the Connect are discarded (INFO / WARNING) without ending
    the run; the Connect that follows is accepted in the same run."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_status("old", RUNNING, 7, A)
        rig.car.send_command_response("old", 3)
        rig.car.send(b"")
        rig.car.send(b"\x0a\x05ab")  # field 1 announces 5 bytes, only 2 follow: undecodable
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        assert rig.new_resets() == Counter()
        assert has_log(caplog, logging.INFO, "Discarding status message while waiting for connect.")
        assert has_log(caplog, logging.INFO, "Discarding command_response message while waiting for connect.")
        assert has_log(caplog, logging.WARNING, "not a valid ExternalClient")
        assert [device.key for device in rig.registered()] == [A.key]


async def test_phase_a_budget_holds_while_other_messages_keep_arriving(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.4.1: the overall phase A budget is T (checked after each discarded message), so a
    car that keeps sending statuses but no Connect, every 0.2 s (well under T), still gets the
    run reset: a budget restarted by every message would never run out."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()

        async def spam() -> None:
            counter = 1
            while True:
                rig.car.send_status("spam", RUNNING, counter, A)
                counter += 1
                await asyncio.sleep(0.2)  # the scenario: a steady stream of non-Connect messages

        spammer = asyncio.create_task(spam())
        try:
            await rig.expect_reset(ResetReason.NO_CONNECT, timeout_s=2 * rig.t + 10.0)
        finally:
            spammer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spammer
        assert time.monotonic() - rig.phase_a_began >= rig.t
        assert rig.counters()["statuses"] == 0


@pytest.mark.parametrize(
    ("session_id", "devices"),
    [pytest.param("id", [], id="no-devices"), pytest.param("", [A], id="empty-session-id")],
)
async def test_connect_without_devices_or_session_id_gets_no_response(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    session_id: str,
    devices: list[Device],
) -> None:
    """§8.8 item 110 (§4.4.4–5, §4.14 row 3): a Connect with an empty device list (or an empty
    session id) registers nothing, gets no ConnectResponse and fails the run at once (WARNING)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, t=LONG_T) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect(session_id, devices)
        await rig.expect_reset(ResetReason.INVALID_CONNECT, timeout_s=LONG_T / 2)
        await rig.expect_nothing()
        assert rig.counters()["connects"] == 0
        assert rig.registered() == []
        assert all(
            record.levelno == logging.WARNING for record in reset_records(caplog, ResetReason.INVALID_CONNECT)
        )


@pytest.mark.parametrize("devices", [pytest.param([A], id="one"), pytest.param([A, B], id="two")])
async def test_connect_registers_supported_devices_and_answers_ok(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, devices: list[Device]
) -> None:
    """§8.8 items 111 and 113 (§4.4.6): supported devices are registered in Connect order
    (device_connected on the module) and ``ConnectResponse{sessionId:"id", OK}`` is published
    with the exact bytes of §2.4."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", devices)
        response = await rig.expect("connectResponse")
        assert response.SerializeToString() == bytes.fromhex("0a040a026964")
        assert [device.key for device in rig.registered()] == [device.key for device in devices]
        assert rig.counters()["connects"] == len(devices)
        assert rig.session.session_id == "id"


@pytest.mark.parametrize(
    "device",
    [
        pytest.param(Device(MODULE, 1251, "odd", "U"), id="unsupported-type"),
        pytest.param(Device(1100, 0, "x"), id="unconfigured-module"),
    ],
)
async def test_unsupported_devices_only_still_get_ok_then_no_devices_failure(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    device: Device,
) -> None:
    """§8.8 items 112 and 103 (§4.4.6, §4.6.1, §4.14 row 7): a device of an unsupported type
    (1251) or of an unconfigured module (1100) is not registered, the car still gets
    ConnectResponse OK, and phase C then fails at once with "All devices have been
    disconnected" (no StatusResponse, no Command)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, t=LONG_T) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [device])
        await rig.expect_connect_response("id")
        await rig.expect_reset(ResetReason.NO_DEVICES, timeout_s=LONG_T / 2)
        await rig.expect_nothing()
        assert rig.counters()["connects"] == 0
        assert has_log(caplog, logging.WARNING, "Ignoring device")
        records = reset_records(caplog, ResetReason.NO_DEVICES)
        assert records
        assert "All devices have been disconnected" in records[0].getMessage()
        assert records[0].levelno == logging.WARNING


async def test_duplicate_device_in_connect_is_registered_once(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.4.6 and §4.9: a device listed twice in the Connect (same module/type/role, another
    name) is registered once, with the name first seen; one first status completes phase B."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A, Device(MODULE, 0, "test", "other name")])
        await rig.expect_connect_response("id")
        assert rig.registered() == [A]
        assert rig.counters()["connects"] == 1
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        assert commands[0].deviceCommand.device.deviceName == "T"


async def test_device_refused_by_module_is_not_registered(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§4.4.6 and §4.14 (module return codes): a device whose ``device_connected`` returns
    non-OK is logged at ERROR and not registered; the others are, and the sequence completes
    with one command for the registered device only."""
    refused = Device(MODULE, 0, "refused", "R")
    async with open_rig(mosquitto, tmp_path, monkeypatch, module_config={"reject_roles": "refused"}) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [refused, A])
        await rig.expect_connect_response("id")
        assert rig.registered() == [A]
        assert has_log(caplog, logging.ERROR, "refused device")
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        assert commands[0].deviceCommand.device.deviceRole == "test"
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)


# --------------------------------------------------------------------------------------
# §8.8 — phase B (first statuses)
# --------------------------------------------------------------------------------------


async def test_connect_without_first_status_fails_and_disconnects_devices(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§8.8 item 93 (§4.5.1, §4.13.7, §4.14 row 4): a Connect but no first status → the run
    fails after T (WARNING), state ERROR, the registered device gets
    ``device_disconnected`` in the clean-up and the registry is emptied."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        began = time.monotonic()  # phase B's budget starts after this
        rig.car.send_connect("id", [A, B])
        await rig.expect_connect_response("id")
        await rig.expect_reset(ResetReason.FIRST_STATUS)
        assert time.monotonic() - began >= rig.t
        assert CarState.ERROR in since_index(rig.states, start)
        assert CarState.INITIALIZED not in since_index(rig.states, start)
        await rig.server.wait_until(lambda: rig.counters()["disconnects"] == 2)
        assert rig.counters()["devices"] == 0
        assert rig.registered() == []
        await rig.expect_nothing()
        records = reset_records(caplog, ResetReason.FIRST_STATUS)
        assert records[0].levelno == logging.WARNING
        assert "First status from device has not been received" in records[0].getMessage()


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(ext.Status.DISCONNECT, id="DISCONNECT"),
        pytest.param(ext.Status.RUNNING, id="RUNNING"),
        pytest.param(ext.Status.ERROR, id="ERROR"),
    ],
)
async def test_first_status_not_connecting_fails(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    state: ext.Status.DeviceState,
) -> None:
    """§8.8 item 96 (§4.5.5, §4.14 row 5): a first status in DISCONNECT (also RUNNING, ERROR)
    state fails the run at once: ERROR log "must contain CONNECTING state", state ERROR, no
    StatusResponse, nothing forwarded. (CONNECTING is accepted: see the happy-path tests.)"""
    async with open_rig(mosquitto, tmp_path, monkeypatch, t=LONG_T) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", state, 1, A)
        await rig.expect_reset(ResetReason.FIRST_STATUS, timeout_s=LONG_T / 2)
        await rig.expect_nothing()
        assert CarState.ERROR in since_index(rig.states, start)
        assert rig.counters()["statuses"] == 0
        assert has_log(caplog, logging.ERROR, "must contain CONNECTING state")


async def test_first_statuses_answered_with_their_counters(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 114 (§4.5.6, §2.4): Connect + one CONNECTING status with counter 0 → the car
    receives ConnectResponse and then exactly ``StatusResponse{id, OK, 0}`` (bytes of §2.4)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 0, A, b"{}")
        response = await rig.expect("statusResponse")
        assert response.SerializeToString() == bytes.fromhex("12040a026964")


@pytest.mark.parametrize(
    "counters", [pytest.param([0, 1, 2], id="0-1-2"), pytest.param([0, 1, 1], id="0-1-1-duplicate")]
)
async def test_three_devices_first_statuses_and_responses(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counters: list[int]
) -> None:
    """§8.8 items 115 and 99 (§4.5, counters of first statuses are not checked): three
    supported devices, first statuses with counters 0,1,2 (or 0,1,1) → StatusResponses with
    the same counters follow the ConnectResponse; responses 0,1,2 → all registered, INITIALIZED."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A, B, C])
        await rig.expect_connect_response("id")
        for counter, device in zip(counters, [A, B, C], strict=True):
            rig.car.send_status("id", CONNECTING, counter, device)
        await rig.expect_status_responses("id", counters)
        commands = await rig.expect_commands("id", 3)
        assert [command.messageCounter for command in commands] == [0, 1, 2]
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        assert since_index(rig.states, start)[:2] == [CarState.INITIALIZED, CarState.RUNNING]
        assert [device.key for device in rig.registered()] == [A.key, B.key, C.key]


async def test_first_statuses_in_other_order_than_connect(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 items 100 and 122 (§4.5 last paragraph, §4.6.4–5): first statuses arriving in
    another order than the Connect list complete the sequence (all registered, INITIALIZED);
    with empty module queues the three first commands are empty and follow the registration
    (Connect) order with counters 0,1,2."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A, B, C])
        await rig.expect_connect_response("id")
        for counter, device in [(1, C), (2, A), (3, B)]:
            rig.car.send_status("id", CONNECTING, counter, device)
        await rig.expect_status_responses("id", [1, 2, 3])
        commands = await rig.expect_commands("id", 3)
        assert [command.deviceCommand.device.deviceRole for command in commands] == [
            "test",
            "second",
            "third",
        ]
        assert [command.messageCounter for command in commands] == [0, 1, 2]
        assert all(command.deviceCommand.commandData == b"" for command in commands)
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        assert CarState.INITIALIZED in since_index(rig.states, start)
        assert len(rig.registered()) == 3


async def test_missing_first_status_with_command_responses_fails(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 102 (§4.5.1): three devices but only two first statuses, then command
    responses → the non-Status message fails phase B at once (not after T); two
    StatusResponses were sent, no Command."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, t=LONG_T) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A, B, C])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        rig.car.send_status("id", CONNECTING, 2, B)
        await rig.expect_status_responses("id", [1, 2])
        for counter in range(3):
            rig.car.send_command_response("id", counter)
        await rig.expect_reset(ResetReason.FIRST_STATUS, timeout_s=LONG_T / 2)
        await rig.expect_nothing()
        assert CarState.ERROR in since_index(rig.states, start)
        assert CarState.INITIALIZED not in since_index(rig.states, start)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            ext.ExternalClient(commandResponse=ext.CommandResponse(sessionId="id")), id="command-response"
        ),
        pytest.param(ext.ExternalClient(), id="empty-message"),
        pytest.param(ext.ExternalClient(connect=ext.Connect(sessionId="other")), id="connect"),
    ],
)
async def test_non_status_in_phase_b_fails(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: ext.ExternalClient
) -> None:
    """§4.5.1, §4.12 (phase B row) and §4.14 row 4: a CommandResponse, an empty message or a
    Connect where a first status is expected fails the run at once; nothing is forwarded."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, t=LONG_T) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send(message)
        await rig.expect_reset(ResetReason.FIRST_STATUS, timeout_s=LONG_T / 2)
        await rig.expect_nothing()
        assert rig.counters()["statuses"] == 0


async def test_phase_b_ignores_status_of_another_session(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§4.5.4 and §4.12 (phase B row): a first status with another session id is ignored
    (INFO), not answered, not counted and not forwarded; the right one then completes phase B."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("other", CONNECTING, 5, A)
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        assert rig.counters()["statuses"] == 1
        assert has_log(caplog, logging.INFO, "Ignoring status with different session ID 'other'")
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)


@pytest.mark.parametrize(
    "error_message",
    [pytest.param(b"failure", id="error-message"), pytest.param(b"", id="empty-error-message")],
)
async def test_first_status_forwarded_once(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error_message: bytes
) -> None:
    """§8.8 item 105 (§4.5.8): the registered device's first status is forwarded to the
    module exactly once — before the first command is published — with its error message
    only when the message is non-empty."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A, b"{}", error_message)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        expected_errors = 1 if error_message else 0
        assert (rig.counters()["statuses"], rig.counters()["error_messages"]) == (1, expected_errors)
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        assert (rig.counters()["statuses"], rig.counters()["error_messages"]) == (1, expected_errors)


async def test_unsupported_type_first_status_fails_without_forwarding(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§8.8 item 106 (§4.5.3): a first status from a device of an unsupported type, then
    nothing → it is ignored (WARNING), not forwarded, and the phase fails after T."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, UNSUPPORTED_TYPE)
        await rig.expect_reset(ResetReason.FIRST_STATUS)
        await rig.expect_nothing()
        assert rig.counters()["statuses"] == 0
        assert has_log(caplog, logging.WARNING, "type not supported")


async def test_only_unsupported_listed_device_status_fails(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 107: Connect lists a supported and an unsupported-type device, only the
    unsupported device's status arrives → nothing forwarded, phase B fails (after T)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A, UNSUPPORTED_TYPE])
        await rig.expect_connect_response("id")
        assert [device.key for device in rig.registered()] == [A.key]
        rig.car.send_status("id", CONNECTING, 1, UNSUPPORTED_TYPE)
        await rig.expect_reset(ResetReason.FIRST_STATUS)
        await rig.expect_nothing()
        assert rig.counters()["statuses"] == 0


async def collect_echoes(rig: Rig, session_id: str, wanted: int) -> list[bytes]:
    """Answer every command until ``wanted`` non-empty ones were seen; their data in order."""
    echoes: list[bytes] = []
    while len(echoes) < wanted:
        command = (await rig.expect("command")).command
        assert command.sessionId == session_id
        rig.car.send_command_response(session_id, command.messageCounter)
        if command.deviceCommand.commandData:
            echoes.append(command.deviceCommand.commandData)
    return echoes


async def test_first_statuses_forwarded_in_arrival_order(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 108 (§4.5.8): three registered devices whose first statuses arrive as
    1,3,2 are forwarded in that arrival order. Observed through the example module's
    ``echo_every=1``: every forwarded status of a connected device becomes a module command
    carrying the status bytes, so the order of those commands is the forwarding order."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, module_config={"echo_every": "1"}) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A, B, C])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A, b"status-1")
        rig.car.send_status("id", CONNECTING, 2, C, b"status-3")
        rig.car.send_status("id", CONNECTING, 3, B, b"status-2")
        await rig.expect_status_responses("id", [1, 2, 3])
        assert await collect_echoes(rig, "id", 3) == [b"status-1", b"status-3", b"status-2"]
        assert rig.counters()["statuses"] == 3


async def test_unlisted_device_first_status_forwarded_but_not_answered(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 109 (§4.5.7–8): a CONNECTING first status of a supported device missing from
    the Connect, arriving between two listed ones, is forwarded (module count 3) but not
    answered (only StatusResponses 1 and 3) and the device is not registered. The listed
    devices' statuses are forwarded in arrival order (echo_every); the unlisted device's
    position in that order is not observable, the example module echoes only for connected
    devices."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, module_config={"echo_every": "1"}) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [C, A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A, b"a")
        rig.car.send_status("id", CONNECTING, 2, B, b"b")
        rig.car.send_status("id", CONNECTING, 3, C, b"c")
        await rig.expect_status_responses("id", [1, 3])
        assert await collect_echoes(rig, "id", 2) == [b"a", b"c"]
        assert rig.counters()["statuses"] == 3
        assert [device.key for device in rig.registered()] == [C.key, A.key]
        await rig.wait_state(CarState.RUNNING)
        await rig.expect_nothing()  # in particular no StatusResponse 2


@pytest.mark.parametrize("unlisted_first", [False, True], ids=["listed-first", "unlisted-first"])
async def test_only_listed_device_status_answered(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unlisted_first: bool
) -> None:
    """§8.8 item 116: Connect with device A; statuses from A (counter 0) and from unlisted
    device B (counter 1) → only ``StatusResponse{…, 0}`` is published (whether B's status is
    seen in phase B or skipped in phase D)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        statuses = [(0, A), (1, B)]
        for counter, device in reversed(statuses) if unlisted_first else statuses:
            rig.car.send_status("id", CONNECTING, counter, device)
        await rig.expect_status_responses("id", [0])
        commands = await rig.expect_commands("id", 1)
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        await rig.expect_nothing()
        assert [device.key for device in rig.registered()] == [A.key]


async def test_unknown_module_first_status_is_ignored(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§8.8 item 135 and design decision §10.8 (REF-QUIRK §4.5.2 fixed): Connect with a
    supported device and a device of an unknown module, statuses for both (the unknown one
    first, so phase B sees it) and two responses → the unknown module's status is ignored
    (WARNING) instead of failing phase B; only the supported device's status reaches the module."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A, UNKNOWN_MODULE])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, UNKNOWN_MODULE)
        rig.car.send_status("id", CONNECTING, 2, A)
        await rig.expect_status_responses("id", [2])
        commands = await rig.expect_commands("id", 1)
        rig.car.send_command_response("id", commands[0].messageCounter)
        rig.car.send_command_response("id", commands[0].messageCounter + 1)
        await rig.wait_state(CarState.RUNNING)
        assert rig.new_resets() == Counter()
        assert rig.counters()["statuses"] == 1
        assert [device.key for device in rig.registered()] == [A.key]
        assert has_log(caplog, logging.WARNING, "unknown module 1100")


async def test_same_first_status_twice_forwarded_once(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 130: the same first status sent twice (one device) → it reaches the module
    once (the duplicate arrives after phase B and is skipped in phase D) and the sequence
    still completes."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A, b"{}")
        rig.car.send_status("id", CONNECTING, 1, A, b"{}")
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        assert rig.counters()["statuses"] == 1
        await rig.expect_nothing()


async def test_duplicate_first_status_counts_in_phase_b(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.5.6 (companion of item 130): duplicates are not detected in phase B — with two
    registered devices, A's first status sent twice is answered twice and completes phase B
    without B's status; both are forwarded and both devices get a first command."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A, B])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1, 1])
        commands = await rig.expect_commands("id", 2)
        assert rig.counters()["statuses"] == 2
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)


async def test_second_connect_before_first_status_fails(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 129 (§4.12 phase B row): two Connects with the same id before the first
    status → phase B fails at once on the second Connect and the status sent after it never
    reaches the module (it is discarded, in the clean-up or by the next phase A)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        rig.car.send_connect("id", [A])
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_connect_response("id")
        await rig.expect_reset(ResetReason.FIRST_STATUS)
        # the next run's phase A sees at most the stale status and times out
        await rig.expect_reset(ResetReason.NO_CONNECT)
        assert rig.counters()["statuses"] == 0
        assert rig.car.pending() == 0


# --------------------------------------------------------------------------------------
# §8.8 — phases C and D (first commands and their responses)
# --------------------------------------------------------------------------------------


async def test_full_sequence_reaches_initialized(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 items 95 and 104 (§4.6, §4.7, §4.3): Connect + CONNECTING status + CommandResponse
    OK → state INITIALIZED (then RUNNING); on a fresh server the one first command has counter
    0 (no counter field on the wire) and the device is registered."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        commands = await rig.run_sequence("id", [A])
        assert len(commands) == 1
        assert commands[0].messageCounter == 0
        assert commands[0].deviceCommand.commandData == b""
        assert since_index(rig.states, start)[:2] == [CarState.INITIALIZED, CarState.RUNNING]
        assert rig.registered() == [A]
        assert rig.new_resets() == Counter()


async def test_missing_first_command_response_fails(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§8.8 item 94 (§4.7.1, §4.14 row 9): Connect + CONNECTING status but no command
    response → the run fails after T (WARNING), state ERROR, never INITIALIZED; the status
    had been forwarded and the device is disconnected in the clean-up."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        began = time.monotonic()  # phase D's budget starts after this
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        await rig.expect_commands("id", 1)
        await rig.expect_reset(ResetReason.FIRST_COMMAND_RESPONSE)
        assert time.monotonic() - began >= rig.t
        assert CarState.ERROR in since_index(rig.states, start)
        assert CarState.INITIALIZED not in since_index(rig.states, start)
        await rig.server.wait_until(lambda: rig.counters()["disconnects"] == 1)
        assert rig.counters()["statuses"] == 1
        assert reset_records(caplog, ResetReason.FIRST_COMMAND_RESPONSE)[0].levelno == logging.WARNING


async def test_status_instead_of_first_command_response_then_silence_fails(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§8.8 item 125 (§4.7.1): while waiting for a first command response a status is skipped
    (INFO "Expected command response, received status. Skipping.") and does not count; with no
    response after it the phase fails after T."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        await rig.expect_commands("id", 1)
        rig.car.send_status("id", RUNNING, 2, A)
        await rig.expect_reset(ResetReason.FIRST_COMMAND_RESPONSE)
        await rig.expect_nothing()
        assert has_log(caplog, logging.INFO, "Expected command response, received status. Skipping.")


async def test_phase_d_skips_status_and_empty_messages(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.7.1 and §4.12 (phase D row): a status and an empty message while waiting for the
    first command response are skipped; the response that follows completes the sequence."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        rig.car.send_status("id", RUNNING, 2, A)
        rig.car.send(b"")
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        assert rig.new_resets() == Counter()


async def test_device_not_connected_first_response_keeps_device(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 97 (§4.7.2): a first CommandResponse of type DEVICE_NOT_CONNECTED still
    completes the sequence (INITIALIZED), the device stays registered (no
    ``device_disconnected``) and its next RUNNING status is answered."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        rig.car.send_command_response(
            "id", commands[0].messageCounter, ext.CommandResponse.DEVICE_NOT_CONNECTED
        )
        await rig.wait_state(CarState.RUNNING)
        assert CarState.INITIALIZED in since_index(rig.states, start)
        assert rig.registered() == [A]
        assert rig.counters()["disconnects"] == 0
        rig.car.send_status("id", RUNNING, 2, A)
        await rig.expect_status_responses("id", [2])


async def test_unsupported_type_device_in_connect_is_not_registered(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 98: Connect lists a supported device and one of unsupported type 123456, two
    statuses (the unsupported one first, ignored in phase B) and two command responses →
    INITIALIZED, only the supported device registered, one first command, one forwarded status."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A, UNSUPPORTED_TYPE])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, UNSUPPORTED_TYPE)
        rig.car.send_status("id", CONNECTING, 2, A)
        await rig.expect_status_responses("id", [2])
        commands = await rig.expect_commands("id", 1)
        rig.car.send_command_response("id", commands[0].messageCounter)
        rig.car.send_command_response("id", commands[0].messageCounter + 1)
        await rig.wait_state(CarState.RUNNING)
        assert CarState.INITIALIZED in since_index(rig.states, start)
        assert rig.registered() == [A]
        assert (rig.counters()["connects"], rig.counters()["statuses"]) == (1, 1)
        await rig.expect_nothing()


async def test_first_command_responses_out_of_order(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 101 (§4.7.2, §4.11): three devices, first command responses in the order
    1,2,0 → INITIALIZED, and all three commands are released (nothing left pending that could
    time out later)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A, B, C])
        await rig.expect_connect_response("id")
        for counter, device in enumerate([A, B, C], start=1):
            rig.car.send_status("id", CONNECTING, counter, device)
        await rig.expect_status_responses("id", [1, 2, 3])
        commands = await rig.expect_commands("id", 3)
        assert [command.messageCounter for command in commands] == [0, 1, 2]
        for counter in (1, 2, 0):
            rig.car.send_command_response("id", counter)
        await rig.wait_state(CarState.RUNNING)
        assert CarState.INITIALIZED in since_index(rig.states, start)
        assert len(rig.session.command_tracker) == 0


async def test_empty_first_command_is_server_generated(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 119 (§4.6.4, §2.4, §4.9): with an empty module queue the first command is an
    empty, server-generated command for the registered device (priority forced to 0, name as
    registered); its response gives the module no ``command_ack``."""
    announced = Device(MODULE, 0, "test", "T", priority=3)
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        commands = await rig.run_sequence("id", [announced])
        device = commands[0].deviceCommand.device
        assert (device.module, device.deviceType, device.deviceRole, device.deviceName, device.priority) == (
            MODULE,
            0,
            "test",
            "T",
            0,
        )
        assert commands[0].deviceCommand.commandData == b""
        assert rig.registered()[0].priority == 0
        assert rig.counters()["acks"] == 0


async def test_queued_command_is_the_first_command(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 120 (§4.6.2, §4.7.3): one command queued for the device (produced by the
    module after the device was registered) is its first command, and the response to it is
    acknowledged to the module (``command_ack``)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        await rig.queue_commands((A, b"go"))
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        assert commands[0].deviceCommand.commandData == b"go"
        assert commands[0].deviceCommand.device.deviceRole == "test"
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        await rig.server.wait_counter(CAR, "acks", 1)


async def test_only_oldest_of_three_queued_commands_is_used(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 121 (§4.6.2, §10.5): three commands queued for one device → only the first
    (oldest) is sent; the other two are dropped (not sent later either)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        await rig.queue_commands((A, b"first"), (A, b"second"), (A, b"third"))
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        assert commands[0].deviceCommand.commandData == b"first"
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        await rig.expect_nothing()
        await rig.server.wait_counter(CAR, "acks", 1)
        assert rig.counters()["acks"] == 1


@pytest.mark.parametrize(
    ("queued", "expected"),
    [
        pytest.param([(B, b"b1"), (C, b"c1"), (A, b"a1")], [b"b1", b"c1", b"a1"], id="one-per-device"),
        pytest.param(
            [(B, b"b1"), (A, b"a1"), (C, b"c1"), (B, b"b2"), (A, b"a2"), (C, b"c2")],
            [b"b1", b"a1", b"c1"],
            id="two-per-device",
        ),
    ],
)
async def test_one_queued_command_per_device_in_queue_order(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    queued: list[tuple[Device, bytes]],
    expected: list[bytes],
) -> None:
    """§8.8 item 123 (§4.6.2, §4.6.5): one queued command per device → those commands, in
    queue order; two per device → the first of each."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A, B, C])
        await rig.expect_connect_response("id")
        await rig.queue_commands(*queued)
        for counter, device in enumerate([A, B, C], start=1):
            rig.car.send_status("id", CONNECTING, counter, device)
        await rig.expect_status_responses("id", [1, 2, 3])
        commands = await rig.expect_commands("id", 3)
        assert [command.deviceCommand.commandData for command in commands] == expected
        assert [command.messageCounter for command in commands] == [0, 1, 2]
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        await rig.expect_nothing()


async def test_queued_command_for_unregistered_device_is_dropped(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§8.8 item 124 (§4.6.3): queued commands for a registered and a not-registered device →
    only the registered device's command is used; the other is dropped with WARNING
    "Device '…' not connected. Command from API will be ignored." and never sent."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        await rig.queue_commands((B, b"for-b"), (A, b"for-a"))
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        assert commands[0].deviceCommand.commandData == b"for-a"
        rig.answer("id", commands)
        await rig.wait_state(CarState.RUNNING)
        await rig.expect_nothing()
        assert has_log(caplog, logging.WARNING, "not connected. Command from API will be ignored.")


async def test_response_with_unmatched_counter_counts_but_command_times_out(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 126 (§4.7.2 and its last paragraph): a CommandResponse with the current
    session id is accepted as the first command response whatever its counter (here 1, no
    such command) → INITIALIZED; the unanswered command 0 then causes a
    COMMAND_RESPONSE_TIMEOUT reset about T after it was sent."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        sent = time.monotonic()  # command 0 is sent (its timer starts) after this
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        assert commands[0].messageCounter == 0
        rig.car.send_command_response("id", 1)
        await rig.wait_state(CarState.RUNNING)
        assert CarState.INITIALIZED in since_index(rig.states, start)
        await rig.expect_reset(ResetReason.COMMAND_RESPONSE_TIMEOUT)
        assert time.monotonic() - sent >= rig.t


async def test_response_of_another_session_then_silence_fails(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§8.8 item 127 (§4.7.1, §4.12 phase D row): a CommandResponse with another session id
    is skipped (INFO) and then nothing → the phase fails after T."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        start = len(rig.states)
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        rig.car.send_command_response("other", commands[0].messageCounter)
        await rig.expect_reset(ResetReason.FIRST_COMMAND_RESPONSE)
        assert CarState.INITIALIZED not in since_index(rig.states, start)
        assert has_log(caplog, logging.INFO, "different session ID 'other'")


@pytest.mark.parametrize("session_id", ["id", "new"])
async def test_connect_in_phase_d_fails_and_is_not_answered(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_id: str
) -> None:
    """§4.7.1, §4.12 (phase D row: any id) and §4.14 row 9: a Connect while waiting for a
    first command response fails the run at once; that Connect is discarded, so no
    ConnectResponse follows and the next phase A runs into its timeout."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, t=LONG_T) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        await rig.expect_commands("id", 1)
        rig.car.send_connect(session_id, [A])
        await rig.expect_reset(ResetReason.CONNECT_DURING_SEQUENCE, timeout_s=LONG_T / 2)
        await rig.expect_reset(ResetReason.NO_CONNECT, timeout_s=LONG_T + 2)
        assert rig.car.pending() == 0


async def test_message_after_last_first_response_is_processed(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§10.7 / §4.8 note (design decision: no lag): a RUNNING status that arrives right after
    the last first command response is processed in normal communication at once (answered
    within T), not held until the next message arrives."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        rig.answer("id", commands)
        rig.car.send_status("id", RUNNING, 2, A, b"running")
        await rig.expect_status_responses("id", [2])
        await rig.server.wait_counter(CAR, "statuses", 2)


async def test_module_command_queued_during_phase_d_is_sent_after_sequence(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.8 note / §10.7 (design decision: flush module queues on entering normal
    communication): a module command produced while the first command response is awaited
    is published right after the sequence completes, without waiting for another module event."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        commands = await rig.expect_commands("id", 1)
        await rig.queue_commands((A, b"late"))
        popped = rig.counters()["commands_popped"]
        rig.answer("id", commands)
        command = (await rig.expect("command")).command
        assert (command.messageCounter, command.deviceCommand.commandData) == (1, b"late")
        assert rig.counters()["commands_popped"] == popped
        rig.answer("id", [command])
        await rig.server.wait_counter(CAR, "acks", 1)


async def test_command_timer_expired_during_sequence_still_resets(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.11 REF-QUIRK / §10.7 (design decision: timers authoritative): a first command whose
    response timer T expires while phase D is still running (the car answers only other
    counters, slowly) is not forgotten — normal communication starts with a
    COMMAND_RESPONSE_TIMEOUT reset (a forgotten timer would leave the session running until the
    session timer S ends it with another reason). T = 3 s: the scripted gaps of 0.6 T keep a wide
    margin below T, so a busy machine cannot turn them into a phase D timeout."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, t=LONG_T) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A, B])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        rig.car.send_status("id", CONNECTING, 2, B)
        await rig.expect_status_responses("id", [1, 2])
        commands = await rig.expect_commands("id", 2)
        assert [command.messageCounter for command in commands] == [0, 1]
        await asyncio.sleep(0.6 * rig.t)  # scripted slowness: each gap stays below T
        rig.car.send_command_response("id", 1)  # early acknowledgement, counts as response 1 of 2
        await asyncio.sleep(0.6 * rig.t)  # command 0's timer has now expired
        rig.car.send_command_response("id", 7)  # unknown counter, counts as response 2 of 2
        await rig.expect_reset(ResetReason.COMMAND_RESPONSE_TIMEOUT)
        assert CarState.RUNNING in rig.states  # phase D completed; the expired timer ended the run


# --------------------------------------------------------------------------------------
# §8.8 — module commands waiting before the Connect (stale-command fix)
# --------------------------------------------------------------------------------------


async def test_commands_waiting_before_connect_are_discarded(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§8.8 item 131 (§4.4.6 stale-command fix, §9 BAF-1446; design: stale commands are
    discarded when the module's first device registers): two commands already waiting in the
    module before the Connect → the sequence completes with an EMPTY first command, the stale
    commands never reach the car, and both statuses (CONNECTING + a RUNNING one) reach the module."""
    caplog.set_level(logging.INFO, logger="external_server")
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.queue_stale_commands((A, b"stale-1"), (A, b"stale-2"))
        await rig.ready_for_connect()
        commands = await rig.run_sequence("id", [A])
        assert commands[0].deviceCommand.commandData == b""
        rig.car.send_status("id", RUNNING, 2, A)
        await rig.expect_status_responses("id", [2])
        await rig.server.wait_counter(CAR, "statuses", 2)
        await rig.expect_nothing()
        assert has_log(caplog, logging.INFO, "stale command(s) of module 1000")
        assert rig.counters()["acks"] == 0


async def test_commands_posted_while_no_car_connected_do_not_reach_the_car(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 137 (§4.13 last paragraph, design: stale commands discarded): after a session
    ended (all devices disconnected), commands posted to the module while no car is connected
    are not delivered; when the car connects again it receives exactly ConnectResponse, then
    StatusResponse and an EMPTY first command (counter continues: 1), nothing else."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        await rig.run_sequence("id1", [A])
        rig.car.send_status("id1", ext.Status.DISCONNECT, 2, A)
        await rig.expect_status_responses("id1", [2])
        await rig.expect_reset(ResetReason.ALL_DEVICES_DISCONNECTED)
        await rig.queue_stale_commands((A, b"while-away-1"), (A, b"while-away-2"))
        await rig.ready_for_connect()
        rig.car.send_connect("id2", [A])
        await rig.expect_connect_response("id2")
        rig.car.send_status("id2", CONNECTING, 1, A)
        await rig.expect_status_responses("id2", [1])
        commands = await rig.expect_commands("id2", 1)
        assert (commands[0].messageCounter, commands[0].deviceCommand.commandData) == (1, b"")
        rig.answer("id2", commands)
        await rig.wait_state(CarState.RUNNING)
        await rig.expect_nothing()


async def test_command_queued_on_device_connect_is_the_first_command(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.4.6 / §9 BAF-1446 intent ("commands produced while nobody was connected must not be
    delivered late") and §8.8 item 120: a command the module produces while the device is
    being connected (``command_on_connect``) is not stale and must be the device's first
    command — every time, not depending on thread timing. Repeated over 20 sessions."""
    async with open_rig(
        mosquitto, tmp_path, monkeypatch, module_config={"command_on_connect": "hello"}
    ) as rig:
        for attempt in range(20):
            session_id = f"s{attempt}"
            await rig.ready_for_connect()
            commands = await rig.run_sequence(session_id, [A])
            assert commands[0].deviceCommand.commandData == b"hello", (
                f"attempt {attempt}: first command empty"
            )
            rig.car.send_status(session_id, ext.Status.DISCONNECT, 2, A)
            await rig.expect_status_responses(session_id, [2])
            await rig.expect_reset(ResetReason.ALL_DEVICES_DISCONNECTED)


# --------------------------------------------------------------------------------------
# §8.8 — recovery: new runs after a failed or ended session
# --------------------------------------------------------------------------------------


async def test_new_run_after_first_status_timeout_uses_new_session(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 117: no first status within T after Connect "id1" → reset; a new run with
    Connect "id2" + status (counter 0) + response gives the car ConnectResponse(id2),
    StatusResponse(id2, 0) and Command(id2, counter 0) — exact bytes."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id1", [A])
        await rig.expect_connect_response("id1")
        await rig.expect_reset(ResetReason.FIRST_STATUS)
        await rig.ready_for_connect()
        rig.car.send_connect("id2", [A])
        assert (await rig.expect("connectResponse")).SerializeToString() == bytes.fromhex("0a050a03696432")
        rig.car.send_status("id2", CONNECTING, 0, A)
        assert (await rig.expect("statusResponse")).SerializeToString() == bytes.fromhex("12050a03696432")
        command = await rig.expect("command")
        assert command.command.sessionId == "id2"
        assert command.command.messageCounter == 0
        rig.car.send_command_response("id2", 0)
        await rig.wait_state(CarState.RUNNING)


async def test_same_session_id_repeated_after_missing_first_response(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 118 (§4.11 counter never reset): after a missing first command response the
    car repeats the sequence with the same session id → it completes (ConnectResponse OK, not
    ALREADY_LOGGED); the new first command continues the counter (1)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A)
        await rig.expect_status_responses("id", [1])
        await rig.expect_commands("id", 1)
        await rig.expect_reset(ResetReason.FIRST_COMMAND_RESPONSE)
        await rig.ready_for_connect()
        commands = await rig.run_sequence("id", [A])
        assert commands[0].messageCounter == 1
        assert rig.session.session_id == "id"


async def test_server_retries_after_missing_connect(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 132 (§4.3: retry forever): no Connect for longer than T (a reset happens),
    then a full sequence and a RUNNING status (counter 1) → the RUNNING status is answered and
    reaches the module."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        await rig.expect_reset(ResetReason.NO_CONNECT)
        await rig.ready_for_connect()
        await rig.run_sequence("id", [A], first_counter=0)
        rig.car.send_status("id", RUNNING, 1, A, b"running")
        await rig.expect_status_responses("id", [1])
        await rig.server.wait_counter(CAR, "statuses", 2)


async def test_new_session_after_missing_first_status(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 133: a Connect but no first status for more than T → reset; a new sequence
    with another session id plus a RUNNING status → that status reaches the module."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id1", [A])
        await rig.expect_connect_response("id1")
        await rig.expect_reset(ResetReason.FIRST_STATUS)
        await rig.ready_for_connect()
        await rig.run_sequence("id2", [A], first_counter=0)
        rig.car.send_status("id2", RUNNING, 1, A)
        await rig.expect_status_responses("id2", [1])
        await rig.server.wait_counter(CAR, "statuses", 2)
        assert rig.session.session_id == "id2"


async def test_new_session_after_missing_first_command_response(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 134: no first command response for more than T → reset; a new sequence
    (new id; its first command has counter 1) and a RUNNING status → the status reaches the
    module (the first run's CONNECTING status was forwarded too: 3 in total)."""
    async with open_rig(mosquitto, tmp_path, monkeypatch) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id1", [A])
        await rig.expect_connect_response("id1")
        rig.car.send_status("id1", CONNECTING, 0, A)
        await rig.expect_status_responses("id1", [0])
        await rig.expect_commands("id1", 1)
        await rig.expect_reset(ResetReason.FIRST_COMMAND_RESPONSE)
        await rig.ready_for_connect()
        commands = await rig.run_sequence("id2", [A], first_counter=0)
        assert commands[0].messageCounter == 1
        rig.car.send_status("id2", RUNNING, 1, A)
        await rig.expect_status_responses("id2", [1])
        await rig.server.wait_counter(CAR, "statuses", 3)


async def test_same_session_id_accepted_after_session_timeout(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 136 (§4.12): after a finished sequence and silence for longer than S the
    session is reset; the same session id connecting again starts a new sequence that is
    accepted (ConnectResponse OK), and both first statuses reach the module."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, session_timeout_s=1.5) as rig:
        await rig.ready_for_connect()
        await rig.run_sequence("id", [A])
        deadline = rig.session.core.session_deadline
        assert deadline is not None
        await rig.expect_reset(ResetReason.SESSION_TIMEOUT, timeout_s=1.5 + 10)
        assert time.monotonic() >= deadline  # after S of silence, not before
        await rig.ready_for_connect()
        await rig.run_sequence("id", [A])
        assert rig.counters()["statuses"] == 2


async def test_connect_arriving_during_pause_is_kept_for_next_phase_a(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """design.md "Decisions on reference quirks" (stay subscribed across a reset): a Connect
    that arrives during the pause D after a clean-up is kept and answered by the next phase A
    (the reference would lose it). The reset is triggered by a Connect with a new session id
    in normal communication (§4.8.1), which itself is dropped."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, reconnect_delay_s=1.0) as rig:
        await rig.ready_for_connect()
        await rig.run_sequence("id1", [A])
        rig.car.send_connect("id2", [A])
        await rig.expect_reset(ResetReason.NEW_SESSION)
        # clean-up is over once the registry is emptied (the discard follows synchronously)
        await rig.server.wait_until(lambda: rig.session.state == CarState.ERROR and not rig.registered())
        rig.car.send_connect("id3", [A])
        await rig.expect_connect_response("id3")
        assert rig.session.session_id == "id3"


async def test_first_status_payload_reaches_module(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.8 item 128: Connect, a CONNECTING status and CommandResponse OK (0) → the status
    reaches the module with its payload. The payload is observed through ``echo_every=1``:
    the module turns the forwarded status bytes into a command for the device."""
    async with open_rig(mosquitto, tmp_path, monkeypatch, module_config={"echo_every": "1"}) as rig:
        await rig.ready_for_connect()
        rig.car.send_connect("id", [A])
        await rig.expect_connect_response("id")
        rig.car.send_status("id", CONNECTING, 1, A, b'{"speed": 3}')
        await rig.expect_status_responses("id", [1])
        assert await collect_echoes(rig, "id", 1) == [b'{"speed": 3}']
        assert rig.counters()["statuses"] == 1
        await rig.wait_state(CarState.RUNNING)
