"""The broker goes away and comes back (docs/protocol.md §3.1, §4.14 row 15), and the disconnect
notification of every clean-up (§3.3, §4.13, item 50).

The in-process server keeps running throughout: a lost connection resets the car's
session (clean-up, ``device_disconnected``), the loss is logged once however long
the broker stays down, and after the broker is back the car completes a new
connect sequence on the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from external_server.device import Device
from external_server.session.state import CarState
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, ServerUnderTest, start_server
from mosquitto_broker import MosquittoBroker
from process_helpers import connect_sequence, connect_with_retry, expect_status_response, next_of_session
from support.waiting import wait_until

pytestmark = pytest.mark.broker

DEVICE = Device(1000, 0, "test", "T")
OUTAGE_S = 3.0
"""How long the broker stays away (the scenario: no session loop, no warning flood meanwhile)."""
BARRIER_CAR = "zz_observer_sync"
"""A car no server serves: the notification observer's own marker goes to its topic."""


def _server_warnings(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """WARNING and above from the server (the simulated cars log under external_server.simulator)."""
    return [
        record
        for record in records
        if record.levelno >= logging.WARNING
        and record.name.startswith("external_server")
        and not record.name.startswith("external_server.simulator")
    ]


def _resets(server: ServerUnderTest, car: str) -> int:
    return sum(server.session(car).stats.resets.values())


async def test_broker_restart_resets_the_session_and_the_car_reconnects(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="external_server")
    server = await start_server(tmp_path, mosquitto.port)
    assert server.server.connection is not None
    try:
        async with CarClient(mosquitto.address, COMPANY, "car_a") as car:
            await connect_sequence(car, "before", [DEVICE])
            await server.wait_state("car_a", CarState.RUNNING)
            car.send_status("before", ext.Status.RUNNING, 2, DEVICE, b"{}")
            await expect_status_response(car, "before", 2)

            first_record = len(caplog.records)
            mosquitto.stop()
            await server.wait_until(lambda: server.session("car_a").stats.resets["broker_lost"] == 1, 5.0)
            await server.wait_counter("car_a", "disconnects", 1)  # clean-up: device_disconnected(timeout)
            assert len(server.session("car_a").registry) == 0
            await asyncio.sleep(OUTAGE_S)
            assert server.session("car_a").state != CarState.RUNNING
            assert _resets(server, "car_a") == 1  # no reset loop while the broker is down
            warnings = _server_warnings(caplog.records[first_record:])
            lost = [
                r
                for r in warnings
                if "Connection to MQTT broker" in r.getMessage() and "lost" in r.getMessage()
            ]
            assert len(lost) == 1, [record.getMessage() for record in warnings]
            assert len(warnings) <= 3, [record.getMessage() for record in warnings]  # no flood

            mosquitto.start()
            assert await server.server.connection.wait_connected(20.0)
            assert await car.connection.wait_connected(20.0)
            session_id, _ = await connect_with_retry(car, [DEVICE], prefix="after")
            await server.wait_state("car_a", CarState.RUNNING)
            assert server.session("car_a").session_id == session_id
            car.send_status(session_id, ext.Status.RUNNING, 2, DEVICE, b"{}")
            await next_of_session(car, session_id, "statusResponse")
            assert not server.task.done()  # the same server, never restarted
            assert server.server.connection.connect_count == 2
            assert server.session("car_a").stats.resets["broker_lost"] == 1
    finally:
        await server.stop()


async def test_server_started_without_broker_connects_when_it_appears(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 26 and §3.1: an unreachable broker is a WARNING "Could not connect" (once) and retries."""
    caplog.set_level(logging.INFO, logger="external_server")
    mosquitto.stop()
    starting = asyncio.create_task(start_server(tmp_path, mosquitto.port))
    await asyncio.sleep(OUTAGE_S)
    assert not starting.done()
    mosquitto.start()
    server = await starting
    try:
        could_not = [r for r in _server_warnings(caplog.records) if "Could not connect" in r.getMessage()]
        assert len(could_not) == 1
        async with CarClient(mosquitto.address, COMPANY, "car_a") as car:
            await connect_with_retry(car, [DEVICE])
            await server.wait_state("car_a", CarState.RUNNING)
    finally:
        await server.stop()


# ---- item 50: the disconnect notification ----------------------------------------------


@dataclass
class Notification:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class NotificationObserver:
    """Records every message on ``<company>/+/external_server_disconnect`` (subscribed with QoS 1)."""

    received: list[Notification] = field(default_factory=list)
    client: aiomqtt.Client | None = None

    def of(self, car: str) -> list[Notification]:
        return [n for n in self.received if n.topic == f"{COMPANY}/{car}/external_server_disconnect"]

    async def sync(self) -> None:
        """Wait until everything the broker had for us when this was called has arrived.

        A marker published by this client to a topic it watches comes back after every
        message the broker already queued for it (mosquitto keeps per-subscriber order), so
        no sleep has to guess when "nothing more" has come.
        """
        assert self.client is not None
        count = len(self.of(BARRIER_CAR))
        await self.client.publish(f"{COMPANY}/{BARRIER_CAR}/external_server_disconnect", b"sync", qos=1)
        await wait_until(lambda: len(self.of(BARRIER_CAR)) > count, 10.0, "the observer's own marker")


@contextlib.asynccontextmanager
async def observe_notifications(broker: MosquittoBroker) -> AsyncIterator[NotificationObserver]:
    observer = NotificationObserver()
    async with aiomqtt.Client(broker.host, broker.port, identifier="notification-observer") as client:
        observer.client = client
        await client.subscribe(f"{COMPANY}/+/external_server_disconnect", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b"?"
                observer.received.append(
                    Notification(message.topic.value, payload, message.qos, message.retain)
                )

        task = asyncio.create_task(collect())
        try:
            yield observer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_every_clean_up_publishes_one_disconnect_notification(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Item 50: all devices disconnected, a new session id, a session timeout, failed phase A runs
    and the stop each publish one empty QoS-1, non-retained message on the car's disconnect topic."""
    async with observe_notifications(mosquitto) as observer:
        server = await start_server(tmp_path, mosquitto.port, cars=("car_a", "car_b"), session_timeout_s=1.5)
        try:
            async with CarClient(mosquitto.address, COMPANY, "car_a") as car:
                # all devices disconnected
                session_id, _ = await connect_with_retry(car, [DEVICE], prefix="d")
                car.send_status(session_id, ext.Status.DISCONNECT, 2, DEVICE, b"{}")
                await next_of_session(car, session_id, "statusResponse")
                assert await car.receive_disconnect_notification(5.0)
                assert server.session("car_a").stats.resets["all_devices_disconnected"] == 1
                # a Connect with another session id in normal communication
                await connect_with_retry(car, [DEVICE], prefix="n")
                await server.wait_state("car_a", CarState.RUNNING)
                car.send_connect("another", [DEVICE])
                assert await car.receive_disconnect_notification(5.0)
                assert server.session("car_a").stats.resets["new_session"] == 1
                # silence for S in normal communication
                await connect_with_retry(car, [DEVICE], prefix="t")
                await server.wait_state("car_a", CarState.RUNNING)
                assert await car.receive_disconnect_notification(5.0)
                assert server.session("car_a").stats.resets["session_timeout"] == 1
                # RUNNING when the server stops
                await connect_with_retry(car, [DEVICE], prefix="s")
                await server.wait_state("car_a", CarState.RUNNING)
                car_b_resets = _resets(server, "car_b")  # car_b: at least one more failed phase A
                await server.wait_until(lambda: _resets(server, "car_b") > car_b_resets, 15.0)
        finally:
            await server.stop()
        resets = {car: _resets(server, car) for car in ("car_a", "car_b")}
        assert server.session("car_b").stats.resets["no_connect"] == resets["car_b"] >= 1
        await server.wait_until(lambda: len(observer.of("car_a")) >= resets["car_a"] + 1, 5.0)
        await server.wait_until(lambda: len(observer.of("car_b")) >= resets["car_b"], 5.0)
        await observer.sync()  # nothing more may follow: whatever was still on its way is here now
    assert len(observer.of("car_a")) == resets["car_a"] + 1  # every reset and the stop
    # car_b may have been in its pause D (after a clean-up and its notification) at the stop
    assert resets["car_b"] <= len(observer.of("car_b")) <= resets["car_b"] + 1
    server_sent = [n for n in observer.received if n not in observer.of(BARRIER_CAR)]
    assert len(server_sent) == len(observer.of("car_a")) + len(observer.of("car_b"))
    assert all(n.payload == b"" and n.qos == 1 and not n.retain for n in server_sent)


async def test_notification_comes_after_the_answer_to_the_last_disconnect(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Appendix A.1 rows 11–13: the StatusResponses to the DISCONNECT statuses, then the notification."""
    second = Device(1000, 0, "second", "S")
    server = await start_server(tmp_path, mosquitto.port)
    car = CarClient(mosquitto.address, COMPANY, "car_a")
    arrivals: list[str] = []
    car.connection.route(car.topics.external_server, lambda _payload: arrivals.append("server"))
    car.connection.route(car.topics.disconnect_notification, lambda _payload: arrivals.append("notification"))
    try:
        async with car:
            session_id, _ = await connect_with_retry(car, [DEVICE, second])
            await server.wait_state("car_a", CarState.RUNNING)
            arrivals.clear()
            car.send_status(session_id, ext.Status.DISCONNECT, 3, DEVICE, b"{}")
            car.send_status(session_id, ext.Status.DISCONNECT, 4, second, b"{}")
            assert await car.receive_disconnect_notification(5.0)
            assert arrivals == ["server", "server", "notification"]
            answers = [await next_of_session(car, session_id, "statusResponse") for _ in range(2)]
            assert [a.statusResponse.messageCounter for a in answers] == [3, 4]
    finally:
        await server.stop()
