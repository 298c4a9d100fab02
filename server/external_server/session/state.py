"""Per-car session states of docs/protocol.md §4.2 and the allowed transitions."""

from __future__ import annotations

from enum import StrEnum


class CarState(StrEnum):
    UNINITIALIZED = "UNINITIALIZED"
    CONNECTED = "CONNECTED"
    INITIALIZED = "INITIALIZED"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


_ALLOWED: dict[CarState, frozenset[CarState]] = {
    CarState.UNINITIALIZED: frozenset(
        {CarState.UNINITIALIZED, CarState.CONNECTED, CarState.ERROR, CarState.STOPPED}
    ),
    CarState.CONNECTED: frozenset(
        {CarState.CONNECTED, CarState.INITIALIZED, CarState.ERROR, CarState.STOPPED}
    ),
    CarState.INITIALIZED: frozenset(
        {CarState.INITIALIZED, CarState.RUNNING, CarState.ERROR, CarState.STOPPED}
    ),
    CarState.RUNNING: frozenset({CarState.RUNNING, CarState.ERROR, CarState.STOPPED}),
    CarState.STOPPED: frozenset({CarState.STOPPED, CarState.UNINITIALIZED}),
    CarState.ERROR: frozenset({CarState.ERROR, CarState.UNINITIALIZED}),
}


def next_state(current: CarState, wanted: CarState) -> CarState:
    """The state after asking for ``wanted``: disallowed transitions keep the current state (§4.2)."""
    return wanted if wanted in _ALLOWED[current] else current
