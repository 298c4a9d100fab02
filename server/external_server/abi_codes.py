"""Return codes and disconnect types of the module ABI as plain ints (docs/protocol.md §5.1).

Kept apart from the ctypes mirror in ``modules/abi.py`` so the pure session core can
use them without importing ctypes.
"""

from __future__ import annotations

from enum import IntEnum

# general_error_codes.h
OK = 0
NOT_OK = -1
RESERVED = -10
# external_server_structures.h (es_error_codes)
CONTEXT_INCORRECT = RESERVED - 1
TIMEOUT_OCCURRED = RESERVED - 2


class DisconnectType(IntEnum):
    """Argument of device_disconnected (external_server_structures.h, disconnect_types)."""

    ANNOUNCED = 0
    TIMEOUT = 1
    ERROR = 2


# Plain-int spellings of the disconnect types.
DISCONNECT_ANNOUNCED = int(DisconnectType.ANNOUNCED)
DISCONNECT_TIMEOUT = int(DisconnectType.TIMEOUT)
DISCONNECT_ERROR = int(DisconnectType.ERROR)
