"""The suite's one ``free_port`` and one ``wait_until`` (with a blocking twin for thread tests).

Tests synchronise on observable state (counters, states, messages), never on sleeps: a
``wait_until`` polls a predicate up to a generous bound and fails with what it waited for.
The bound is a guard against a hang, not a claim about speed; on a busy machine the
condition simply comes later.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

HOST = "127.0.0.1"
POLL_S = 0.01


def free_port(host: str = HOST) -> int:
    """A loopback port that is free right now (for a process or double that binds it later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Return once ``predicate()`` is true; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(POLL_S)


def wait_until_blocking(
    predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """:func:`wait_until` for tests without an event loop (threads, ctypes calls)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(POLL_S / 2)
