"""The server's own status latency histogram, read from its Prometheus ``/metrics`` text."""

from __future__ import annotations

import math
import re

STATUS_LATENCY_PREFIX = "fleet_status_response_latency"
_BUCKET = re.compile(r"^(\w+)_bucket\{([^}]*)\}\s+([0-9.eE+-]+)")
_LE = re.compile(r'le="([^"]+)"')
_SUM = re.compile(r"^(\w+)_sum(?:\{[^}]*\})?\s+([0-9.eE+-]+)")

Buckets = dict[float, float]
"""Cumulative count per upper bound (``+Inf`` included), summed over label sets; the key ``-1``
holds the sum of all observations (milliseconds)."""
SUM_KEY = -1.0


def status_latency_buckets(text: str) -> Buckets:
    """Cumulative buckets of the status→StatusResponse histogram (milliseconds)."""
    buckets: Buckets = {}
    for line in text.splitlines():
        total = _SUM.match(line)
        if total is not None and total.group(1).startswith(STATUS_LATENCY_PREFIX):
            buckets[SUM_KEY] = buckets.get(SUM_KEY, 0.0) + float(total.group(2))
            continue
        match = _BUCKET.match(line)
        if match is None or not match.group(1).startswith(STATUS_LATENCY_PREFIX):
            continue
        le = _LE.search(match.group(2))
        if le is None:
            continue
        bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
        buckets[bound] = buckets.get(bound, 0.0) + float(match.group(3))
    return buckets


def delta(before: Buckets, after: Buckets) -> Buckets:
    return {bound: after[bound] - before.get(bound, 0.0) for bound in after}


def quantile_bound(buckets: Buckets, q: float) -> float | None:
    """Upper bound (ms) of the bucket holding quantile ``q`` (0..1); None without observations."""
    bounds = sorted(bound for bound in buckets if bound != SUM_KEY)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    for bound in bounds:
        if buckets[bound] >= rank:
            return bound
    return math.inf


def summary(buckets: Buckets) -> dict[str, float | None]:
    """Count, exact mean and bucket upper bounds of p50/p99/p99.9 (what the server itself measured)."""
    bounds = sorted(bound for bound in buckets if bound != SUM_KEY)
    count = buckets[bounds[-1]] if bounds else 0.0
    return {
        "count": count,
        "mean_ms": buckets.get(SUM_KEY, 0.0) / count if count else None,
        "p50_le_ms": quantile_bound(buckets, 0.5),
        "p99_le_ms": quantile_bound(buckets, 0.99),
        "p999_le_ms": quantile_bound(buckets, 0.999),
    }
