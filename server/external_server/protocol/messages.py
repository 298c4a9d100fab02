"""Building and parsing the MQTT payloads of the Fleet Protocol (docs/protocol.md §2).

One serialized message per payload, no framing. The server builds ``ExternalServer``
messages exactly as §2.4 prescribes and parses ``ExternalClient`` payloads; the fleet
simulator uses the mirror-image builders and parser of the car side.

Parsers never raise: anything that is not a valid message becomes :class:`InvalidMessage`
with a reason, so one garbage payload can never end a session by an exception. Payloads
larger than :data:`MAX_PAYLOAD_BYTES` (1 MiB) are rejected before decoding: real statuses
and commands are small (module JSON of a few hundred bytes), and an unbounded decode of
an attacker-sized payload would stall the event loop of every car in the process.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, cast

from google.protobuf.message import Message

from ..device import Device
from ..wire import ExternalProtocol_pb2 as ext
from ..wire import InternalProtocol_pb2 as internal

MAX_PAYLOAD_BYTES = 1024 * 1024
"""Largest payload the parsers decode; larger ones are :class:`InvalidMessage`."""


class DeviceState(enum.IntEnum):
    """``Status.DeviceState``; note ERROR = 2 precedes DISCONNECT = 3."""

    CONNECTING = 0
    RUNNING = 1
    ERROR = 2
    DISCONNECT = 3


class ConnectResponseType(enum.IntEnum):
    OK = 0
    ALREADY_LOGGED = 1


class StatusResponseType(enum.IntEnum):
    OK = 0


class CommandResponseType(enum.IntEnum):
    OK = 0
    DEVICE_NOT_CONNECTED = 1
    DEVICE_NOT_SUPPORTED = 2
    INVALID_COMMAND = 3


class MessageKind(enum.StrEnum):
    """Low-cardinality name of a parsed message, for logs and metric attributes."""

    CONNECT = "connect"
    STATUS = "status"
    COMMAND_RESPONSE = "command_response"
    CONNECT_RESPONSE = "connect_response"
    STATUS_RESPONSE = "status_response"
    COMMAND = "command"
    UNKNOWN = "unknown"
    INVALID = "invalid"


# --- parsed messages -------------------------------------------------------------------
# Enum-typed fields are plain ints: proto3 enums are open, so unknown values must survive.
# ``kind`` is a Literal tag, so ``if parsed.kind == MessageKind.STATUS`` narrows the union
# for mypy as well as ``match``/``isinstance`` do. ``message`` is the decoded protobuf for
# code that wants the raw fields; it is left out of comparisons and reprs.


@dataclass(frozen=True, slots=True)
class ConnectMessage:
    session_id: str
    company: str
    vehicle_name: str
    devices: tuple[Device, ...]
    """In message order (registration follows it, §4.4)."""
    message: ext.ExternalClient = field(repr=False, compare=False)
    kind: Literal[MessageKind.CONNECT] = field(default=MessageKind.CONNECT, init=False)


@dataclass(frozen=True, slots=True)
class StatusMessage:
    session_id: str
    state: int
    counter: int
    device: Device
    data: bytes
    error_message: bytes | None
    """None when the field is absent; may be ``b""`` when present but empty (not forwarded)."""
    message: ext.ExternalClient = field(repr=False, compare=False)
    kind: Literal[MessageKind.STATUS] = field(default=MessageKind.STATUS, init=False)


@dataclass(frozen=True, slots=True)
class CommandResponseMessage:
    session_id: str
    type: int
    counter: int
    message: ext.ExternalClient = field(repr=False, compare=False)
    kind: Literal[MessageKind.COMMAND_RESPONSE] = field(default=MessageKind.COMMAND_RESPONSE, init=False)


@dataclass(frozen=True, slots=True)
class ConnectResponseMessage:
    session_id: str
    type: int
    message: ext.ExternalServer = field(repr=False, compare=False)
    kind: Literal[MessageKind.CONNECT_RESPONSE] = field(default=MessageKind.CONNECT_RESPONSE, init=False)


@dataclass(frozen=True, slots=True)
class StatusResponseMessage:
    session_id: str
    type: int
    counter: int
    message: ext.ExternalServer = field(repr=False, compare=False)
    kind: Literal[MessageKind.STATUS_RESPONSE] = field(default=MessageKind.STATUS_RESPONSE, init=False)


@dataclass(frozen=True, slots=True)
class CommandMessage:
    session_id: str
    counter: int
    device: Device
    data: bytes
    message: ext.ExternalServer = field(repr=False, compare=False)
    kind: Literal[MessageKind.COMMAND] = field(default=MessageKind.COMMAND, init=False)


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A valid message with no member of the oneof set (e.g. an empty payload, §4.8.4)."""

    size: int
    kind: Literal[MessageKind.UNKNOWN] = field(default=MessageKind.UNKNOWN, init=False)


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """A payload that is not a message at all: logged and dropped (§2.1)."""

    reason: str
    size: int
    category: str = "malformed"
    """Low-cardinality label for counters: ``malformed``, ``oversized`` or ``not_bytes``."""
    kind: Literal[MessageKind.INVALID] = field(default=MessageKind.INVALID, init=False)


