"""The fleet simulator against a real mosquitto and a scripted fake server.

``FakeServer`` is a test double of the External Server written for these tests
(the real server is tested elsewhere): it answers Connect, statuses and the
first command round on the server topics, and can be told to misbehave.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from external_server.device import Device
from external_server.simulator import (
    CarClient,
    Fleet,
    FleetConfig,
    GatewayConfig,
    GatewayState,
    GatewayTimings,
    JsonStatusData,
    LatencySummary,
    SharedConnection,
    SimulatedGateway,
    create_car_clients,
    make_devices,
    new_session_id,
    running_gateway,
)
from external_server.simulator.cli import main as cli_main
from external_server.simulator.cli import parse_broker
from external_server.transport import BrokerAddress, CarTopics
from external_server.wire import ExternalProtocol_pb2 as ext
from external_server.wire import InternalProtocol_pb2 as internal
from mosquitto_broker import MosquittoBroker
from support.waiting import wait_until

COMPANY = "test_company"
FAST = GatewayTimings(
    connect_response_timeout_s=2.0,
    status_response_timeout_s=5.0,
    reconnect_delay_s=0.5,
    disconnect_wait_s=2.0,
    drain_timeout_s=2.0,
)
ROOT = Path(__file__).resolve().parents[2]


# ---- the fake server (test double) --------------------------------------------------


@dataclass
class FakeCar:
    """What the fake server knows about one car."""

    session_id: str = ""
    first_statuses_left: int = 0
    devices: list[internal.Device] = field(default_factory=list)
    command_counter: int = 0
    connects: list[ext.Connect] = field(default_factory=list)
    statuses: list[ext.Status] = field(default_factory=list)
    command_responses: list[ext.CommandResponse] = field(default_factory=list)


class FakeServer:
    """Scripted server side on ``<company>/<car>/module_gateway``; not the product's server."""

    def __init__(self, broker: BrokerAddress, cars: Sequence[str]) -> None:
        self.connection = SharedConnection(broker, client_id="fake-server")
        self.cars = {car: FakeCar() for car in cars}
        self.answer_connects = True
        self.answer_statuses = True
        self.response_delay_s = 0.0
        for car in cars:
            topics = CarTopics(COMPANY, car)
            self.connection.route(
                topics.module_gateway, lambda payload, car=car: self._on_message(car, payload)
            )

    async def start(self) -> None:
        await self.connection.start()
        assert await self.connection.wait_connected(10), "fake server could not connect to mosquitto"

    async def stop(self) -> None:
        await self.connection.stop()

    def send(self, car: str, message: ext.ExternalServer) -> None:
        self.connection.publish_nowait(CarTopics(COMPANY, car).external_server, message.SerializeToString())

    def send_command(
        self, car: str, data: bytes, *, counter: int | None = None, device_index: int = 0
    ) -> int:
        state = self.cars[car]
        if counter is None:
            counter = state.command_counter
            state.command_counter += 1
        device = state.devices[device_index]
        command = ext.Command(sessionId=state.session_id, messageCounter=counter)
        command.deviceCommand.device.CopyFrom(device)
        command.deviceCommand.commandData = data
        self.send(car, ext.ExternalServer(command=command))
        return counter

    def notify_disconnect(self, car: str) -> None:
        self.connection.publish_nowait(CarTopics(COMPANY, car).disconnect_notification, b"")

    def _on_message(self, car: str, payload: bytes) -> None:
        state = self.cars[car]
        message = ext.ExternalClient.FromString(payload)
        kind = message.WhichOneof("MessageType")
        if kind == "connect":
            state.connects.append(message.connect)
            if self.answer_connects:
                state.session_id = message.connect.sessionId
                state.devices = list(message.connect.devices)
                state.first_statuses_left = len(state.devices)
                response = ext.ConnectResponse(sessionId=state.session_id, type=ext.ConnectResponse.OK)
                self.send(car, ext.ExternalServer(connectResponse=response))
        elif kind == "status":
            state.statuses.append(message.status)
            if not self.answer_statuses:
                return
            answer = ext.StatusResponse(
                sessionId=state.session_id, messageCounter=message.status.messageCounter
            )
            if self.response_delay_s and not state.first_statuses_left:  # delay normal statuses only
                asyncio.get_running_loop().call_later(
                    self.response_delay_s, self.send, car, ext.ExternalServer(statusResponse=answer)
                )
            else:
                self.send(car, ext.ExternalServer(statusResponse=answer))
            if state.first_statuses_left:
                state.first_statuses_left -= 1
                if state.first_statuses_left == 0:
                    for index in range(len(state.devices)):
                        self.send_command(car, b"", device_index=index)
        elif kind == "commandResponse":
            state.command_responses.append(message.commandResponse)


