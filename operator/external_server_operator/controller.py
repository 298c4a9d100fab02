"""The reconcile loop of one ExternalServer: read, validate, render, apply on diff, report.

Level-based and idempotent: every call reads the current object, renders the children
it should have, applies only those whose live version differs, deletes shards that are no
longer wanted, and writes the status only when it changed. The kopf handlers (create,
update, resume, StatefulSet events) and the periodic status refresh all call ``reconcile``;
calls for the same object are serialized.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from .claims import Claimant, Lookup, claim_keys, claimant, claimed_elsewhere, describe
from .errors import KubeError
from .models import GROUP, KIND, VERSION
from .render import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    SHARD_LABEL,
    Owner,
    configmap_name,
    is_subset,
    referenced_secrets,
    render_children,
    selector_labels,
    workload_name,
)
from .settings import Settings
from .status import (
    CARS_EXCLUSIVE,
    CONFIG_VALID,
    PROGRESSING,
    CarReport,
    Observation,
    ShardState,
    compute_status,
    condition,
    now_rfc3339,
    parse_status,
    parse_status_document,
    shard_state,
    status_body,
)
from .validation import Problem, parse_spec, summarize, validate_spec

log = logging.getLogger("external_server_operator")

#: GET a URL, return the decoded JSON or None. Injectable so tests can feed documents.
FetchStatus = Callable[[str], Awaitable[Any | None]]


class Api(Protocol):
    """The subset of ``kube.KubeApi`` the reconciler uses (tests may fake it)."""

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def list(
        self, kind: str, namespace: str, label_selector: Mapping[str, str]
    ) -> list[dict[str, Any]]: ...
    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def delete(
        self, kind: str, namespace: str, name: str, uid: str | None = None, propagation: str = "Background"
    ) -> None: ...
    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def validate_pod_template(self, namespace: str, name: str, template: Mapping[str, Any]) -> None: ...


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _shard(obj: Mapping[str, Any]) -> int | None:
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(SHARD_LABEL)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class Reconciler:
    def __init__(
        self, api: Api, settings: Settings, fetch_status: FetchStatus, claims: Lookup | None = None
    ) -> None:
        self.api = api
        self.settings = settings
        self.fetch_status = fetch_status
        #: Who else lists a car (the kopf index of every watched ExternalServer's cars).
        self.claims = claims
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._instance = socket.gethostname()

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        lock = self._locks.get((namespace, name))
        if lock is None:
            lock = asyncio.Lock()
            self._locks[(namespace, name)] = lock
        return lock

    async def reconcile(self, namespace: str, name: str) -> bool:
        """One reconcile; False when the resource is gone or being deleted."""
        lock = self._lock(namespace, name)
        async with lock:
            return await self._reconcile(namespace, name)

    # --- the steps ---------------------------------------------------------------------------

    async def _reconcile(self, namespace: str, name: str) -> bool:
        obj = await self.api.get(KIND, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return False
        meta = obj["metadata"]
        generation = int(meta.get("generation") or 0)
        owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
        previous = parse_status(obj.get("status"))
        first_look = previous.observed_generation != generation

        spec, problems = parse_spec(obj.get("spec") or {})
        if spec is not None:
            problems = validate_spec(name, spec)
        owned = {
            kind: [
                o
                for o in await self.api.list(kind, namespace, self._selector(name))
                if _owned_by(o, owner.uid)
            ]
            for kind in ("StatefulSet", "ConfigMap", "Deployment")
        }

        invalid: tuple[str, str] | None = None
        apply_error: str | None = None
        claimed: dict[str, Claimant] | None = None
        if spec is None or problems:
            invalid = summarize(problems)
            before = condition(previous, CONFIG_VALID)
            if first_look or before is None or before.status != "False" or before.message != invalid[1]:
                await self._event(obj, "Warning", "ConfigInvalid", f"{invalid[0]}: {invalid[1]}")
                log.warning("%s/%s: invalid spec, nothing changed: %s", namespace, name, invalid[1])
            # Leave the running shards alone; report what runs.
            assignment = {c.name: c.shard for c in previous.car_statuses}
            live = {s: d for d in owned["StatefulSet"] if (s := _shard(d)) is not None}
            shards = [shard_state(s, d) for s, d in sorted(live.items())]
        else:
            claimed = claimed_elsewhere(claimant(meta), claim_keys(obj.get("spec") or {}), self.claims)
            if claimed:
                before = condition(previous, CARS_EXCLUSIVE)
                message = describe(claimed)
                if first_look or before is None or before.message != message:
                    await self._event(obj, "Warning", "CarClaimed", message)
                    log.warning("%s/%s: %s", namespace, name, message)
                spec = spec.model_copy(update={"cars": [c for c in spec.cars if c.name not in claimed]})
            secrets = referenced_secrets(spec)
            versions = await self._secret_versions(namespace, secrets)
            missing = [s for s in secrets if not versions[s]]
            if missing and first_look:
                await self._event(
                    obj, "Warning", "SecretNotFound", f"referenced Secrets do not exist (yet): {missing}"
                )
            children = render_children(owner, spec, versions, self.settings)
            live_workloads: dict[int, dict[str, Any]] = {}
            try:
                # Deployments of an older operator version: gone (with their pods) before a
                # StatefulSet of the same shard starts a pod.
                retiring = await self._retire_deployments(owner, owned["Deployment"])
                for child in children.objects():
                    if child["kind"] == "StatefulSet" and child["metadata"]["name"] in retiring:
                        continue
                    applied = await self._ensure(child)
                    shard = _shard(child)
                    if child["kind"] == "StatefulSet" and shard is not None:
                        live_workloads[shard] = applied
                await self._prune(owner, owned, set(children.configs))
            except KubeError as exc:
                if not exc.rejected:
                    raise  # transient: kopf retries
                apply_error = str(exc)
                before = condition(previous, PROGRESSING)
                if first_look or before is None or before.message != apply_error:
                    await self._event(obj, "Warning", "ApplyFailed", apply_error)
                    log.warning("%s/%s: the API server rejected a child: %s", namespace, name, apply_error)
                live_workloads.update(
                    {
                        s: d
                        for d in owned["StatefulSet"]
                        if (s := _shard(d)) is not None and s not in live_workloads
                    }
                )
            assignment = children.assignment
            shards = [shard_state(s, live_workloads.get(s)) for s in sorted(children.configs)]

        reports = await self._collect_reports(namespace, name, owner.uid, shards)
        new = compute_status(
            previous,
            Observation(
                generation=generation,
                invalid=invalid,
                assignment=assignment,
                shards=shards,
                reports=reports,
                apply_error=apply_error,
                claimed={car: str(c) for car, c in claimed.items()} if claimed is not None else None,
            ),
            now_rfc3339(),
        )
        body = status_body(new)
        if obj.get("status") is None or body != status_body(previous):
            await self.api.patch_status(KIND, namespace, name, body)
        return True

    @staticmethod
    def _selector(name: str) -> dict[str, str]:
        return {**selector_labels(name), LABEL_MANAGED_BY: "external-server-operator"}

    async def _secret_versions(self, namespace: str, names: list[str]) -> dict[str, str]:
        async def one(secret: str) -> str:
            obj = await self.api.get("Secret", namespace, secret)
            return str(obj["metadata"].get("resourceVersion", "")) if obj is not None else ""

        values = await asyncio.gather(*(one(s) for s in names))
        return dict(zip(names, values, strict=True))

    async def _ensure(self, desired: Mapping[str, Any]) -> dict[str, Any]:
        """The live object, applied first when it differs from ``desired``."""
        meta = desired["metadata"]
        live = await self.api.get(str(desired["kind"]), meta["namespace"], meta["name"])
        if live is not None and is_subset(desired, live):
            return live
        if desired["kind"] == "StatefulSet":
            # The API server does not validate a StatefulSet's pod template (1.20): a bad one
            # would only show as pods that are never created. Validate it as a PodTemplate
            # (server-side dry run, nothing stored) so it is rejected here, like a Deployment's.
            await self.api.validate_pod_template(meta["namespace"], meta["name"], desired["spec"]["template"])
        log.info("%s %s/%s: applying", desired["kind"], meta["namespace"], meta["name"])
        return await self.api.apply(desired)

    async def _retire_deployments(self, owner: Owner, deployments: list[dict[str, Any]]) -> set[str]:
        """Delete the shard Deployments an older operator version made (foreground: the
        Deployment object stays until its ReplicaSets and pods are gone). Returns the names
        still present: their shards get a StatefulSet only once they are gone, so the old
        and the new server never run at the same time."""
        present: set[str] = set()
        for d in deployments:
            m = d["metadata"]
            present.add(m["name"])
            if not m.get("deletionTimestamp"):
                log.info(
                    "Deployment %s/%s: replaced by a StatefulSet, deleting it and its pod first",
                    owner.namespace,
                    m["name"],
                )
                await self.api.delete(
                    "Deployment", owner.namespace, m["name"], uid=m.get("uid"), propagation="Foreground"
                )
        return present

    async def _prune(self, owner: Owner, owned: Mapping[str, list[dict[str, Any]]], shards: set[int]) -> None:
        """Delete the StatefulSets and ConfigMaps of shards that no longer have cars."""
        wanted = {
            "StatefulSet": {workload_name(owner.name, s) for s in shards},
            "ConfigMap": {configmap_name(owner.name, s) for s in shards},
        }
        for kind, objs in owned.items():
            if kind not in wanted:
                continue
            for o in objs:
                m = o["metadata"]
                if m["name"] not in wanted[kind]:
                    log.info("%s %s/%s: shard no longer wanted, deleting", kind, owner.namespace, m["name"])
                    await self.api.delete(kind, owner.namespace, m["name"], uid=m.get("uid"))

    async def _collect_reports(
        self, namespace: str, name: str, uid: str, shards: list[ShardState]
    ) -> dict[int, Mapping[str, CarReport] | None]:
        """Each shard's parsed /status, from its running pod (None: no answer)."""
        pods = await self.api.list("Pod", namespace, {LABEL_NAME: "external-server", LABEL_INSTANCE: name})
        by_shard: dict[int, str] = {}
        for pod in pods:
            shard = _shard(pod)
            st = pod.get("status") or {}
            if shard is None or pod["metadata"].get("deletionTimestamp"):
                continue
            if st.get("phase") == "Running" and st.get("podIP"):
                by_shard.setdefault(shard, str(st["podIP"]))

        async def one(shard: int) -> Mapping[str, CarReport] | None:
            ip = by_shard.get(shard)
            if ip is None:
                return None
            host = f"[{ip}]" if ":" in ip else ip
            doc = await self.fetch_status(f"http://{host}:{self.settings.status_port}/status")
            return parse_status_document(doc) if doc is not None else None

        indices = [s.shard for s in shards]
        results = await asyncio.gather(*(one(s) for s in indices))
        return dict(zip(indices, results, strict=True))

    async def _event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        now = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "external-server-operator"},
            "reportingComponent": "external-server-operator",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.create(event)
        except Exception:  # an Event is best effort; never fail the reconcile for it
            log.exception("could not post Event %s for %s/%s", reason, meta["namespace"], meta["name"])


__all__ = ["FetchStatus", "Problem", "Reconciler"]
