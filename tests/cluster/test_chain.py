"""The chain: ExternalServer → operator → ConfigMap + StatefulSet → a real server runs that config
against a real mosquitto → a simulated car completes its session (issue 4, "the chain test").

No kubelet runs here, so the test plays the pod: it takes the config file from the ConfigMap the
operator rendered, the command line and the environment (Secret references resolved) from the
StatefulSet's container, and starts the server process with them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from external_server.device import Device
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from integration.mosquitto_broker import MosquittoBroker, running_mosquitto
from kube_envtest import Cluster, Operator, wait_for
from support.example_module import build_example

pytestmark = pytest.mark.cluster

TOKEN = "chain-token"
DEVICE = Device(1000, 0, "lamp", "front lamp")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_mosquitto(tmp_path) as running:
        yield running


def _resource(namespace: str, port: int, library: Path) -> dict[str, Any]:
    return {
        "apiVersion": "fleetprotocol.io/v1alpha1",
        "kind": "ExternalServer",
        "metadata": {"name": "chain", "namespace": namespace},
        "spec": {
            "company": "chain_co",
            "broker": {"host": "127.0.0.1", "port": port},
            "timeouts": {"responseSeconds": 2, "sessionSeconds": 10, "reconnectDelaySeconds": 0.2},
            "modules": [
                {
                    "id": 1000,
                    "library": str(library),
                    "config": {"echo_every": 1},
                    "configFromSecret": [
                        {"key": "api_key", "secretKeyRef": {"name": "chain-api", "key": "token"}}
                    ],
                }
            ],
            "cars": [{"name": "car_a"}],
        },
    }


def _pod_environment(cluster: Cluster, namespace: str, container: dict[str, Any]) -> dict[str, str]:
    """The container's env with secretKeyRef values read from the Secrets, as the kubelet would."""
    environment: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            environment[entry["name"]] = entry["value"]
            continue
        reference = entry["valueFrom"]["secretKeyRef"]
        secret = cluster.get("secret", reference["name"], namespace)
        assert secret is not None, f"Secret {reference['name']} missing"
        environment[entry["name"]] = base64.b64decode(secret["data"][reference["key"]]).decode()
    return environment


async def _car_session(broker: MosquittoBroker) -> bytes:
    async with CarClient(broker.address, "chain_co", "car_a") as car:
        for attempt in range(20):  # the server may still be connecting to the broker
            car.send_connect(f"s{attempt}", [DEVICE])
            response = await car.receive(1.0)
            if response is not None:
                break
        else:
            raise AssertionError("no ConnectResponse from the server")
        session = response.connectResponse.sessionId
        car.send_status(session, ext.Status.CONNECTING, 1, DEVICE, b'{"on":false}')
        assert (await car.expect("statusResponse")).statusResponse.messageCounter == 1
        first = await car.expect("command")
        car.send_command_response(session, first.command.messageCounter)
        car.send_status(session, ext.Status.RUNNING, 2, DEVICE, b'{"on":true}')
        # echo_every=1: the module answers every forwarded status with a command carrying its bytes;
        # the echo of the first status may come before or after the StatusResponse to the second.
        echoed: list[bytes] = []
        answered = False
        while not (answered and b'{"on":true}' in echoed):
            message = await car.receive(10.0)
            assert message is not None, f"stalled: answered={answered} echoed={echoed}"
            if message.HasField("statusResponse"):
                assert message.statusResponse.messageCounter == 2
                answered = True
            else:
                echoed.append(bytes(message.command.deviceCommand.commandData))
                car.send_command_response(session, message.command.messageCounter)
        return echoed[-1]


def test_rendered_config_runs_a_real_server_session(
    cluster: Cluster, operator: Operator, broker: MosquittoBroker, tmp_path: Path
) -> None:
    namespace = cluster.namespace("exs-chain")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "chain-api", "namespace": namespace},
            "data": {"token": base64.b64encode(TOKEN.encode()).decode()},
        }
    )
    cluster.apply(_resource(namespace, broker.port, build_example()))
    config_map = wait_for(
        "the rendered ConfigMap", lambda: cluster.get("configmap", "chain-shard-0-config", namespace)
    )
    statefulset = wait_for(
        "the shard StatefulSet", lambda: cluster.get("statefulset", "chain-shard-0", namespace)
    )
    text = config_map["data"]["config.json"]
    assert TOKEN not in text, "secret values never sit in the ConfigMap"
    config_path = tmp_path / "config.json"
    config_path.write_text(text)

    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    command = list(container["command"])
    assert command[:3] == ["external-server", "-c", "/etc/external-server/config.json"]
    command[2] = str(config_path)
    command = [sys.executable, "-m", "external_server", *command[1:]]
    command[command.index("--http-port") + 1] = "0"
    command += ["--http-host", "127.0.0.1"]
    environment = {**os.environ, **_pod_environment(cluster, namespace, container)}
    assert TOKEN in environment.values()

    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        echoed = asyncio.run(_car_session(broker))
        assert echoed == b'{"on":true}'
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert TOKEN not in output, "secret values are never logged"
    assert "Connect sequence finished" in output
    config = json.loads(text)
    assert config["external_communication"]["server_port"] == broker.port
