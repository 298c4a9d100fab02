"""Status order checker (docs/protocol.md §4.10; checklist §8.4, items 64-75).

Not covered: item 63 (the session timer, which lives in the car session, not here) and
item 64 (a fresh checker starting at E = 0 whose counter can be "set" once): we start at
E = 1 and adopt the baseline unconditionally instead (design decision, docs/protocol.md §10.6);
``test_baseline_adopted_unconditionally`` covers what replaces it.
"""

from __future__ import annotations

import time

import pytest
from external_server.protocol.status_order import StatusOrderChecker
from hypothesis import given
from hypothesis import strategies as st

T = 30.0


def checker(expected: int = 1) -> StatusOrderChecker[str]:
    """A checker whose E is ``expected``, set the way phase B does it."""
    c: StatusOrderChecker[str] = StatusOrderChecker(T)
    if expected != 1:
        c.adopt_baseline()
        c.check(expected - 1, "baseline", 0.0)
        assert c.expected == expected
    return c


def feed(c: StatusOrderChecker[str], counters: list[int], now: float = 0.0) -> list[int]:
    """Check each counter; return every released counter, in release order."""
    released: list[int] = []
    for counter in counters:
        result = c.check(counter, f"s{counter}", now)
        assert list(result.released) == [f"s{k}" for k in result.released_counters]
        released += result.released_counters
    return released


@pytest.mark.parametrize("expected", [1, 7])
def test_expected_status_is_released(expected: int) -> None:
    """Item 65: status E -> released, E+1, nothing missing."""
    c = checker(expected)
    result = c.check(expected, "s", 0.0)
    assert result.released == ("s",)
    assert result.released_counters == (expected,)
    assert not result.ignored
    assert not result.held
    assert c.expected == expected + 1
    assert c.missing() == []


@pytest.mark.parametrize("expected", [1, 7])
def test_status_ahead_marks_gap_missing(expected: int) -> None:
    """Item 66: E+3 arrives -> E, E+1, E+2 missing, nothing released, E unchanged."""
    c = checker(expected)
    result = c.check(expected + 3, "s", 0.0)
    assert result.released == ()
    assert result.held
    assert list(result.newly_missing) == [expected, expected + 1, expected + 2]
    assert c.missing() == [expected, expected + 1, expected + 2]
    assert c.expected == expected


def test_status_below_expected_is_ignored() -> None:
    """Item 67: E-1 -> ignored: nothing stored, nothing missing, E unchanged."""
    c = checker(5)
    result = c.check(4, "old", 0.0)
    assert result.ignored_old and result.ignored
    assert result.expected == 5  # for "Status with counter 4 smaller than expected value 5 ..."
    assert result.released == ()
    assert c.expected == 5
    assert c.missing() == []
    assert c.held_counters() == []


def test_same_status_twice_is_released_once() -> None:
    """Item 68: the same status (counter E) twice -> released once, no timeout."""
    c = checker()
    assert feed(c, [1, 1]) == [1]
    assert not c.expired(1e9)


def test_shuffled_statuses_released_in_order() -> None:
    """Item 69: 3,1,2,5,4 -> released 1..5 in order."""
    assert feed(checker(), [3, 1, 2, 5, 4]) == [1, 2, 3, 4, 5]


def test_gap_holds_later_statuses() -> None:
    """Item 70: 1, 3, 4 (2 skipped) -> only 1 released."""
    c = checker()
    assert feed(c, [1, 3, 4]) == [1]
    assert c.held_counters() == [3, 4]
    # §4.10 rule 5 taken literally: when 4 arrives, 3 is "not yet missing" and gets marked
    # although it is held; its timer can never fire before the one of 2.
    assert c.missing() == [2, 3]


def test_one_timer_per_missing_counter() -> None:
    """Item 71: a timer per missing counter; a gap ending at or below the newest missing adds nothing."""
    c = checker()
    c.check(4, "s4", 10.0)
    assert c.missing_deadlines() == {1: 10.0 + T, 2: 10.0 + T, 3: 10.0 + T}
    result = c.check(3, "s3", 11.0)
    assert list(result.newly_missing) == []
    result = c.check(2, "s2", 12.0)
    assert list(result.newly_missing) == []
    assert c.missing_deadlines() == {1: 10.0 + T, 2: 10.0 + T, 3: 10.0 + T}
    result = c.check(6, "s6", 13.0)
    assert list(result.newly_missing) == [4, 5]  # 4 is held, but marked like the reference does
    assert c.missing_deadlines() == {1: 10.0 + T, 2: 10.0 + T, 3: 10.0 + T, 4: 13.0 + T, 5: 13.0 + T}
    assert c.next_deadline() == 10.0 + T


def test_missing_counters_stay_until_released() -> None:
    """Item 72: 4, 2, 3, 1 -> missing {1,2,3} until 1 arrives, then empty; all four released."""
    c = checker()
    assert feed(c, [4]) == []
    assert c.missing() == [1, 2, 3]
    assert feed(c, [2]) == []
    assert c.missing() == [1, 2, 3]
    assert feed(c, [3]) == []
    assert c.missing() == [1, 2, 3]
    assert feed(c, [1]) == [1, 2, 3, 4]
    assert c.missing() == []
    assert c.next_deadline() is None
    assert not c.expired(1e9)


def test_partial_fill_leaves_upper_gap_missing() -> None:
    """Item 73: 4,2,1 -> 1,2 released, missing {3}; 5,2,1 -> missing {3,4}."""
    c = checker()
    assert feed(c, [4, 2, 1]) == [1, 2]
    assert c.missing() == [3]
    c = checker()
    assert feed(c, [5, 2, 1]) == [1, 2]
    assert c.missing() == [3, 4]


