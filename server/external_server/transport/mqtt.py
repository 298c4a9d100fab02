"""The one adapter around aiomqtt: a reconnecting MQTT 3.1.1 connection.

Everything else in the project talks MQTT through :class:`MqttConnection` so the
client library can be swapped (aiomqtt 3 is mid-rewrite). One connection is
shared by all cars of a process and messages are routed by topic; the car
sessions never see the client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as mqtt

KEEPALIVE_S = 15
_SUBSCRIBE_CHUNK = 500

MessageHandler = Callable[[str, bytes], None]
StateHandler = Callable[[bool], None]


def _dispatching_queue(handler: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A queue class for aiomqtt that hands each message to ``handler`` instead of storing it.

    aiomqtt would otherwise queue every message and wake a task per message; calling the
    router directly from the receive callback saves that hop on the hot path.
    """

    class DispatchingQueue(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            handler(item)

    return DispatchingQueue


class PublishError(Exception):
    """A message could not be handed to the broker (not connected, queue full, no PUBACK)."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class MqttConnection:
    """A supervised connection: connects, subscribes, routes messages, reconnects with backoff.

    ``on_message(topic, payload)`` and ``on_state(connected)`` are called on the
    event loop; they must not block.
    """

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        client_id: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        on_state: StateHandler | None = None,
        tls_context: ssl.SSLContext | None = None,
        keepalive_s: int = KEEPALIVE_S,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        max_inflight: int = 1000,
        logger: logging.Logger | None = None,
    ) -> None:
        self.broker = broker
        self._client_id = client_id
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_state = on_state
        self._tls_context = tls_context
        self._keepalive_s = keepalive_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._max_inflight = max_inflight
        self._log = logger or logging.getLogger("external_server.transport")
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self.connect_count = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the connection is up; False on timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Keep the connection up until :meth:`stop`; never raises for broker trouble."""
        backoff = self._backoff_initial_s
        failures = 0
        while not self._stopping:
            client = self._new_client()
            try:
                async with client:
                    await self._subscribe_all(client)
                    self._client = client
                    self._set_connected(True)
                    self.connect_count += 1
                    if failures:
                        self._log.info(
                            "Connected to MQTT broker %s after %d failed attempts.", self.broker, failures
                        )
                    else:
                        self._log.info("Connected to MQTT broker %s.", self.broker)
                    backoff, failures = self._backoff_initial_s, 0
                    # Messages are dispatched as they are decoded (see _dispatching_queue); iterating
                    # only waits for the connection to end, which raises MqttError.
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttError as exc:
                if self._stopping:
                    break
                was_connected = self.connected
                self._client = None
                self._set_connected(False)
                if was_connected:
                    self._log.warning(
                        "Connection to MQTT broker %s lost (%s); reconnecting.", self.broker, exc
                    )
                elif failures == 0:
                    self._log.warning(
                        "Could not connect to MQTT broker %s (%s); retrying with backoff up to %.0f s "
                        "(further failures are logged at DEBUG).",
                        self.broker,
                        exc,
                        self._backoff_max_s,
                    )
                else:
                    self._log.debug("Could not connect to MQTT broker %s: %s", self.broker, exc)
                failures += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), backoff)
                backoff = min(backoff * 2, self._backoff_max_s)
        self._client = None
        self._set_connected(False)

    async def stop(self, run_task: asyncio.Task[None] | None = None) -> None:
        """Disconnect cleanly (the broker sees DISCONNECT) and end :meth:`run`."""
        self._stopping = True
        self._stop_requested.set()
        if run_task is not None and not run_task.done():
            run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run_task

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """QoS 1 publish without waiting for PUBACK (the hot path of every response and command).

        The message is handed to paho at once, in call order; paho keeps QoS 1 delivery (and
        resends) itself. aiomqtt's ``publish`` would add a task and a PUBACK wait per message
        and scan all pending calls on each one (quadratic with thousands of cars), so this one
        call goes to the underlying paho client. Raises :class:`PublishError` when the message
        cannot be queued (not connected, queue full).
        """
        client = self._client
        if client is None or not self.connected:
            raise PublishError(f"not connected to MQTT broker {self.broker}")
        info = client._client.publish(topic, payload, qos=1)  # the paho client aiomqtt wraps
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"could not publish on {topic}: {mqtt.error_string(info.rc)}")

    async def publish(self, topic: str, payload: bytes, timeout_s: float) -> None:
        """QoS 1 publish that waits for the broker's PUBACK."""
        client = self._client
        if client is None or not self.connected:
            raise PublishError(f"not connected to MQTT broker {self.broker}")
        try:
            await client.publish(topic, payload, qos=1, timeout=timeout_s)
        except aiomqtt.MqttError as exc:
            raise PublishError(str(exc)) from exc

    def _new_client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            keepalive=self._keepalive_s,
            timeout=10.0,
            tls_context=self._tls_context,
            queue_type=_dispatching_queue(self._dispatch),
            max_inflight_messages=self._max_inflight,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            logger=self._log.getChild("client"),
        )
        # Many cars publish at once by design; aiomqtt would warn above 10 pending calls.
        client.pending_calls_threshold = max(1000, self._max_inflight * 2)
        return client

    def _dispatch(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        try:
            self._on_message(
                message.topic.value, payload if isinstance(payload, bytes) else bytes(str(payload), "utf-8")
            )
        except Exception:  # never let a handler bug tear down the shared connection
            self._log.exception("Handling a message on %s failed", message.topic.value)

    async def _subscribe_all(self, client: aiomqtt.Client) -> None:
        for start in range(0, len(self._subscriptions), _SUBSCRIBE_CHUNK):
            chunk = self._subscriptions[start : start + _SUBSCRIBE_CHUNK]
            await client.subscribe([(topic, 1) for topic in chunk])

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        if connected:
            self._connected.set()
        else:
            self._connected.clear()
        if self._on_state is not None:
            self._on_state(connected)
