"""The session's view of the transport: publish to one car, notify it, know if the broker is up."""

from __future__ import annotations

from typing import Protocol

from ..transport import CarTopics, MqttConnection, PublishError


class LinkPublishError(Exception):
    """A message to the car could not even be queued; the session resets."""


class CarLink(Protocol):
    """What a car session needs from the transport (tests may plug in their own)."""

    @property
    def connected(self) -> bool: ...

    def publish(self, payload: bytes) -> None:
        """Send one ExternalServer payload; raise LinkPublishError when it cannot even be queued."""

    async def publish_disconnect_notification(self, timeout_s: float) -> bool:
        """Empty QoS-1 message on the disconnect topic; True once the broker acknowledged it."""


class MqttCarLink:
    """A car's topics on the process-wide MQTT connection."""

    def __init__(self, connection: MqttConnection, topics: CarTopics) -> None:
        self._connection = connection
        self._topics = topics

    @property
    def connected(self) -> bool:
        return self._connection.connected

    def publish(self, payload: bytes) -> None:
        try:
            self._connection.publish_nowait(self._topics.external_server, payload)
        except PublishError as exc:
            raise LinkPublishError(str(exc)) from exc

    async def publish_disconnect_notification(self, timeout_s: float) -> bool:
        try:
            await self._connection.publish(self._topics.disconnect_notification, b"", timeout_s)
        except PublishError:
            return False
        return True
