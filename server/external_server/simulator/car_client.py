"""A scriptable car endpoint: send anything the car side may send, receive in order.

Tests drive the server message by message with it (including malformed
payloads); :mod:`.gateway` is the automatic counterpart that follows §4.15.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Iterator, Sequence
from types import TracebackType

from google.protobuf.message import DecodeError

from ..transport import BrokerAddress, CarTopics
from ..wire import ExternalProtocol_pb2 as ext
from . import messages
from .connection import SharedConnection, unique_client_id
from .messages import DeviceLike

DEFAULT_TIMEOUT_S = 5.0
HISTORY_LIMIT = 10_000


class UnexpectedMessageError(Exception):
    """``expect`` got another message kind than the one asked for, or nothing."""


class CarClient:
    """One car's topics on a :class:`SharedConnection` (its own one when given a broker address).

    Received ``ExternalServer`` messages and disconnect notifications are kept in
    two FIFO queues; undecodable payloads go to :attr:`malformed` instead.
    """

    def __init__(
        self,
        connection: SharedConnection | BrokerAddress,
        company: str,
        car: str,
        *,
        tls_context: ssl.SSLContext | None = None,
        client_id: str | None = None,
    ) -> None:
        self.topics = CarTopics(company, car)
        self._owns_connection = isinstance(connection, BrokerAddress)
        if isinstance(connection, BrokerAddress):
            connection = SharedConnection(
                connection,
                client_id=client_id or unique_client_id(f"fleetsim-{company}-{car}"),
                tls_context=tls_context,
            )
        self.connection = connection
        self._messages: asyncio.Queue[ext.ExternalServer] = asyncio.Queue()
        self._notifications: asyncio.Queue[None] = asyncio.Queue()
        self.history: deque[ext.ExternalServer] = deque(maxlen=HISTORY_LIMIT)
        self.malformed: list[bytes] = []
        self.notification_count = 0
        self._log = logging.getLogger("external_server.simulator.car_client")
        connection.route(self.topics.external_server, self._on_server_payload)
        connection.route(self.topics.disconnect_notification, self._on_notification)

    @property
    def company(self) -> str:
        return self.topics.company

    @property
    def car(self) -> str:
        return self.topics.car

    async def start(self, connect_timeout_s: float = 10.0) -> None:
        """Start the connection if this client owns it and wait until it is up."""
        if self._owns_connection:
            await self.connection.start()
        if not await self.connection.wait_connected(connect_timeout_s):
            raise ConnectionError(
                f"no MQTT connection to {self.connection.broker} within {connect_timeout_s} s"
            )

    async def close(self) -> None:
        if self._owns_connection:
            await self.connection.stop()

    async def __aenter__(self) -> CarClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- sending -------------------------------------------------------------

    def send(self, message: ext.ExternalClient | bytes) -> None:
        """Publish one message (or raw bytes, e.g. malformed input) on ``module_gateway``, QoS 1."""
        payload = message if isinstance(message, bytes) else message.SerializeToString()
        self.connection.publish_nowait(self.topics.module_gateway, payload)

    async def send_acknowledged(
        self, message: ext.ExternalClient | bytes, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Like :meth:`send`, but wait until the broker has the message (PUBACK)."""
        payload = message if isinstance(message, bytes) else message.SerializeToString()
        await self.connection.publish(self.topics.module_gateway, payload, timeout_s)

    def send_connect(
        self,
        session_id: str,
        devices: Sequence[DeviceLike],
        *,
        company: str | None = None,
        vehicle_name: str | None = None,
    ) -> ext.ExternalClient:
        message = messages.connect(
            session_id,
            self.company if company is None else company,
            self.car if vehicle_name is None else vehicle_name,
            devices,
        )
        self.send(message)
        return message

    def send_status(  # noqa: PLR0917  (mirrors the Status fields in wire order)
        self,
        session_id: str,
        state: ext.Status.DeviceState,
        counter: int,
        device: DeviceLike,
        data: bytes = b"",
        error_message: bytes | None = None,
    ) -> ext.ExternalClient:
        message = messages.status(session_id, state, counter, device, data, error_message)
        self.send(message)
        return message

    def send_command_response(
        self, session_id: str, counter: int, type: ext.CommandResponse.Type = ext.CommandResponse.OK
    ) -> ext.ExternalClient:
        message = messages.command_response(session_id, counter, type)
        self.send(message)
        return message

    # ---- receiving -----------------------------------------------------------

    # A plain ``timeout`` argument is the scripting API the tests are written against.
    async def receive(self, timeout: float = DEFAULT_TIMEOUT_S) -> ext.ExternalServer | None:  # noqa: ASYNC109
        """The oldest message not yet taken, or None when none arrives within ``timeout``."""
        try:
            return await asyncio.wait_for(self._messages.get(), timeout)
        except TimeoutError:
            return None

    async def expect(self, kind: str, timeout: float = DEFAULT_TIMEOUT_S) -> ext.ExternalServer:  # noqa: ASYNC109
        """Receive the next message and insist it is ``kind`` (connectResponse, statusResponse, command)."""
        message = await self.receive(timeout)
        if message is None:
            raise UnexpectedMessageError(f"{self.car}: expected {kind}, got nothing within {timeout} s")
        got = messages.kind_of(message)
        if got != kind:
            raise UnexpectedMessageError(f"{self.car}: expected {kind}, got {got}: {message}")
        return message

    async def receive_disconnect_notification(self, timeout: float = DEFAULT_TIMEOUT_S) -> bool:  # noqa: ASYNC109
        """True when a disconnect notification arrived (or was already waiting) within ``timeout``."""
        try:
            await asyncio.wait_for(self._notifications.get(), timeout)
        except TimeoutError:
            return False
        return True

    def pending(self) -> int:
        """How many received messages have not been taken by :meth:`receive` yet."""
        return self._messages.qsize()

    def clear(self) -> list[ext.ExternalServer]:
        """Drop (and return) every message and notification not taken yet."""
        dropped: list[ext.ExternalServer] = []
        while not self._messages.empty():
            dropped.append(self._messages.get_nowait())
        while not self._notifications.empty():
            self._notifications.get_nowait()
        return dropped

    def _on_server_payload(self, payload: bytes) -> None:
        try:
            message = ext.ExternalServer.FromString(payload)
        except DecodeError:
            self._log.warning("%s: undecodable payload from the server (%d bytes).", self.car, len(payload))
            self.malformed.append(payload)
            return
        self.history.append(message)
        self._messages.put_nowait(message)

    def _on_notification(self, _payload: bytes) -> None:
        self.notification_count += 1
        self._notifications.put_nowait(None)


