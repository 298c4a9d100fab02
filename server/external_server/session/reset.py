"""Why a session run ended (docs/protocol.md §4.14); low-cardinality labels for logs and metrics."""

from __future__ import annotations

import logging
from enum import StrEnum


class ResetReason(StrEnum):
    NO_CONNECT = "no_connect"
    INVALID_CONNECT = "invalid_connect"
    FIRST_STATUS = "first_status"
    NO_DEVICES = "no_devices"
    FIRST_COMMAND_RESPONSE = "first_command_response"
    CONNECT_DURING_SEQUENCE = "connect_during_sequence"
    NEW_SESSION = "new_session"
    ALL_DEVICES_DISCONNECTED = "all_devices_disconnected"
    SESSION_TIMEOUT = "session_timeout"
    STATUS_TIMEOUT = "status_timeout"
    COMMAND_RESPONSE_TIMEOUT = "command_response_timeout"
    BROKER_LOST = "broker_lost"
    PUBLISH_FAILED = "publish_failed"
    UNEXPECTED_ERROR = "unexpected_error"


class SessionReset(Exception):
    """Ends the current session run; the car session cleans up, pauses D and starts again."""

    def __init__(self, reason: ResetReason, message: str, level: int = logging.WARNING) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.level = level


class SessionStopped(Exception):
    """The server is stopping: clean up and leave the loop."""
