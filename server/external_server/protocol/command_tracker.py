"""The per-car command counter and the in-order acknowledgement of commands (docs/protocol.md §4.11).

The counter is never reset (it lives for the process, §10.4): the gateway re-bases on the
first command of each session, and the integration suite expects counters to continue
after a reconnect. Pending commands are released only in publish order; a response for a
newer command is remembered as an early acknowledgement and takes effect once every older
command was acknowledged. Each pending command keeps its deadline until it is released, so
a lost response for an old command still causes COMMAND_RESPONSE_TIMEOUT.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from ..device import Device


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A published command waiting for its response; what ``command_ack`` needs later."""

    counter: int
    device: Device
    data: bytes
    server_generated: bool
    """True for the empty first commands the server makes up (§4.6.4): no ``command_ack`` in phase D."""
    sent_at: float
    deadline: float


class AckReason(enum.Enum):
    """Why :meth:`CommandTracker.acknowledge` released what it did (or nothing)."""

    RELEASED = "released"
    NO_COMMANDS = "no commands"
    """No command is pending (INFO "No commands …", §4.8.3.4)."""
    OUT_OF_RANGE = "out of range"
    """Counter below the oldest or above the newest pending command (INFO "… counter …")."""
    EARLY = "early"
    """Counter of a newer pending command: remembered, released once all older ones are."""


@dataclass(frozen=True, slots=True)
class AckResult:
    """Released commands in counter order (empty unless ``reason`` is RELEASED)."""

    reason: AckReason
    released: tuple[PendingCommand, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.released)


class CommandTracker:
    """Command counter and pending commands of one car."""

    def __init__(self, timeout: float, first_counter: int = 0) -> None:
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        if first_counter < 0:
            raise ValueError("first_counter must be >= 0")
        self._timeout = timeout
        self._next_counter = first_counter
        self._pending: OrderedDict[int, PendingCommand] = OrderedDict()
        self._early: set[int] = set()

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def next_counter(self) -> int:
        """The counter the next published command will get (peek; does not consume it)."""
        return self._next_counter

    def register_sent(self, device: Device, data: bytes, server_generated: bool, now: float) -> int:
        """Take the next counter for a command about to be published and start its timer.

        Returns the counter to put in the ``Command``; :meth:`find` gives the record back.
        """
        command = PendingCommand(
            counter=self._next_counter,
            device=device,
            data=bytes(data),
            server_generated=server_generated,
            sent_at=now,
            deadline=now + self._timeout,
        )
        self._next_counter += 1
        self._pending[command.counter] = command
        return command.counter

    def acknowledge(self, counter: int) -> AckResult:
        """Apply one CommandResponse counter (any type); never releases a command twice."""
        if not self._pending:
            return AckResult(AckReason.NO_COMMANDS)
        oldest = next(iter(self._pending))
        newest = next(reversed(self._pending))
        if counter == oldest:
            released = [self._pending.pop(oldest)]
            while self._pending:
                following = next(iter(self._pending))
                if following not in self._early:
                    break
                self._early.discard(following)
                released.append(self._pending.pop(following))
            return AckResult(AckReason.RELEASED, tuple(released))
        if oldest < counter <= newest and counter in self._pending:
            self._early.add(counter)
            return AckResult(AckReason.EARLY)
        return AckResult(AckReason.OUT_OF_RANGE)

    def find(self, counter: int) -> PendingCommand | None:
        """The pending command with this counter, anywhere in the list (DEVICE_NOT_CONNECTED, §4.8.3)."""
        return self._pending.get(counter)

    def pending(self) -> list[PendingCommand]:
        """Pending commands in publish (= counter) order, early-acknowledged ones included."""
        return list(self._pending.values())

    def early_acknowledgements(self) -> frozenset[int]:
        return frozenset(self._early)

    @property
    def oldest_counter(self) -> int | None:
        return next(iter(self._pending), None)

    def next_deadline(self) -> float | None:
        """When the earliest pending command times out; None if nothing is pending."""
        return min((command.deadline for command in self._pending.values()), default=None)

    def expired(self, now: float) -> bool:
        """True once a pending command is past its deadline: COMMAND_RESPONSE_TIMEOUT (§4.14 row 14)."""
        deadline = self.next_deadline()
        return deadline is not None and now >= deadline

    def overdue(self, now: float) -> list[PendingCommand]:
        """Pending commands past their deadline, for the timeout log line."""
        return [command for command in self._pending.values() if now >= command.deadline]

    def reset(self) -> None:
        """Clean-up (§4.13): drop pending commands and early acks; the counter keeps its value."""
        self._pending.clear()
        self._early.clear()

    def __len__(self) -> int:
        return len(self._pending)
