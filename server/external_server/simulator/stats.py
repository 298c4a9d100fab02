"""Counters and latency samples of simulated gateways, and their percentile summaries.

Samples are kept raw (8 bytes each in an ``array``) so percentiles over a whole
fleet are exact rather than averaged per car.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def new_samples() -> array[float]:
    return array("d")


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples (``q`` in 0..100); NaN when empty."""
    if not sorted_samples:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_samples) / 100.0 - 1e-9))  # epsilon: 99.9 % of 1000 is rank 999
    return sorted_samples[min(rank, len(sorted_samples)) - 1]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Distribution of latencies in milliseconds (all None without samples)."""

    count: int
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None

    @classmethod
    def from_samples(cls, samples_s: Iterable[float]) -> LatencySummary:
        ordered = sorted(samples_s)
        if not ordered:
            return cls(0, None, None, None, None, None, None)
        values = [percentile(ordered, q) * 1000.0 for _, q in PERCENTILES]
        return cls(
            count=len(ordered),
            mean_ms=math.fsum(ordered) / len(ordered) * 1000.0,
            p50_ms=values[0],
            p90_ms=values[1],
            p99_ms=values[2],
            p999_ms=values[3],
            max_ms=ordered[-1] * 1000.0,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "p99.9_ms": self.p999_ms,
            "max_ms": self.max_ms,
        }


@dataclass(slots=True)
class GatewayStats:
    """What one simulated gateway did; mutated only on the event loop by its gateway."""

    connect_attempts: int = 0
    connect_failures: int = 0
    sessions: int = 0
    statuses_sent: int = 0
    connecting_statuses_sent: int = 0
    statuses_answered: int = 0
    status_timeouts: int = 0
    commands_received: int = 0
    command_responses_sent: int = 0
    notifications: int = 0
    malformed: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    latencies_s: array[float] = field(default_factory=new_samples)
    connect_durations_s: array[float] = field(default_factory=new_samples)

    @property
    def reconnects(self) -> int:
        """Connect sequences started after the first one (after a drop or a failed attempt)."""
        return max(0, self.connect_attempts - 1)

    @property
    def unanswered(self) -> int:
        return self.statuses_sent - self.statuses_answered