class CarClientGroup:
    """Several :class:`CarClient` on one or a few shared connections (for multi-car tests)."""

    def __init__(
        self,
        broker: BrokerAddress,
        company: str,
        cars: Sequence[str],
        *,
        cars_per_connection: int | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if not cars:
            raise ValueError("at least one car is needed")
        size = len(cars) if cars_per_connection is None else cars_per_connection
        if size < 1:
            raise ValueError("cars_per_connection must be >= 1")
        self.connections: list[SharedConnection] = []
        self.clients: dict[str, CarClient] = {}
        for start in range(0, len(cars), size):
            connection = SharedConnection(
                broker,
                client_id=unique_client_id(f"fleetsim-{company}-{start // size}"),
                tls_context=tls_context,
            )
            self.connections.append(connection)
            for car in cars[start : start + size]:
                self.clients[car] = CarClient(connection, company, car)

    def __getitem__(self, car: str) -> CarClient:
        return self.clients[car]

    def __iter__(self) -> Iterator[CarClient]:
        return iter(self.clients.values())

    def __len__(self) -> int:
        return len(self.clients)

    async def start(self, connect_timeout_s: float = 10.0) -> None:
        """Start every connection and wait until all are up (ConnectionError otherwise)."""
        for connection in self.connections:
            await connection.start()
        for connection in self.connections:
            if not await connection.wait_connected(connect_timeout_s):
                raise ConnectionError(
                    f"no MQTT connection to {connection.broker} within {connect_timeout_s} s"
                )

    async def close(self) -> None:
        for connection in self.connections:
            await connection.stop()

    async def __aenter__(self) -> CarClientGroup:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def create_car_clients(
    broker: BrokerAddress,
    company: str,
    cars: Sequence[str],
    *,
    cars_per_connection: int | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> CarClientGroup:
    """Clients for ``cars`` sharing connections (all on one unless ``cars_per_connection``); not started."""
    return CarClientGroup(
        broker, company, cars, cars_per_connection=cars_per_connection, tls_context=tls_context
    )
