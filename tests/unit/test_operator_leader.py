"""Leader election over an in-memory Lease: take a free or released Lease, wait while another
process renews it, take it over once it has gone unrenewed for its duration (on the waiting
process's own clock), lose it when renewing fails past the deadline."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

import pytest
from external_server_operator.errors import KubeError
from external_server_operator.leader import LeaderElector, LeaseConfig, LeaseLost


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeaseStore:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = itertools.count(1)
        self.down = False

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.down:
            raise KubeError(503, "GET", "/lease", "unavailable")
        return copy.deepcopy(self.lease)

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise KubeError(409, "POST", "/lease", "exists")
        self.lease = copy.deepcopy(dict(obj))
        self.lease["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(self.lease)

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        assert self.lease is not None
        if obj["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise KubeError(409, "PUT", "/lease", "conflict")
        self.lease = copy.deepcopy(dict(obj))
        self.lease["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(self.lease)

    def holder(self) -> str:
        return str((self.lease or {}).get("spec", {}).get("holderIdentity") or "")


def elector(store: LeaseStore, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(store, LeaseConfig("ns", "lease", identity), clock)


async def test_first_takes_second_waits_until_released() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 5
    assert await a.try_acquire_or_renew()  # renewed
    assert not await b.try_acquire_or_renew()
    a.leading = True
    await a.release()
    assert store.holder() == ""
    assert await b.try_acquire_or_renew()
    assert store.holder() == "b"
    assert store.lease is not None and store.lease["spec"]["leaseTransitions"] == 1


async def test_an_unrenewed_lease_is_taken_over_after_its_duration_on_the_waiters_clock() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()  # b starts timing now
    clock.now += 14
    assert not await b.try_acquire_or_renew()
    clock.now += 1.5  # 15.5 s without a renewal: a is gone
    assert await b.try_acquire_or_renew()
    assert store.holder() == "b"
    # a notices at its next renewal that it lost the Lease
    a.leading = True
    with pytest.raises(LeaseLost, match="now held by b"):
        await a.hold()


async def test_renewal_failing_past_the_deadline_loses_the_lease() -> None:
    store, clock = LeaseStore(), Clock()
    a = elector(store, clock, "a")
    a.config = LeaseConfig("ns", "lease", "a", retry_period=0)
    await a.acquire()
    store.down = True
    clock.now += 11  # past renew_deadline (10 s) since the last renewal
    with pytest.raises(LeaseLost, match="not renewed"):
        await a.hold()
    await a.release()  # not leading any more: nothing to release, no error
