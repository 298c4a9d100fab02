"""The aiomqtt internals the transport relies on, pinned so an upgrade fails here, loudly.

``transport/mqtt.py`` (the only aiomqtt code) uses two things aiomqtt does not promise:
the wrapped paho client as ``Client._client`` (QoS 1 publishes go straight to it, no task
per message) and the ``queue_type`` argument, whose ``put_nowait`` it replaces to dispatch
each message from the receive callback. docs/design.md §3 ("MQTT client library") says
what to do when these tests fail after an upgrade.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as paho
from external_server.transport import BrokerAddress, MqttConnection
from mosquitto_broker import MosquittoBroker

ADAPTER = "server/external_server/transport/mqtt.py"


def test_aiomqtt_major_version_is_the_one_the_adapter_was_written_for() -> None:
    major = int(version("aiomqtt").split(".")[0])
    assert major == 2, f"aiomqtt {version('aiomqtt')}: re-check {ADAPTER} against docs/design.md §3"


async def test_client_wraps_a_paho_client_as_underscore_client() -> None:
    client = aiomqtt.Client("127.0.0.1", 1, identifier="contract")
    wrapped = getattr(client, "_client", None)
    assert isinstance(wrapped, paho.Client), f"aiomqtt.Client._client is gone: see {ADAPTER}"
    assert callable(wrapped.publish)


async def test_client_takes_queue_type_and_pending_calls_threshold() -> None:
    parameters = inspect.signature(aiomqtt.Client).parameters
    assert "queue_type" in parameters, f"aiomqtt.Client(queue_type=...) is gone: see {ADAPTER}"
    client = aiomqtt.Client("127.0.0.1", 1, identifier="contract")
    assert hasattr(client, "pending_calls_threshold")


async def test_messages_reach_the_dispatching_queue_and_paho_publish_reaches_the_broker(
    mosquitto: MosquittoBroker,
) -> None:
    """Both internals working together against a real broker: a paho-level publish comes back
    through the subscription to the handler the queue dispatches to."""
    received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    connection = MqttConnection(
        BrokerAddress(mosquitto.host, mosquitto.port),
        client_id="contract",
        subscriptions=["contract/topic"],
        on_message=lambda topic, payload: received.put_nowait((topic, payload)),
    )
    task = asyncio.create_task(connection.run(), name="contract-connection")
    try:
        assert await connection.wait_connected(10.0)
        connection.publish_nowait("contract/topic", b"through paho")
        assert await asyncio.wait_for(received.get(), 10.0) == ("contract/topic", b"through paho")
    finally:
        await connection.stop(task)