def test_status_timeout() -> None:
    """Item 74: in order -> no timeout; a never-filled gap -> timeout after T; 2,1,4,3 -> none."""
    c = checker()
    feed(c, [1, 2, 3], now=0.0)
    assert not c.expired(1e9)

    c = checker()
    feed(c, [1, 3], now=100.0)
    assert c.next_deadline() == 100.0 + T
    assert not c.expired(100.0 + T - 0.001)
    assert c.expired(100.0 + T)

    c = checker()
    assert feed(c, [2, 1, 4, 3], now=0.0) == [1, 2, 3, 4]
    assert not c.expired(1e9)


def test_reset() -> None:
    """Item 75: after statuses 1-3 (with 2 missing) a reset releases nothing, E = 1, no timeout."""
    c = checker()
    feed(c, [1, 3], now=0.0)
    c.reset()
    assert c.expected == 1
    assert c.missing() == []
    assert c.held_counters() == []
    assert not c.expired(1e9)
    assert feed(c, [2]) == []  # the held 3 was dropped: 2 only marks 1 missing
    assert c.missing() == [1]


@pytest.mark.parametrize(
    ("counters", "released", "missing"),
    [
        ([1, 2, 3], [1, 2, 3], []),
        ([3, 1, 2], [1, 2, 3], []),
        ([1, 3], [1], [2]),
        ([1, 3, 4], [1], [2, 3]),
        ([5, 2], [], [1, 2, 3, 4]),
        ([5, 2, 1], [1, 2], [3, 4]),
    ],
)
def test_spec_examples(counters: list[int], released: list[int], missing: list[int]) -> None:
    """The examples of §4.10 (baseline 1)."""
    c = checker()
    assert feed(c, counters) == released
    assert c.missing() == missing


def test_spec_example_3_1_2_step_by_step() -> None:
    """§4.10: receive 3,1,2 -> 3 held, 1 released, then 2 and 3."""
    c = checker()
    assert c.check(3, "s3", 0.0).held
    assert c.check(1, "s1", 0.0).released == ("s1",)
    assert c.check(2, "s2", 0.0).released == ("s2", "s3")


def test_duplicate_held_status_is_dropped() -> None:
    """§10.8: a second status with an already held counter is dropped (the reference crashed)."""
    c = checker()
    c.check(3, "first", 0.0)
    result = c.check(3, "second", 0.0)
    assert result.duplicate and result.ignored
    assert not result.ignored_old
    assert c.check(1, "s1", 0.0).released == ("s1",)
    assert c.check(2, "s2", 0.0).released == ("s2", "first")


@pytest.mark.parametrize("baseline", [0, 1, 3, 1000])
def test_baseline_adopted_unconditionally(baseline: int) -> None:
    """§10.6 (replaces item 64): after phase B the first status sets E, whatever its counter."""
    c: StatusOrderChecker[str] = StatusOrderChecker(T)
    c.check(5, "before", 0.0)
    c.adopt_baseline()
    assert c.adopting_baseline
    assert c.held_counters() == []  # held statuses of an old numbering are dropped
    result = c.check(baseline, "first", 0.0)
    assert result.baseline_adopted
    assert result.released == ("first",)
    assert c.expected == baseline + 1
    assert not c.adopting_baseline
    assert c.check(baseline, "again", 0.0).ignored_old


def test_reset_cancels_pending_baseline_adoption() -> None:
    """§4.13: clean-up empties everything; adoption is set again by the next phase B."""
    c: StatusOrderChecker[str] = StatusOrderChecker(T)
    c.adopt_baseline()
    c.reset()
    assert not c.adopting_baseline
    assert c.check(0, "zero", 0.0).ignored_old


def test_huge_gap_is_cheap() -> None:
    """A garbage counter must not create four billion timers."""
    c = checker()
    started = time.perf_counter()
    result = c.check(4_000_000_000, "wild", 0.0)
    assert time.perf_counter() - started < 0.1
    assert len(result.newly_missing) == 4_000_000_000 - 1
    assert c.missing_range() == range(1, 4_000_000_000)
    assert c.expired(T)


def test_negative_timeout_rejected() -> None:
    with pytest.raises(ValueError):
        StatusOrderChecker(-1.0)


# --- properties ----------------------------------------------------------------------


@given(
    baseline=st.integers(min_value=0, max_value=100_000),
    order=st.integers(min_value=0, max_value=40).flatmap(lambda n: st.permutations(range(1, n + 1))),
)
def test_any_permutation_releases_each_status_once_in_order(baseline: int, order: list[int]) -> None:
    """Counters baseline..baseline+n-1 in any order: each released once, in order, nothing missing."""
    c: StatusOrderChecker[str] = StatusOrderChecker(T)
    c.adopt_baseline()
    released = feed(c, [baseline] + [baseline + k for k in order])
    assert released == list(range(baseline, baseline + len(order) + 1))
    assert c.missing() == []
    assert c.held_counters() == []
    assert c.next_deadline() is None
    assert c.expected == baseline + len(order) + 1


@given(
    data=st.data(),
    n=st.integers(min_value=2, max_value=40),
)
def test_a_gap_is_never_crossed(data: st.DataObject, n: int) -> None:
    """Any subset with a gap (and duplicates) never releases past the gap, and times out."""
    gap = data.draw(st.integers(min_value=2, max_value=n), label="gap")
    others = [k for k in range(1, n + 1) if k != gap]
    subset = data.draw(st.lists(st.sampled_from(others), max_size=3 * n), label="arrivals")
    c = checker()
    released = feed(c, subset, now=0.0)
    assert len(released) == len(set(released))
    assert released == list(range(1, len(released) + 1))
    assert all(k < gap for k in released)
    if any(k > gap for k in subset):
        assert gap in c.missing()
        assert c.expired(T)
        assert not c.expired(T - 0.001)
