"""Mutual TLS to the broker (docs/protocol.md §3.2, items 22, 47).

A mosquitto TLS listener that requires client certificates, with certificates made
by openssl for this test: the server process started with ``--tls --ca --cert --key``
serves a car through it; with a CA that did not sign the broker's certificate it
never connects, says so, and keeps running.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import TlsMaterial, find_openssl, make_tls_material
from external_server.device import Device
from external_server.simulator.car_client import CarClient
from external_server.transport.tls import client_tls_context
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, server_config_document
from mosquitto_broker import MosquittoBroker, running_mosquitto
from process_helpers import (
    HTTP_ARGS,
    ServerProcesses,
    connect_with_retry,
    next_of_session,
    run_server_to_exit,
    write_config,
)
from support.waiting import free_port

DEVICE = Device(1000, 0, "test", "T")
CONNECTED_LOG = "Connected to MQTT broker"


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    if find_openssl() is None:
        pytest.skip("openssl is not installed")
    return make_tls_material(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, tls: TlsMaterial) -> Iterator[MosquittoBroker]:
    """mosquitto with only a TLS listener on loopback that requires a client certificate."""
    options = (
        f"cafile {tls.ca.cert}",
        f"certfile {tls.broker.cert}",
        f"keyfile {tls.broker.key}",
        "require_certificate true",
    )
    with running_mosquitto(tmp_path, name="mosquitto-tls", listener_options=options) as broker:
        yield broker


@pytest.fixture
def processes() -> Iterator[ServerProcesses]:
    started = ServerProcesses()
    try:
        yield started
    finally:
        started.stop_all()


def _car_tls(tls: TlsMaterial) -> ssl.SSLContext:
    return client_tls_context(tls.ca.cert, tls.client.cert, tls.client.key)


def _server_config(tmp_path: Path, broker: MosquittoBroker | None) -> Path:
    port = broker.port if broker is not None else free_port()
    document = server_config_document(broker_port=port, cars={"car_a": {"1000": {}}})
    return write_config(tmp_path / "config.json", document)


@pytest.mark.broker
async def test_server_process_serves_a_car_through_tls(
    tls_broker: MosquittoBroker, tls: TlsMaterial, tmp_path: Path, processes: ServerProcesses
) -> None:
    """Item 22 end to end: ``--tls --ca --cert --key``; hostname 127.0.0.1 checked against the SAN."""
    config = _server_config(tmp_path, tls_broker)
    server = processes.start(
        tmp_path,
        "-c", str(config),
        "--tls", "--ca", str(tls.ca.cert), "--cert", str(tls.client.cert), "--key", str(tls.client.key),
        *HTTP_ARGS,
    )  # fmt: skip
    assert await server.wait_for_output_async(CONNECTED_LOG, 15.0), server.stderr()
    async with CarClient(tls_broker.address, COMPANY, "car_a", tls_context=_car_tls(tls)) as car:
        session_id, commands = await connect_with_retry(car, [DEVICE])
        assert [command.deviceCommand.device.deviceRole for command in commands] == [DEVICE.role]
        car.send_status(session_id, ext.Status.RUNNING, 2, DEVICE, b"{}")
        answer = await next_of_session(car, session_id, "statusResponse")
        assert answer.statusResponse.messageCounter == 2
        car.clear()
        server.send_signal(signal.SIGTERM)
        assert await car.receive_disconnect_notification(10.0)
    assert await server.wait_async(20.0) == 0
    assert "Traceback" not in server.stderr()


@pytest.mark.broker
async def test_wrong_ca_never_connects_but_keeps_running(
    tls_broker: MosquittoBroker, tls: TlsMaterial, tmp_path: Path, processes: ServerProcesses
) -> None:
    """The broker certificate does not verify against the given CA: a connection warning, no
    connection, no exit; SIGTERM still ends it with 0."""
    config = _server_config(tmp_path, tls_broker)
    server = processes.start(
        tmp_path,
        "-c", str(config),
        "--tls", "--ca", str(tls.wrong_ca.cert), "--cert", str(tls.client.cert), "--key", str(tls.client.key),
        *HTTP_ARGS,
    )  # fmt: skip
    assert await server.wait_for_output_async("Could not connect", 15.0), server.stderr()
    assert await server.wait_for_output_async(CONNECTED_LOG, 3.0) is False
    assert server.running
    output = server.stderr()
    assert "[WARNING]" in next(line for line in output.splitlines() if "Could not connect" in line)
    assert "certificate verify failed" in output or "CERTIFICATE_VERIFY_FAILED" in output
    server.send_signal(signal.SIGTERM)
    assert await server.wait_async(20.0) == 0
    assert "Traceback" not in server.stderr()


@pytest.mark.broker
async def test_broker_requires_a_client_certificate(tls_broker: MosquittoBroker, tls: TlsMaterial) -> None:
    """The fixture really is mutual TLS: a client without a certificate gets no connection."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca.cert))
    car = CarClient(tls_broker.address, COMPANY, "car_a", tls_context=context)
    try:
        await car.connection.start()
        assert await car.connection.wait_connected(2.0) is False
    finally:
        await car.close()


# ---- item 47: transport/tls.py ---------------------------------------------------------


def test_client_tls_context_verifies_the_broker(tls: TlsMaterial) -> None:
    """Existing files: a context that requires the server certificate and checks the host name."""
    context = client_tls_context(tls.ca.cert, tls.client.cert, tls.client.key)
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.protocol == ssl.PROTOCOL_TLS_CLIENT


@pytest.mark.parametrize("missing", ["ca", "cert", "key"])
def test_client_tls_context_missing_file(missing: str, tls: TlsMaterial, tmp_path: Path) -> None:
    files = {"ca": tls.ca.cert, "cert": tls.client.cert, "key": tls.client.key}
    files[missing] = tmp_path / f"missing-{missing}.pem"
    with pytest.raises(FileNotFoundError, match=f"missing-{missing}"):
        client_tls_context(files["ca"], files["cert"], files["key"])


def test_server_process_with_a_missing_tls_file(tls: TlsMaterial, tmp_path: Path) -> None:
    """§3.2: all three files must exist; a missing one is a startup error naming it (exit 1)."""
    config = _server_config(tmp_path, None)
    absent = tmp_path / "absent-ca.pem"
    result = run_server_to_exit(
        tmp_path,
        "-c", str(config),
        "--tls", "--ca", str(absent), "--cert", str(tls.client.cert), "--key", str(tls.client.key),
        *HTTP_ARGS,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(absent) in result.stderr and "not found" in result.stderr
