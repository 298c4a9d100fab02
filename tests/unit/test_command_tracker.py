"""Command counter and command checker (docs/protocol.md §4.11; checklist §8.4, items 51-62)."""

from __future__ import annotations

import pytest
from external_server.device import Device
from external_server.protocol.command_tracker import AckReason, CommandTracker
from hypothesis import given
from hypothesis import strategies as st

T = 30.0
DEVICE = Device(1000, 0, "light", "Front light")


def tracker_with(counters: range, now: float = 0.0) -> CommandTracker:
    tracker = CommandTracker(T, first_counter=counters.start)
    for _ in counters:
        tracker.register_sent(DEVICE, b"cmd", False, now)
    return tracker


def released_counters(tracker: CommandTracker, counter: int) -> list[int]:
    return [command.counter for command in tracker.acknowledge(counter).released]


def pending_counters(tracker: CommandTracker) -> list[int]:
    return [command.counter for command in tracker.pending()]


def test_empty_tracker_releases_nothing() -> None:
    """Item 51: no commands -> a response releases nothing; the oldest counter is none."""
    tracker = CommandTracker(T)
    result = tracker.acknowledge(0)
    assert result.released == ()
    assert result.reason is AckReason.NO_COMMANDS
    assert not result
    assert tracker.oldest_counter is None


def test_in_order_responses_release_their_command() -> None:
    """Item 52: commands 0-3, responses 0,1,2 -> each releases exactly its command."""
    tracker = tracker_with(range(4))
    assert released_counters(tracker, 0) == [0]
    assert released_counters(tracker, 1) == [1]
    assert released_counters(tracker, 2) == [2]
    assert pending_counters(tracker) == [3]


def test_responses_without_the_oldest_release_nothing() -> None:
    """Item 53: commands 0-3, responses 1 and 2 -> nothing released."""
    tracker = tracker_with(range(4))
    assert tracker.acknowledge(1).reason is AckReason.EARLY
    assert tracker.acknowledge(2).reason is AckReason.EARLY
    assert pending_counters(tracker) == [0, 1, 2, 3]
    assert tracker.early_acknowledgements() == {1, 2}


def test_oldest_response_releases_all_early_acknowledged() -> None:
    """Item 54: commands 0-3, responses 1,3,2 then 0 -> 0 releases 0,1,2,3 in order."""
    tracker = tracker_with(range(4))
    for counter in (1, 3, 2):
        assert released_counters(tracker, counter) == []
    result = tracker.acknowledge(0)
    assert result.reason is AckReason.RELEASED
    assert [c.counter for c in result.released] == [0, 1, 2, 3]
    assert len(tracker) == 0
    assert tracker.early_acknowledgements() == frozenset()


def test_release_stops_at_first_unacknowledged() -> None:
    """Item 55: commands 0-3, 1 then 0 -> [0, 1]; then 2 -> [2]."""
    tracker = tracker_with(range(4))
    assert released_counters(tracker, 1) == []
    assert released_counters(tracker, 0) == [0, 1]
    assert released_counters(tracker, 2) == [2]
    assert pending_counters(tracker) == [3]


def test_response_to_newest_only_releases_nothing() -> None:
    """Item 56: commands 0-3, response 3 -> nothing released."""
    tracker = tracker_with(range(4))
    assert released_counters(tracker, 3) == []
    assert pending_counters(tracker) == [0, 1, 2, 3]


def test_counter_set_without_commands_releases_nothing() -> None:
    """Item 57: counter at 5, no commands, responses 0, 5, 10 -> nothing released."""
    tracker = CommandTracker(T, first_counter=5)
    for counter in (0, 5, 10):
        result = tracker.acknowledge(counter)
        assert result.released == ()
        assert result.reason is AckReason.NO_COMMANDS
    assert tracker.next_counter == 5


def test_single_command_released() -> None:
    """Item 58: one command (5), response 5 -> released, nothing pending."""
    tracker = tracker_with(range(5, 6))
    assert released_counters(tracker, 5) == [5]
    assert len(tracker) == 0