ParsedMessage = ConnectMessage | StatusMessage | CommandResponseMessage | UnknownMessage | InvalidMessage
"""What the server can receive from a car."""

ParsedServerMessage = (
    ConnectResponseMessage | StatusResponseMessage | CommandMessage | UnknownMessage | InvalidMessage
)
"""What the car (simulator) can receive from the server."""

Payload = bytes | bytearray | memoryview


# --- server side: builders ---------------------------------------------------------------


def connect_response(session_id: str, already_logged: bool = False) -> ext.ExternalServer:
    """OK after a Connect in phase A; ALREADY_LOGGED for a repeated Connect of the current session."""
    kind = ConnectResponseType.ALREADY_LOGGED if already_logged else ConnectResponseType.OK
    return ext.ExternalServer(
        connectResponse=ext.ConnectResponse(
            sessionId=session_id, type=cast("ext.ConnectResponse.Type", int(kind))
        )
    )


def status_response(session_id: str, counter: int) -> ext.ExternalServer:
    """Type OK (the only value), echoing the status' counter."""
    return ext.ExternalServer(
        statusResponse=ext.StatusResponse(
            sessionId=session_id,
            type=cast("ext.StatusResponse.Type", int(StatusResponseType.OK)),
            messageCounter=counter,
        )
    )


def command(session_id: str, counter: int, device: Device, data: bytes) -> ext.ExternalServer:
    """A command for ``device`` exactly as given (module's device or the stored copy)."""
    return ext.ExternalServer(
        command=ext.Command(
            sessionId=session_id,
            messageCounter=counter,
            deviceCommand=internal.DeviceCommand(device=device.to_proto(), commandData=bytes(data)),
        )
    )


def serialize(message: Message) -> bytes:
    """The MQTT payload of a message."""
    return message.SerializeToString()


# --- car side: builders (fleet simulator) ------------------------------------------------


DeviceLike = Device | internal.Device
"""Car-side builders take the project's Device or a raw protobuf Device (tests craft odd ones)."""


def _device_proto(device: DeviceLike) -> internal.Device:
    return device.to_proto() if isinstance(device, Device) else device


def connect(session_id: str, company: str, car: str, devices: Iterable[DeviceLike]) -> ext.ExternalClient:
    """A Connect listing ``devices`` in order (what the gateway sends first)."""
    return ext.ExternalClient(
        connect=ext.Connect(
            sessionId=session_id,
            company=company,
            vehicleName=car,
            devices=[_device_proto(device) for device in devices],
        )
    )


