"""Car-side protobuf builders (what the gateway sends, protocol.md §2.2).

Built here rather than shared with the server's builders so the simulator only
depends on the wire format, which is exactly what a second implementation of
the peer should depend on.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable

from ..device import Device
from ..wire import ExternalProtocol_pb2 as ext
from ..wire import InternalProtocol_pb2 as internal

SESSION_ID_ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase
SESSION_ID_LENGTH = 8

DeviceLike = Device | internal.Device


def new_session_id() -> str:
    """A fresh session id like the gateway's: 8 characters from [0-9a-zA-Z]."""
    return "".join(secrets.choice(SESSION_ID_ALPHABET) for _ in range(SESSION_ID_LENGTH))


def device_proto(device: DeviceLike) -> internal.Device:
    """Accept both the project's ``Device`` and a raw protobuf ``Device``."""
    return device.to_proto() if isinstance(device, Device) else device


def connect(
    session_id: str, company: str, vehicle_name: str, devices: Iterable[DeviceLike]
) -> ext.ExternalClient:
    return ext.ExternalClient(
        connect=ext.Connect(
            sessionId=session_id,
            company=company,
            vehicleName=vehicle_name,
            devices=[device_proto(device) for device in devices],
        )
    )


def status(  # noqa: PLR0917  (mirrors the Status fields in wire order)
    session_id: str,
    state: ext.Status.DeviceState,
    counter: int,
    device: DeviceLike,
    data: bytes = b"",
    error_message: bytes | None = None,
) -> ext.ExternalClient:
    message = ext.Status(
        sessionId=session_id,
        deviceState=state,
        messageCounter=counter,
        deviceStatus=internal.DeviceStatus(device=device_proto(device), statusData=data),
    )
    if error_message is not None:
        message.errorMessage = error_message
    return ext.ExternalClient(status=message)


def command_response(
    session_id: str, counter: int, response_type: ext.CommandResponse.Type = ext.CommandResponse.OK
) -> ext.ExternalClient:
    return ext.ExternalClient(
        commandResponse=ext.CommandResponse(sessionId=session_id, type=response_type, messageCounter=counter)
    )


def kind_of(message: ext.ExternalServer | ext.ExternalClient) -> str:
    """Name of the oneof member that is set, or ``"empty"``."""
    return message.WhichOneof("MessageType") or "empty"