@pytest.mark.parametrize("counter", [4, 7, 0, 1000])
def test_out_of_range_response_is_ignored_and_not_remembered(counter: int) -> None:
    """Item 59: commands 5,6, response 4 or 7 -> ignored, not remembered, pending stays [5, 6]."""
    tracker = tracker_with(range(5, 7))
    result = tracker.acknowledge(counter)
    assert result.reason is AckReason.OUT_OF_RANGE
    assert result.released == ()
    assert tracker.early_acknowledgements() == frozenset()
    assert pending_counters(tracker) == [5, 6]
    assert released_counters(tracker, 5) == [5]


def test_early_acknowledgement_is_applied_with_the_oldest() -> None:
    """Item 60: commands 5,6: 6 -> nothing, pending [5,6]; then 5 -> both (6 was early-acked)."""
    tracker = tracker_with(range(5, 7))
    assert released_counters(tracker, 6) == []
    assert pending_counters(tracker) == [5, 6]
    assert released_counters(tracker, 5) == [5, 6]


def test_oldest_alone_without_early_acknowledgement() -> None:
    """Item 60 (other branch): commands 5,6, response 5 only -> only 5 released."""
    tracker = tracker_with(range(5, 7))
    assert released_counters(tracker, 5) == [5]
    assert pending_counters(tracker) == [6]


def test_spec_example_5_to_8() -> None:
    """Item 61 and the §4.11 example: pending 5..8, responses 6, 8, 7 -> nothing; 5 -> 5,6,7,8."""
    tracker = tracker_with(range(5, 9))
    for counter in (6, 8, 7):
        assert released_counters(tracker, counter) == []
    assert released_counters(tracker, 5) == [5, 6, 7, 8]


def test_command_timeout() -> None:
    """Item 62: T passes -> timeout; reset clears it; an ack before T prevents it; two commands,
    only the first acknowledged -> timeout."""
    tracker = tracker_with(range(1), now=100.0)
    assert tracker.next_deadline() == 100.0 + T
    assert not tracker.expired(100.0 + T - 0.001)
    assert tracker.expired(100.0 + T)
    tracker.reset()
    assert not tracker.expired(1e9)
    assert tracker.next_deadline() is None

    tracker.register_sent(DEVICE, b"", False, 200.0)
    tracker.acknowledge(tracker.next_counter - 1)
    assert not tracker.expired(1e9)

    first = tracker.register_sent(DEVICE, b"a", False, 300.0)
    tracker.register_sent(DEVICE, b"b", False, 301.0)
    tracker.acknowledge(first)
    assert tracker.next_deadline() == 301.0 + T
    assert not tracker.expired(300.0 + T + 0.5)
    assert tracker.expired(301.0 + T)
    assert [c.data for c in tracker.overdue(301.0 + T)] == [b"b"]


def test_early_acknowledged_command_keeps_its_timer() -> None:
    """§4.11: only release cancels a timer, so a lost older response still times out."""
    tracker = CommandTracker(T)
    tracker.register_sent(DEVICE, b"a", False, 0.0)
    tracker.register_sent(DEVICE, b"b", False, 1.0)
    tracker.acknowledge(1)
    assert tracker.next_deadline() == T
    assert tracker.expired(T)


def test_counter_starts_at_zero_and_is_never_reset() -> None:
    """§4.11 / §10.4: counter starts at 0, +1 per command, survives reset (next session uses 2, 3)."""
    tracker = CommandTracker(T)
    assert tracker.next_counter == 0
    assert tracker.register_sent(DEVICE, b"", True, 0.0) == 0
    assert tracker.register_sent(DEVICE, b"", True, 0.0) == 1
    tracker.reset()
    assert len(tracker) == 0
    assert tracker.register_sent(DEVICE, b"", True, 5.0) == 2
    assert tracker.register_sent(DEVICE, b"", True, 5.0) == 3
    assert tracker.next_counter == 4


