"""Car-side message helpers: session ids, message kinds, and the builders of protocol.messages."""

from __future__ import annotations

import secrets
import string

from ..protocol import messages as protocol_messages
from ..wire import ExternalProtocol_pb2 as ext

SESSION_ID_ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase
SESSION_ID_LENGTH = 8

DeviceLike = protocol_messages.DeviceLike


def new_session_id() -> str:
    """A fresh session id like the gateway's: 8 characters from [0-9a-zA-Z]."""
    return "".join(secrets.choice(SESSION_ID_ALPHABET) for _ in range(SESSION_ID_LENGTH))


# The car-side builders live with the server's in protocol.messages; only the argument
# order of command_response differs here (counter before type, type defaulting to OK).
connect = protocol_messages.connect
status = protocol_messages.status


def command_response(
    session_id: str, counter: int, response_type: ext.CommandResponse.Type = ext.CommandResponse.OK
) -> ext.ExternalClient:
    return protocol_messages.command_response(session_id, response_type, counter)


def kind_of(message: ext.ExternalServer | ext.ExternalClient) -> str:
    """Name of the oneof member that is set, or ``"empty"``."""
    return message.WhichOneof("MessageType") or "empty"
