"""Leader election: one active operator per Lease (coordination.k8s.io/v1), the others wait.

Every operator process (a second replica, a second release, a local debug run) that uses the
same Lease (namespace and name) competes for it; only its holder runs the kopf handlers.
The holder renews the Lease every ``retry_period``; a waiting process takes it over when the
holder released it (a clean stop) or when the holder has not renewed it for
``lease_duration`` as measured on the waiting process's own clock (no clock-skew assumption:
it times how long the Lease stayed unchanged, the way client-go's leader election does). A
holder that cannot renew within ``renew_deadline`` (< ``lease_duration``) stops acting before
anyone else may start (docs/operator.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import KubeError

log = logging.getLogger("external_server_operator.leader")

KIND = "Lease"


class LeaseApi(Protocol):
    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...


class LeaseLost(Exception):
    """The Lease could not be renewed in time, or another process holds it now."""


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def micro_time(now: dt.datetime | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self, api: LeaseApi, config: LeaseConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        #: The Lease as last seen (holder, renewTime, resourceVersion) and when it was first seen so.
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0
        self._last_renewal = 0.0
        self._waiting_for: str | None = None
        self.leading = False

    # --- one attempt --------------------------------------------------------------------------

    def _observe(self, lease: Mapping[str, Any]) -> None:
        spec = lease.get("spec") or {}
        record = (
            str(spec.get("holderIdentity") or ""),
            str(spec.get("renewTime") or ""),
            str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        )
        if record != self._observed:
            self._observed = record
            self._observed_at = self.clock()

    def _body(self, spec: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": KIND,
            "metadata": dict(metadata),
            "spec": dict(spec),
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this process holds the Lease afterwards."""
        cfg = self.config
        now = micro_time()
        lease = await self.api.get(KIND, cfg.namespace, cfg.name)
        if lease is None:
            spec: dict[str, Any] = {
                "holderIdentity": cfg.identity,
                "leaseDurationSeconds": round(cfg.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            }
            try:
                created = await self.api.create(
                    self._body(spec, {"name": cfg.name, "namespace": cfg.namespace})
                )
            except KubeError as exc:
                if exc.status == 409:  # another process created it first
                    return False
                raise
            self._observe(created)
            return True

        self._observe(lease)
        spec = dict(lease.get("spec") or {})
        holder = str(spec.get("holderIdentity") or "")
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
        if holder and holder != cfg.identity and self.clock() < self._observed_at + duration:
            if holder != self._waiting_for:
                self._waiting_for = holder
                log.info("Lease %s/%s is held by %s: waiting", cfg.namespace, cfg.name, holder)
            return False
        if holder != cfg.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec["holderIdentity"] = cfg.identity
        spec["leaseDurationSeconds"] = round(cfg.lease_duration)
        spec["renewTime"] = now
        meta = lease["metadata"]
        body = self._body(
            spec,
            {"name": cfg.name, "namespace": cfg.namespace, "resourceVersion": meta.get("resourceVersion")},
        )
        try:
            updated = await self.api.replace(body)
        except KubeError as exc:
            if exc.status == 409:  # changed since read: someone else renewed or took it
                return False
            raise
        self._observe(updated)
        return True

    # --- the loops -----------------------------------------------------------------------------

    async def _attempt(self) -> bool:
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), timeout=self.config.renew_deadline / 2)
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("Lease %s/%s: %s", self.config.namespace, self.config.name, exc)
            return False

    async def acquire(self) -> None:
        """Return once this process holds the Lease."""
        while True:
            if await self._attempt():
                break
            await asyncio.sleep(self.config.retry_period)
        self.leading = True
        self._last_renewal = self.clock()
        log.info(
            "Lease %s/%s acquired: leading as %s",
            self.config.namespace,
            self.config.name,
            self.config.identity,
        )

    async def hold(self) -> None:
        """Renew the Lease until cancelled; raise LeaseLost when that fails for too long."""
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.retry_period)
            if await self._attempt():
                self._last_renewal = self.clock()
                continue
            holder = self._observed[0] if self._observed else ""
            if holder and holder != cfg.identity:
                self.leading = False
                raise LeaseLost(f"Lease {cfg.namespace}/{cfg.name} is now held by {holder}")
            if self.clock() > self._last_renewal + cfg.renew_deadline:
                self.leading = False
                raise LeaseLost(f"Lease {cfg.namespace}/{cfg.name} not renewed for {cfg.renew_deadline:g}s")

    async def release(self) -> None:
        """Give the Lease up at a clean stop, so a waiting process takes over at once."""
        if not self.leading:
            return
        self.leading = False
        cfg = self.config
        try:
            lease = await asyncio.wait_for(self.api.get(KIND, cfg.namespace, cfg.name), timeout=5)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != cfg.identity:
                return
            spec = dict(lease["spec"])
            spec["holderIdentity"] = ""
            spec["leaseDurationSeconds"] = 1
            spec["renewTime"] = micro_time()
            meta = {"name": cfg.name, "namespace": cfg.namespace}
            meta["resourceVersion"] = lease["metadata"].get("resourceVersion")
            await asyncio.wait_for(self.api.replace(self._body(spec, meta)), timeout=5)
            log.info("Lease %s/%s released", cfg.namespace, cfg.name)
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("Lease %s/%s not released (it expires on its own): %s", cfg.namespace, cfg.name, exc)