def test_reset_drops_early_acknowledgements() -> None:
    """§4.13 step 5: pending commands and early acks discarded, counter kept."""
    tracker = tracker_with(range(3))
    tracker.acknowledge(2)
    tracker.reset()
    assert tracker.early_acknowledgements() == frozenset()
    tracker.register_sent(DEVICE, b"", False, 0.0)
    assert tracker.acknowledge(3).reason is AckReason.RELEASED


def test_pending_command_remembers_what_command_ack_needs() -> None:
    """§4.7.3 / §4.8.3: device, data and whether it was a server-generated empty command."""
    tracker = CommandTracker(T)
    other = Device(1000, 1, "button", "B")
    tracker.register_sent(DEVICE, b"", True, 1.0)
    tracker.register_sent(other, b"data", False, 2.0)
    generated, module_made = tracker.acknowledge(0).released + tracker.acknowledge(1).released
    assert (generated.device, generated.data, generated.server_generated) == (DEVICE, b"", True)
    assert (module_made.device, module_made.data, module_made.server_generated) == (other, b"data", False)
    assert (module_made.sent_at, module_made.deadline) == (2.0, 2.0 + T)


def test_find_looks_anywhere_in_pending_list() -> None:
    """§4.8.3 / items 185-187: DEVICE_NOT_CONNECTED looks up any pending counter, not only the oldest."""
    other = Device(1000, 1, "button", "B")
    tracker = CommandTracker(T)
    tracker.register_sent(DEVICE, b"", False, 0.0)
    tracker.register_sent(other, b"", False, 0.0)
    found = tracker.find(1)
    assert found is not None
    assert found.device == other
    assert tracker.find(2) is None
    assert len(tracker) == 2  # find does not release


def test_invalid_construction() -> None:
    with pytest.raises(ValueError):
        CommandTracker(-1.0)
    with pytest.raises(ValueError):
        CommandTracker(1.0, first_counter=-1)


# --- properties ----------------------------------------------------------------------


@given(
    first=st.integers(min_value=0, max_value=10_000),
    order=st.integers(min_value=1, max_value=30).flatmap(lambda n: st.permutations(range(n))),
)
def test_any_permutation_releases_each_command_once_in_order(first: int, order: list[int]) -> None:
    """Every command released exactly once, in counter order; nothing before the oldest is acked."""
    n = len(order)
    tracker = tracker_with(range(first, first + n))
    released: list[int] = []
    acked: set[int] = set()
    for offset in order:
        acked.add(first + offset)
        released += released_counters(tracker, first + offset)
        # released is always the longest acknowledged prefix of the counters
        prefix = first
        while prefix in acked:
            prefix += 1
        assert released == list(range(first, prefix))
    assert released == list(range(first, first + n))
    assert len(tracker) == 0
    assert tracker.early_acknowledgements() == frozenset()


@given(
    n=st.integers(min_value=0, max_value=20),
    responses=st.lists(st.integers(min_value=-5, max_value=30), max_size=80),
    sends_between=st.lists(st.booleans(), max_size=80),
)
def test_random_interleavings_never_release_twice(
    n: int, responses: list[int], sends_between: list[bool]
) -> None:
    """Duplicates and out-of-range counters never release a command twice or out of order."""
    tracker = tracker_with(range(n))
    released: list[int] = []
    for index, counter in enumerate(responses):
        if index < len(sends_between) and sends_between[index]:
            tracker.register_sent(DEVICE, b"", False, float(index))
        result = tracker.acknowledge(counter)
        if result.released:
            assert result.reason is AckReason.RELEASED
            assert result.released[0].counter == counter
        released += [c.counter for c in result.released]
    assert len(released) == len(set(released))
    assert released == sorted(released)
    assert released == list(range(len(released)))  # contiguous from the first counter
    assert all(c.counter not in released for c in tracker.pending())