@pytest.fixture
async def fake_server(mosquitto: MosquittoBroker) -> AsyncIterator[FakeServer]:
    server = FakeServer(mosquitto.address, ["car_a", "car_b", "car_c"])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def gateway_for(
    broker: BrokerAddress, car: str = "car_a", **options: Any
) -> AsyncIterator[SimulatedGateway]:
    """``running_gateway`` with test defaults: one device, 20 statuses/s, short timers."""
    settings: dict[str, Any] = {"devices": make_devices(1), "rate_hz": 20.0, "timings": FAST}
    settings.update(options)
    async with running_gateway(broker, GatewayConfig(company=COMPANY, car=car, **settings)) as gateway:
        yield gateway


# ---- gateway behaviour ---------------------------------------------------------------


@pytest.mark.broker
async def test_connect_sequence_completes_and_latency_is_recorded(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    async with gateway_for(mosquitto.address, devices=make_devices(2), max_statuses=10) as gateway:
        assert await gateway.wait_connected(10)
        stats = await asyncio.wait_for(gateway.start(), 10)
    car = fake_server.cars["car_a"]
    assert len(car.connects) == 1
    connect = car.connects[0]
    assert len(connect.sessionId) == 8 and connect.sessionId.isalnum()
    assert [d.deviceRole for d in connect.devices] == ["device_0", "device_1"]
    assert connect.company == COMPANY and connect.vehicleName == "car_a"
    first = car.statuses[:2]
    assert [s.deviceState for s in first] == [ext.Status.CONNECTING, ext.Status.CONNECTING]
    assert [s.messageCounter for s in first] == [1, 2]
    assert [s.deviceStatus.device.deviceRole for s in first] == ["device_0", "device_1"]
    normal = car.statuses[2:12]
    assert [s.messageCounter for s in normal] == list(range(3, 13))
    assert {s.deviceState for s in normal} == {ext.Status.RUNNING}
    # End of the run: every device unplugged, so a real server ends the session at once.
    farewell = car.statuses[12:]
    assert [(s.deviceState, s.messageCounter) for s in farewell] == [
        (ext.Status.DISCONNECT, 13),
        (ext.Status.DISCONNECT, 14),
    ]
    assert [s.deviceStatus.device.deviceRole for s in farewell] == ["device_0", "device_1"]
    assert json.loads(normal[0].deviceStatus.statusData)["car"] == "car_a"
    assert [(r.messageCounter, r.type) for r in car.command_responses] == [(0, 0), (1, 0)]
    assert stats.sessions == 1 and stats.connect_attempts == 1
    assert stats.statuses_sent == 10 and stats.statuses_answered == 10
    assert stats.commands_received == 2
    summary = gateway.latency_summary()
    assert summary.count == 10 and summary.p50_ms is not None and 0 < summary.p50_ms < 1000
    assert gateway.state is GatewayState.STOPPED


@pytest.mark.broker
async def test_keep_sessions_sends_no_disconnect_at_the_end(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    async with gateway_for(mosquitto.address, max_statuses=3, disconnect_at_end=False) as gateway:
        stats = await asyncio.wait_for(gateway.start(), 10)
    assert stats.statuses_answered == 3
    assert gateway.final_state is GatewayState.CONNECTED
    assert ext.Status.DISCONNECT not in {s.deviceState for s in fake_server.cars["car_a"].statuses}


@pytest.mark.broker
async def test_command_in_normal_communication_is_answered(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    async with gateway_for(mosquitto.address) as gateway:
        assert await gateway.wait_connected(10)
        counter = fake_server.send_command("car_a", b"drive")
        assert await gateway.wait_until(lambda: any(c.data == b"drive" for c in gateway.commands), 5)
        await wait_until(lambda: len(fake_server.cars["car_a"].command_responses) == 2)
        response = fake_server.cars["car_a"].command_responses[-1]
        assert response.messageCounter == counter
        assert response.type == ext.CommandResponse.OK
        assert response.sessionId == gateway.session_id
        assert gateway.state is GatewayState.CONNECTED


@pytest.mark.broker
async def test_reconnects_at_once_after_a_disconnect_notification(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    timings = GatewayTimings(connect_response_timeout_s=2.0, reconnect_delay_s=30.0)
    async with gateway_for(mosquitto.address, timings=timings) as gateway:
        assert await gateway.wait_connected(10)
        first_session = gateway.session_id
        fake_server.notify_disconnect("car_a")
        # The 30 s reconnect delay applies only to failed connect sequences, not to a notification.
        assert await gateway.wait_connected(5, sessions=2)
        assert gateway.session_id != first_session
        assert gateway.stats.drops["disconnect notification"] == 1
        assert gateway.stats.notifications == 1


@pytest.mark.broker
async def test_failed_connect_sequence_is_retried_after_the_delay(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    fake_server.answer_connects = False
    timings = GatewayTimings(connect_response_timeout_s=0.3, reconnect_delay_s=0.5)
    async with gateway_for(mosquitto.address, timings=timings) as gateway:
        assert await gateway.wait_until(lambda: gateway.stats.connect_failures >= 1, 5)
        assert gateway.state is GatewayState.DISCONNECTED
        fake_server.answer_connects = True
        assert await gateway.wait_connected(5)
    assert gateway.stats.failures["timeout"] >= 1
    connects = fake_server.cars["car_a"].connects
    assert len({c.sessionId for c in connects}) == len(connects)  # a new session id per attempt


@pytest.mark.broker
async def test_out_of_order_command_counter_drops_the_session(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    async with gateway_for(mosquitto.address) as gateway:
        assert await gateway.wait_connected(10)
        # The first command had counter 0, which disables the check for the next one (gateway quirk),
        # so one in-order command first sets a non-zero reference.
        fake_server.send_command("car_a", b"in order")
        assert await gateway.wait_until(lambda: gateway.stats.commands_received == 2, 5)
        fake_server.send_command("car_a", b"x", counter=fake_server.cars["car_a"].command_counter + 5)
        assert await gateway.wait_connected(5, sessions=2)
        assert gateway.stats.drops["command counter out of order"] == 1


@pytest.mark.broker
async def test_connect_response_in_normal_communication_drops_the_session(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    async with gateway_for(mosquitto.address) as gateway:
        assert await gateway.wait_connected(10)
        already = ext.ConnectResponse(sessionId=gateway.session_id, type=ext.ConnectResponse.ALREADY_LOGGED)
        fake_server.send("car_a", ext.ExternalServer(connectResponse=already))
        assert await gateway.wait_connected(5, sessions=2)
        assert gateway.stats.drops["connectResponse in normal communication"] == 1


@pytest.mark.broker
async def test_unanswered_status_times_out_and_reconnects(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    timings = GatewayTimings(
        connect_response_timeout_s=1.0, status_response_timeout_s=0.5, reconnect_delay_s=0.2
    )
    async with gateway_for(mosquitto.address, timings=timings, rate_hz=10.0) as gateway:
        assert await gateway.wait_connected(10)
        fake_server.answer_statuses = False
        assert await gateway.wait_until(lambda: gateway.stats.status_timeouts >= 1, 5)
        fake_server.answer_statuses = True
        assert await gateway.wait_connected(5, sessions=2)
    assert gateway.stats.drops["status response timeout"] >= 1


@pytest.mark.broker
async def test_closed_loop_waits_for_each_response(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    fake_server.response_delay_s = 0.05
    async with gateway_for(mosquitto.address, closed_loop=True, duration_s=1.5) as gateway:
        stats = await asyncio.wait_for(gateway.start(), 10)
    assert stats.sessions == 1
    # At most one status in flight: about one status per 50 ms after the connect sequence.
    assert 5 <= stats.statuses_sent <= 31
    assert stats.statuses_answered == stats.statuses_sent
    assert min(stats.latencies_s) >= 0.045


@pytest.mark.broker
async def test_open_loop_keeps_its_rate_regardless_of_responses(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    fake_server.response_delay_s = 0.2
    async with gateway_for(mosquitto.address, rate_hz=50.0, duration_s=1.5) as gateway:
        assert await gateway.wait_connected(10)
        assert await gateway.wait_until(lambda: gateway.unanswered_statuses > 3, 5)  # many in flight at once
        stats = await asyncio.wait_for(gateway.start(), 10)
    connect_s = stats.connect_durations_s[0]
    expected = 50.0 * (1.5 - connect_s)
    assert expected * 0.7 <= stats.statuses_sent <= expected * 1.2 + 2
    assert stats.statuses_answered == stats.statuses_sent  # the drain waited for the delayed answers


@pytest.mark.broker
async def test_count_bound_stops_after_exactly_n_statuses(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    async with gateway_for(mosquitto.address, closed_loop=True, max_statuses=25) as gateway:
        stats = await asyncio.wait_for(gateway.start(), 10)
    assert stats.statuses_sent == stats.statuses_answered == 25
    assert len([s for s in fake_server.cars["car_a"].statuses if s.deviceState == ext.Status.RUNNING]) == 25


@pytest.mark.broker
async def test_device_disconnect_and_reconnect(mosquitto: MosquittoBroker, fake_server: FakeServer) -> None:
    devices = make_devices(2)
    async with gateway_for(mosquitto.address, devices=devices, rate_hz=20.0) as gateway:
        assert await gateway.wait_connected(10)
        assert await gateway.disconnect_device(devices[1])
        statuses = fake_server.cars["car_a"].statuses
        disconnect = [s for s in statuses if s.deviceState == ext.Status.DISCONNECT]
        assert [s.deviceStatus.device.deviceRole for s in disconnect] == ["device_1"]
        assert gateway.devices == (devices[0],)
        gateway.connect_device(devices[1])

        def reannounced() -> bool:
            later = statuses[statuses.index(disconnect[0]) + 1 :]
            return any(
                s.deviceState == ext.Status.CONNECTING and s.deviceStatus.device.deviceRole == "device_1"
                for s in later
            )

        await wait_until(reannounced)
        assert gateway.state is GatewayState.CONNECTED and gateway.stats.sessions == 1


@pytest.mark.broker
async def test_broker_restart_drops_and_reconnects(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    async with gateway_for(mosquitto.address) as gateway:
        assert await gateway.wait_connected(10)
        mosquitto.stop()
        assert await gateway.wait_until(lambda: gateway.state is not GatewayState.CONNECTED, 5)
        mosquitto.start()
        assert await gateway.wait_connected(30, sessions=2)
        # Whichever the gateway notices first: the lost link, or a publish refused on it.
        drops = dict(gateway.stats.drops)
        assert drops.get("connection lost", 0) + drops.get("publish failed", 0) == 1, drops


# ---- car client ----------------------------------------------------------------------


@pytest.mark.broker
async def test_car_client_scripts_the_car_side(mosquitto: MosquittoBroker, fake_server: FakeServer) -> None:
    device = Device(1000, 0, "device_0", "device_0")
    async with CarClient(mosquitto.address, COMPANY, "car_a") as client:
        client.send_connect("sess0001", [device])
        reply = await client.expect("connectResponse")
        assert reply.connectResponse.sessionId == "sess0001"
        client.send_status("sess0001", ext.Status.CONNECTING, 1, device, b"{}", error_message=b"oops")
        assert (await client.expect("statusResponse")).statusResponse.messageCounter == 1
        command = await client.expect("command")
        client.send_command_response("sess0001", command.command.messageCounter)
        await wait_until(lambda: len(fake_server.cars["car_a"].command_responses) == 1)
        assert fake_server.cars["car_a"].statuses[0].errorMessage == b"oops"

        client.send(ext.ExternalClient())  # an empty message is legal on the wire
        fake_server.send("car_a", ext.ExternalServer())
        assert (await client.receive(2)) == ext.ExternalServer()
        fake_server.connection.publish_nowait(CarTopics(COMPANY, "car_a").external_server, b"\xff\xff")
        fake_server.notify_disconnect("car_a")
        assert await client.receive_disconnect_notification(2)
        assert client.malformed == [b"\xff\xff"]
        assert await client.receive(0.2) is None
        assert not await client.receive_disconnect_notification(0.2)


@pytest.mark.broker
async def test_car_clients_share_a_connection_and_route_by_topic(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    device = Device(1000, 0, "device_0", "")
    async with create_car_clients(mosquitto.address, COMPANY, ["car_a", "car_b", "car_c"]) as group:
        assert len(group.connections) == 1
        for index, client in enumerate(group):
            client.send_connect(f"session{index}", [device])
        for index, client in enumerate(group):
            reply = await client.expect("connectResponse")
            assert reply.connectResponse.sessionId == f"session{index}"
        assert all(client.pending() == 0 for client in group)
        fake_server.notify_disconnect("car_b")
        assert await group["car_b"].receive_disconnect_notification(2)
        assert not await group["car_a"].receive_disconnect_notification(0.2)


# ---- fleet ---------------------------------------------------------------------------


@pytest.mark.broker
async def test_fleet_on_shared_connections_summarises(
    mosquitto: MosquittoBroker, fake_server: FakeServer
) -> None:
    config = FleetConfig(
        broker=mosquitto.address,
        company=COMPANY,
        cars=("car_a", "car_b", "car_c"),
        devices_per_car=2,
        rate_hz=20.0,
        duration_s=2.0,
        cars_per_connection=2,
        stagger_s=0.3,
        timings=FAST,
    )
    fleet = Fleet(config)
    assert len(fleet.connections) == 2
    summary = await asyncio.wait_for(fleet.run(), 15)
    assert summary.all_cars_connected
    assert summary.totals["sessions"] == 3
    assert summary.totals["commands_received"] == 6
    assert summary.totals["statuses_answered"] == summary.totals["statuses_sent"] > 30
    assert summary.latency.count == summary.totals["statuses_answered"]
    assert summary.latency.p999_ms is not None and summary.latency.max_ms is not None
    assert summary.cpu_s > 0
    data = json.loads(json.dumps(summary.to_dict()))
    assert [car["car"] for car in data["per_car"]] == ["car_a", "car_b", "car_c"]
    assert data["latency"]["p99.9_ms"] == summary.latency.p999_ms
    table = summary.format_table()
    assert "ALL" in table and "car_b" in table and "% of one core" in table
    for car in ("car_a", "car_b", "car_c"):
        roles = {d.deviceRole for d in fake_server.cars[car].connects[0].devices}
        assert roles == {"device_0", "device_1"}


# ---- command line --------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "external_server.simulator", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "server"), env.get("PYTHONPATH")]))
    return env


async def _finish(process: asyncio.subprocess.Process, timeout_s: float) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()  # our own child, by PID
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.broker
async def test_cli_bounded_run_writes_a_summary(
    mosquitto: MosquittoBroker, fake_server: FakeServer, tmp_path: Path
) -> None:
    summary_path = tmp_path / "summary.json"
    process = await asyncio.create_subprocess_exec(
        *_cli(
            "--broker",
            f"{mosquitto.host}:{mosquitto.port}",
            "--company",
            COMPANY,
            "--cars",
            "car_a,car_b",
            "--devices",
            "2",
            "--rate",
            "10",
            "--duration",
            "2",
            "--json",
            str(summary_path),
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    code, out, err = await _finish(process, 30)
    assert code == 0, err
    assert "ALL" in out and "p99.9 ms" in out
    data = json.loads(summary_path.read_text())
    assert data["cars"] == 2 and data["cars_ever_connected"] == 2
    assert data["totals"]["statuses_answered"] > 0


@pytest.mark.broker
async def test_cli_live_mode_and_ctrl_c(mosquitto: MosquittoBroker, fake_server: FakeServer) -> None:
    process = await asyncio.create_subprocess_exec(
        *_cli(
            "--broker",
            f"{mosquitto.host}:{mosquitto.port}",
            "--company",
            COMPANY,
            "--cars",
            "car_c",
            "--live",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert process.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not any("connected session" in line and "answered" in line for line in seen):
                line = await process.stdout.readline()
                if not line:
                    break
                seen.append(line.decode())
    finally:
        process.send_signal(signal.SIGINT)
    code, out, err = await _finish(process, 20)
    assert code == 0, err
    assert "ALL" in out
    assert fake_server.cars["car_c"].connects


@pytest.mark.broker
async def test_cli_fails_a_bounded_run_without_a_server(mosquitto: MosquittoBroker) -> None:
    process = await asyncio.create_subprocess_exec(
        *_cli(
            "--broker", f"{mosquitto.host}:{mosquitto.port}", "--duration", "1", "--connect-timeout", "0.2"
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    code, out, err = await _finish(process, 20)
    assert code == 1
    assert "never completed a connect sequence" in err
    assert "ALL" in out


# ---- pure pieces (no broker) ---------------------------------------------------------


def test_latency_summary_uses_nearest_rank_percentiles() -> None:
    summary = LatencySummary.from_samples([i / 1000.0 for i in range(1000, 0, -1)])
    assert summary.count == 1000
    assert (summary.p50_ms, summary.p90_ms, summary.p99_ms, summary.p999_ms) == pytest.approx(
        (500, 900, 990, 999)
    )
    assert summary.max_ms == pytest.approx(1000) and summary.mean_ms == pytest.approx(500.5)
    empty = LatencySummary.from_samples([])
    assert empty.count == 0 and empty.p50_ms is None


def test_json_status_data_is_padded_to_the_requested_size() -> None:
    device = Device(1000, 0, "device_0", "device_0")
    plain = JsonStatusData("car_a")(device, 7)
    assert json.loads(plain) == {"car": "car_a", "device": "device_0", "seq": 7}
    padded = JsonStatusData("car_a", size=300)(device, 7)
    assert len(padded) == 300 and json.loads(padded)["seq"] == 7
    assert JsonStatusData("car_a", size=5)(device, 7) == plain


def test_session_ids_look_like_the_gateways() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 8 and i.isascii() and i.isalnum() for i in ids)


def test_gateway_config_is_validated() -> None:
    device = Device(1000, 0, "r")
    with pytest.raises(ValueError, match="at least one device"):
        GatewayConfig(company="c", car="v", devices=())
    with pytest.raises(ValueError, match="must differ"):
        GatewayConfig(company="c", car="v", devices=(device, Device(1000, 0, "r", "other name")))
    with pytest.raises(ValueError, match="rate_hz"):
        GatewayConfig(company="c", car="v", devices=(device,), rate_hz=0)
    GatewayConfig(company="c", car="v", devices=(device,), rate_hz=0, closed_loop=True)
    with pytest.raises(ValueError, match="invalid company or car name"):
        FleetConfig(broker=BrokerAddress("127.0.0.1", 1883), company="c", cars=("a/b",))


def test_broker_addresses_parse() -> None:
    assert parse_broker("127.0.0.1:1884") == BrokerAddress("127.0.0.1", 1884)
    assert parse_broker("[::1]:1885") == BrokerAddress("::1", 1885)
    assert parse_broker("localhost") == BrokerAddress("localhost", 1883)
    for bad in ("host:port", ":1883", "h:0", "h:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_broker(bad)


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--car-count", "0"], ["--tls"], ["--cars", "a", "--car-count", "2"], ["--rate", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2
    assert "--tls needs --ca, --cert and --key" in capsys.readouterr().err
