"""The ordered inbox of one simulated gateway: messages, notifications and link drops, with times.

Receive times are taken in the MQTT callback (when an item is pushed), so measured latencies do
not include the gateway task's own queueing.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from enum import Enum
from typing import NamedTuple


class Kind(Enum):
    MESSAGE = 1
    NOTIFICATION = 2
    LINK_DOWN = 3


class InboxEvent(NamedTuple):
    kind: Kind
    payload: bytes
    at: float


class Inbox:
    """Events in arrival order and a wake-up for the task that processes them."""

    def __init__(self) -> None:
        self._events: deque[InboxEvent] = deque()
        self._wakeup = asyncio.Event()

    def push(self, kind: Kind, payload: bytes) -> None:
        self._events.append(InboxEvent(kind, payload, asyncio.get_running_loop().time()))
        self._wakeup.set()

    def wake(self) -> None:
        """Make the waiting task re-check its state without an event."""
        self._wakeup.set()

    def clear(self) -> None:
        self._events.clear()

    async def next(self, deadline: float) -> InboxEvent | None:
        """The oldest event, or None at ``deadline`` or on a wake-up without event (re-check state)."""
        if self._events:
            return self._events.popleft()
        self._wakeup.clear()
        handle = None
        if deadline != math.inf:
            handle = asyncio.get_running_loop().call_at(deadline, self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            if handle is not None:
                handle.cancel()
        return self._events.popleft() if self._events else None