def status(  # noqa: PLR0917  (mirrors the Status fields in wire order)
    session_id: str,
    state: int,
    counter: int,
    device: DeviceLike,
    data: bytes = b"",
    error_message: bytes | None = None,
) -> ext.ExternalClient:
    """A status; ``error_message=None`` leaves the optional field absent, ``b""`` sets it empty."""
    message = ext.Status(
        sessionId=session_id,
        deviceState=cast("ext.Status.DeviceState", int(state)),
        messageCounter=counter,
        deviceStatus=internal.DeviceStatus(device=_device_proto(device), statusData=bytes(data)),
    )
    if error_message is not None:
        message.errorMessage = bytes(error_message)
    return ext.ExternalClient(status=message)


def command_response(session_id: str, type: int, counter: int) -> ext.ExternalClient:
    """The car's answer to command ``counter`` (``type`` is a :class:`CommandResponseType`)."""
    return ext.ExternalClient(
        commandResponse=ext.CommandResponse(
            sessionId=session_id,
            type=cast("ext.CommandResponse.Type", int(type)),
            messageCounter=counter,
        )
    )


# --- parsers ---------------------------------------------------------------------------


def _decode(message: Message, payload: object, max_size: int) -> InvalidMessage | None:
    """Fill ``message`` from ``payload``; an InvalidMessage instead of any exception."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        return InvalidMessage(f"payload of type {type(payload).__name__} is not bytes", 0, "not_bytes")
    size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    if size > max_size:
        return InvalidMessage(
            f"payload of {size} bytes exceeds the limit of {max_size} bytes", size, "oversized"
        )
    try:
        message.ParseFromString(bytes(payload))
    except Exception as error:  # DecodeError, and anything else a broken payload may provoke
        return InvalidMessage(f"not a valid {message.DESCRIPTOR.name} message: {error}", size)
    return None


def parse_client_message(payload: Payload, max_size: int = MAX_PAYLOAD_BYTES) -> ParsedMessage:
    """Parse what a car published on ``module_gateway``; never raises."""
    message = ext.ExternalClient()
    invalid = _decode(message, payload, max_size)
    if invalid is not None:
        return invalid
    try:
        return _client_message(message, len(payload))
    except Exception as error:  # defensive: reading a decoded message should not fail
        return InvalidMessage(f"cannot read ExternalClient message: {error}", len(payload))


def _client_message(message: ext.ExternalClient, size: int) -> ParsedMessage:
    member = message.WhichOneof("MessageType")
    if member == "connect":
        c = message.connect
        devices = tuple(Device.from_proto(d) for d in c.devices)
        return ConnectMessage(c.sessionId, c.company, c.vehicleName, devices, message)
    if member == "status":
        s = message.status
        error_message = s.errorMessage if s.HasField("errorMessage") else None
        device = Device.from_proto(s.deviceStatus.device)
        return StatusMessage(
            s.sessionId,
            int(s.deviceState),
            s.messageCounter,
            device,
            s.deviceStatus.statusData,
            error_message,
            message,
        )
    if member == "commandResponse":
        r = message.commandResponse
        return CommandResponseMessage(r.sessionId, int(r.type), r.messageCounter, message)
    return UnknownMessage(size)


def parse_server_message(payload: Payload, max_size: int = MAX_PAYLOAD_BYTES) -> ParsedServerMessage:
    """Parse what the server published on ``external_server`` (car side); never raises."""
    message = ext.ExternalServer()
    invalid = _decode(message, payload, max_size)
    if invalid is not None:
        return invalid
    try:
        return _server_message(message, len(payload))
    except Exception as error:  # defensive, as above
        return InvalidMessage(f"cannot read ExternalServer message: {error}", len(payload))


def _server_message(message: ext.ExternalServer, size: int) -> ParsedServerMessage:
    member = message.WhichOneof("MessageType")
    if member == "connectResponse":
        cr = message.connectResponse
        return ConnectResponseMessage(cr.sessionId, int(cr.type), message)
    if member == "statusResponse":
        sr = message.statusResponse
        return StatusResponseMessage(sr.sessionId, int(sr.type), sr.messageCounter, message)
    if member == "command":
        cm = message.command
        device = Device.from_proto(cm.deviceCommand.device)
        return CommandMessage(cm.sessionId, cm.messageCounter, device, cm.deviceCommand.commandData, message)
    return UnknownMessage(size)
