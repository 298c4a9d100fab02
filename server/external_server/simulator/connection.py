"""One MQTT connection shared by several simulated cars, routing by exact topic.

A real gateway has its own connection per car; big simulated fleets may share
one to keep the simulator's own overhead out of the measurement. Everything
goes through :class:`external_server.transport.MqttConnection`, whose
subscriptions are fixed when it starts, so routes are declared before
:meth:`SharedConnection.start`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import string
from collections.abc import Callable

from ..transport import BrokerAddress, MqttConnection, PublishError

PayloadHandler = Callable[[bytes], None]
StateListener = Callable[[bool], None]

_ID_ALPHABET = string.ascii_lowercase + string.digits
_MQTT_LOGGER = logging.getLogger("external_server.simulator.mqtt")


def _not_a_backlog_warning(record: logging.LogRecord) -> bool:
    """aiomqtt warns when over 10 publishes await their PUBACK; a load generator does that on purpose."""
    return not str(record.msg).startswith("There are %d pending publish calls")


_MQTT_LOGGER.getChild("client").addFilter(_not_a_backlog_warning)


def unique_client_id(prefix: str) -> str:
    """A client id that never collides with a real gateway's ``<company>/<car>`` id.

    Reusing the gateway's id would make the broker kick a real car (and the two
    would then take turns kicking each other), so the simulator never does.
    """
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
    return f"{prefix}-{suffix}"


class SharedConnection:
    """A routed MQTT connection: ``route(topic, handler)`` before ``start()``, then publish."""

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        client_id: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id or unique_client_id("fleetsim")
        self._tls_context = tls_context
        self._log = logger or logging.getLogger("external_server.simulator.connection")
        self._routes: dict[str, list[PayloadHandler]] = {}
        self._state_listeners: list[StateListener] = []
        self._mqtt: MqttConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.unrouted_messages = 0

    @property
    def started(self) -> bool:
        return self._mqtt is not None

    @property
    def connected(self) -> bool:
        return self._mqtt is not None and self._mqtt.connected

    @property
    def topics(self) -> list[str]:
        return list(self._routes)

    def route(self, topic: str, handler: PayloadHandler) -> None:
        """Deliver every payload received on ``topic`` to ``handler`` (called on the loop, must not block)."""
        if self.started and topic not in self._routes:
            raise RuntimeError(f"cannot subscribe to {topic!r}: connection {self.client_id} already started")
        self._routes.setdefault(topic, []).append(handler)

    def add_state_listener(self, listener: StateListener) -> None:
        """``listener(connected)`` is called on every change of the broker connection."""
        self._state_listeners.append(listener)

    async def start(self, connect_timeout_s: float | None = None) -> bool:
        """Start the supervised connection; optionally wait for it (False on timeout, it keeps retrying)."""
        if self._mqtt is None:
            self._mqtt = MqttConnection(
                self.broker,
                client_id=self.client_id,
                subscriptions=list(self._routes),
                on_message=self._dispatch,
                on_state=self._state_changed,
                tls_context=self._tls_context,
                logger=_MQTT_LOGGER,
            )
            self._task = asyncio.get_running_loop().create_task(
                self._mqtt.run(), name=f"mqtt:{self.client_id}"
            )
        if connect_timeout_s is None:
            return self.connected
        return await self._mqtt.wait_connected(connect_timeout_s)

    async def wait_connected(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109  (as MqttConnection)
        if self._mqtt is None:
            raise RuntimeError("connection not started")
        return await self._mqtt.wait_connected(timeout)

    async def stop(self) -> None:
        """Disconnect cleanly and end the connection task."""
        if self._mqtt is not None:
            await self._mqtt.stop(self._task)
        self._task = None

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """QoS 1 publish without waiting for the PUBACK; raises :class:`PublishError` when offline."""
        if self._mqtt is None:
            raise PublishError("connection not started")
        self._mqtt.publish_nowait(topic, payload)

    async def publish(self, topic: str, payload: bytes, timeout_s: float = 5.0) -> None:
        """QoS 1 publish that waits for the broker's PUBACK."""
        if self._mqtt is None:
            raise PublishError("connection not started")
        await self._mqtt.publish(topic, payload, timeout_s)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        handlers = self._routes.get(topic)
        if not handlers:
            self.unrouted_messages += 1
            return
        for handler in handlers:
            try:
                handler(payload)
            except Exception:
                # A faulty handler must not take the shared connection (and every other car) down.
                self._log.exception("Handler for topic %s failed.", topic)

    def _state_changed(self, connected: bool) -> None:
        for listener in self._state_listeners:
            listener(connected)
