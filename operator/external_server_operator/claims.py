"""Which ExternalServer serves a car that several of them list (docs/operator.md).

A car is identified on the wire by its broker, company and name (its topics are
``<company>/<car>/...`` on one broker), so two ExternalServers listing the same
(broker host, broker port, company, car) would run two sessions for one car. The earliest
one (by creationTimestamp, then namespace and name) serves it; every later one leaves the
car out of its configuration and reports it (condition ``CarsExclusive=False`` and an
Event). The claims of every watched ExternalServer are kept in memory (a kopf index, filled
from the watch before any handler runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_PORT = 1883


@dataclass(frozen=True, order=True)
class Claimant:
    """An ExternalServer that lists a car; ordering = who came first."""

    created: str  # metadata.creationTimestamp, RFC 3339 UTC: sorts chronologically as text
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


#: (broker host, broker port, company, car name)
ClaimKey = tuple[str, int, str, str]

#: The claimants of one key (a kopf index lookup).
Lookup = Callable[[ClaimKey], Iterable[Claimant]]


def claim_keys(spec: Mapping[str, Any]) -> list[ClaimKey]:
    """The cars a raw spec lists, as claim keys; whatever is malformed is left out."""
    broker = spec.get("broker")
    company = spec.get("company")
    cars = spec.get("cars")
    if not isinstance(broker, Mapping) or not isinstance(company, str) or not isinstance(cars, list):
        return []
    host = broker.get("host")
    port = broker.get("port", DEFAULT_PORT)
    if not isinstance(host, str) or not isinstance(port, int):
        return []
    names = {c.get("name") for c in cars if isinstance(c, Mapping)}
    return [
        (host.lower().rstrip("."), port, company, n) for n in sorted(n for n in names if isinstance(n, str))
    ]


def claimant(meta: Mapping[str, Any]) -> Claimant:
    return Claimant(
        created=str(meta.get("creationTimestamp") or ""),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
    )


def index_entry(meta: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[ClaimKey, Claimant]:
    """What one ExternalServer contributes to the index: each of its cars → itself."""
    me = claimant(meta)
    return dict.fromkeys(claim_keys(spec), me)


def claimed_elsewhere(me: Claimant, keys: Iterable[ClaimKey], lookup: Lookup | None) -> dict[str, Claimant]:
    """Car name → the earlier ExternalServer that serves it, for the cars ``me`` must leave out."""
    out: dict[str, Claimant] = {}
    if lookup is None:
        return out
    for key in keys:
        earlier = [c for c in lookup(key) if (c.namespace, c.name) != (me.namespace, me.name) and c < me]
        if earlier:
            out[key[3]] = min(earlier)
    return out


def describe(claimed: Mapping[str, Claimant] | Mapping[str, str], limit: int = 20) -> str:
    """The condition message for the left-out cars (at most ``limit`` of them named)."""
    items = sorted((car, str(owner)) for car, owner in claimed.items())
    shown = ", ".join(f"{car} (served by {owner})" for car, owner in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return (
        f"{len(items)} car(s) also listed by an ExternalServer created earlier for the same broker and "
        f"company are not served here: {shown}{more}"
    )
