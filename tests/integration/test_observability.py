"""The HTTP endpoint and the OpenTelemetry metrics after a scripted session (issue 5 items 1–2)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from external_server.device import Device
from external_server.session.state import CarState
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, ServerUnderTest, start_server
from mosquitto_broker import MosquittoBroker
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

pytestmark = pytest.mark.broker

DEVICE = Device(1000, 0, "test", "T")


async def _scripted_session(server: ServerUnderTest, car: CarClient, statuses: int) -> None:
    car.send_connect("id", [DEVICE])
    await car.expect("connectResponse")
    car.send_status("id", ext.Status.CONNECTING, 1, DEVICE, b"{}")
    await car.expect("statusResponse")
    await car.expect("command")
    car.send_command_response("id", 0)
    await server.wait_state("car_a", CarState.RUNNING)
    for counter in range(2, 2 + statuses):
        car.send_status("id", ext.Status.RUNNING, counter, DEVICE, b"{}")
        await car.expect("statusResponse")
    car.send(b"\xff\xff garbage")


def _points(data: MetricsData) -> dict[str, list[tuple[dict[str, object], object]]]:
    found: dict[str, list[tuple[dict[str, object], object]]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # type: ignore[union-attr]
                    found.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
    return found


async def test_metrics_count_a_scripted_session(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """Messages in/out by type, the latency histogram, module call durations, connected cars/devices."""
    reader = InMemoryMetricReader()
    server = await start_server(
        tmp_path, mosquitto.port, meter_provider=MeterProvider(metric_readers=[reader])
    )
    try:
        async with CarClient(mosquitto.address, COMPANY, "car_a") as car:
            await _scripted_session(server, car, statuses=3)
            await server.wait_until(lambda: sum(server.session("car_a").stats.invalid_messages.values()) == 1)
            data = reader.get_metrics_data()
            assert data is not None
            points = _points(data)
            incoming = {attrs["type"]: value for attrs, value in points["fleet_messages_in"]}
            assert incoming == {"connect": 1, "status": 4, "command_response": 1}
            outgoing = {attrs["type"]: value for attrs, value in points["fleet_messages_out"]}
            assert outgoing == {"connect_response": 1, "status_response": 4, "command": 1}
            assert [value for _, value in points["fleet_invalid_messages"]] == [1]
            assert points["fleet_status_response_latency"][0][1] == 3, "one latency per normal StatusResponse"
            functions = {attrs["function"] for attrs, _ in points["fleet_module_call_duration"]}
            assert {"device_connected", "forward_status"} <= functions
            assert points["fleet_cars_connected"] == [({"company": COMPANY}, 1)]
            assert points["fleet_devices_connected"] == [({"company": COMPANY}, 1)]
            waiting = {attrs["function"]: value for attrs, value in points["fleet_module_command_errors"]}
            assert waiting == {"wait_for_command": 0, "pop_command": 0}
            assert [value for _, value in points["fleet_inbox_overflow_drops"]] == [0]
    finally:
        await server.stop()


async def test_http_endpoint_reports_health_readiness_status_and_metrics(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """/healthz, /readyz (broker connected), /status (per-car session), /metrics (Prometheus text)."""
    server = await start_server(tmp_path, mosquitto.port, cars=("car_a", "car_b"))
    try:
        assert server.server.http is not None and server.server.http.port
        base = f"http://127.0.0.1:{server.server.http.port}"
        async with CarClient(mosquitto.address, COMPANY, "car_a") as car, aiohttp.ClientSession() as http:
            await _scripted_session(server, car, statuses=2)
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
                assert (await response.json())["ready"] is True
            async with http.get(f"{base}/status") as response:
                document = await response.json()
            car_a = document["cars"]["car_a"]
            assert car_a["state"] == "RUNNING"
            assert car_a["session_id"] == "id"
            assert car_a["devices"] == [{"module": 1000, "type": 0, "role": "test", "name": "T"}]
            assert car_a["messages_out"]["status_response"] == 3
            assert document["cars"]["car_b"]["state"] in {"UNINITIALIZED", "CONNECTED", "ERROR"}
            assert document["broker"]["connected"] is True
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
            status_lines = [
                line
                for line in text.splitlines()
                if line.startswith("fleet_messages_in_total{")
                and 'car="car_a"' in line
                and 'type="status"' in line
            ]
            assert len(status_lines) == 1, text
            assert status_lines[0].endswith(" 3.0")
            assert "fleet_status_response_latency_milliseconds_bucket" in text
            mosquitto.stop()
            await server.wait_until(lambda: not server.server.readiness()[0])
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503
    finally:
        await server.stop()
