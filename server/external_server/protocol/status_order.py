"""Releases a car's statuses in counter order and notices gaps (docs/protocol.md §4.10).

Decisions (docs/design.md, docs/protocol.md §10): the checker starts with E = 1 (the reference's
"fresh checker E = 0" quirk is not kept); after :meth:`StatusOrderChecker.adopt_baseline`
the next status sets E to its counter unconditionally (§10.6); a second status with a
counter that is already held is dropped instead of crashing. A counter below E is ignored.

Missing counters follow the reference: a status with counter c > E marks every counter
of [E, c) that is not yet missing as missing with deadline ``now + T`` (held ones too: a
lower counter is then always missing with an earlier or equal deadline, so their timers
never decide anything), and a counter stays missing until its status is *released*.
The missing counters are therefore always the contiguous range [E, hi); it is stored as
that range plus one deadline per marking, so a wild counter (say 4 000 000 000) costs
O(1) memory instead of one timer per counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CheckResult(Generic[T]):
    """What one :meth:`StatusOrderChecker.check` did, with the numbers the caller logs.

    ``released`` are the stored items now let through, in counter order, and
    ``released_counters`` their counters (to echo in the StatusResponses).
    ``expected`` is E as it was when the status arrived (for the "smaller than expected"
    WARNING); ``newly_missing`` are the counters that each deserve an "is missing" WARNING
    (a range: it can be huge for a garbage counter, so log it as a range when long).
    """

    counter: int
    expected: int
    released: tuple[T, ...] = ()
    released_counters: tuple[int, ...] = ()
    ignored_old: bool = False
    duplicate: bool = False
    baseline_adopted: bool = False
    newly_missing: range = range(0)

    @property
    def ignored(self) -> bool:
        """The status was dropped: no response will ever be sent for it."""
        return self.ignored_old or self.duplicate

    @property
    def held(self) -> bool:
        """The status was stored and waits for a gap below it to be filled."""
        return not self.ignored and not self.released


class StatusOrderChecker(Generic[T]):
    """Per-car status order checker; ``T`` is whatever the session stores per status."""

    def __init__(self, timeout: float) -> None:
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        self._timeout = timeout
        self._expected = 1
        self._adopt = False
        self._held: dict[int, T] = {}
        # Missing counters are range(self._expected, self._missing_end); each marking adds
        # (end_of_marked_part, deadline), ascending by end.
        self._missing_end = 1
        self._marks: list[tuple[int, float]] = []

    @property
    def expected(self) -> int:
        """E: the counter of the next status to release."""
        return self._expected

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def adopting_baseline(self) -> bool:
        return self._adopt

    def adopt_baseline(self) -> None:
        """Let the next status set E (phase B, §4.5); anything held belongs to an old numbering."""
        self._held.clear()
        self._clear_missing()
        self._adopt = True

    def check(self, counter: int, item: T, now: float) -> CheckResult[T]:
        """Take one status; return what is released now, in counter order, and what was noticed."""
        expected_before = self._expected
        adopted = False
        if self._adopt:
            self._adopt = False
            adopted = True
            self._expected = counter
            self._missing_end = counter
        elif counter < self._expected:
            return CheckResult(counter, expected_before, ignored_old=True)
        if counter in self._held:
            return CheckResult(counter, expected_before, duplicate=True)
        self._held[counter] = item
        if counter == self._expected:
            counters, items = self._release()
            return CheckResult(counter, expected_before, items, counters, baseline_adopted=adopted)
        newly_missing = self._mark_missing_below(counter, now)
        return CheckResult(counter, expected_before, baseline_adopted=adopted, newly_missing=newly_missing)

    def _release(self) -> tuple[tuple[int, ...], tuple[T, ...]]:
        counters: list[int] = []
        items: list[T] = []
        while self._expected in self._held:
            counters.append(self._expected)
            items.append(self._held.pop(self._expected))
            self._expected += 1
        if self._expected >= self._missing_end:
            self._clear_missing()
        else:
            self._marks = [(end, deadline) for end, deadline in self._marks if end > self._expected]
        return tuple(counters), tuple(items)

    def _mark_missing_below(self, counter: int, now: float) -> range:
        start = max(self._expected, self._missing_end)
        if counter <= start:
            return range(0)
        self._missing_end = counter
        self._marks.append((counter, now + self._timeout))
        return range(start, counter)

    def _clear_missing(self) -> None:
        self._missing_end = self._expected
        self._marks.clear()

    def missing(self) -> list[int]:
        """Counters whose status has not been released and whose timer runs, ascending."""
        return list(self.missing_range())

    def missing_range(self) -> range:
        """The missing counters as a range (cheap even for a huge gap)."""
        return range(self._expected, max(self._expected, self._missing_end))

    def missing_deadlines(self) -> dict[int, float]:
        """Deadline of every missing counter (for tests and diagnostics; O(gap))."""
        deadlines: dict[int, float] = {}
        start = self._expected
        for end, deadline in self._marks:
            for counter in range(start, end):
                deadlines[counter] = deadline
            start = end
        return deadlines

    def held_counters(self) -> list[int]:
        """Statuses received but waiting for a gap to be filled, ascending."""
        return sorted(self._held)

    def next_deadline(self) -> float | None:
        """When the earliest missing counter times out; None if nothing is missing."""
        return min((deadline for _, deadline in self._marks), default=None)

    def expired(self, now: float) -> bool:
        """True once any missing counter is past its deadline: STATUS_TIMEOUT (§4.14 row 13)."""
        deadline = self.next_deadline()
        return deadline is not None and now >= deadline

    def reset(self) -> None:
        """Clean-up (§4.13): E := 1, held statuses dropped unforwarded, timers gone."""
        self._expected = 1
        self._adopt = False
        self._held.clear()
        self._clear_missing()
