"""kopf handlers: thin wrappers around ``controller.Reconciler``.

Importing this module registers the handlers with kopf's default registry.

No handler here needs a finalizer, so kopf puts none on an ExternalServer: its children go
by garbage collection (owner references), and deleting an ExternalServer or its namespace
completes whether an operator runs or not (docs/operator.md). The periodic status refresh is
therefore not a kopf timer (kopf keeps a finalizer on every object with a timer or daemon)
but one task per watched ExternalServer, started and stopped from the watch events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from .claims import Claimant, ClaimKey, index_entry
from .controller import Reconciler
from .kube import KubeApi, fetch_json
from .models import GROUP, PLURAL, VERSION
from .render import FIELD_MANAGER, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME
from .settings import Settings

SETTINGS = Settings.from_env()


class _State:
    reconciler: Reconciler | None = None
    api: KubeApi | None = None


STATE = _State()
log = logging.getLogger("external_server_operator")


class Refresher:
    """One refresh loop per ExternalServer: every ``interval`` seconds a reconcile (pods'
    /status into the status, readiness, drift repair, Secret rotation)."""

    def __init__(self) -> None:
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def ensure(self, namespace: str, name: str) -> None:
        task = self.tasks.get((namespace, name))
        if task is None or task.done():
            self.tasks[(namespace, name)] = asyncio.create_task(
                self._loop(namespace, name), name=f"refresh {namespace}/{name}"
            )

    def forget(self, namespace: str, name: str) -> None:
        task = self.tasks.pop((namespace, name), None)
        if task is not None:
            task.cancel()

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    async def _loop(self, namespace: str, name: str) -> None:
        while True:
            await asyncio.sleep(SETTINGS.status_interval)
            try:
                if not await reconciler().reconcile(namespace, name):
                    break  # gone or being deleted
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round retries; one line, no traceback
                log.warning("%s/%s: status refresh failed, retrying in %gs: %s", namespace, name,
                            SETTINGS.status_interval, exc)  # fmt: skip
        current = asyncio.current_task()
        if self.tasks.get((namespace, name)) is current:
            del self.tasks[(namespace, name)]


REFRESH = Refresher()


def reconciler() -> Reconciler:
    if STATE.reconciler is None:
        raise kopf.TemporaryError("operator is still starting", delay=1)
    return STATE.reconciler


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    # Keep kopf's bookkeeping in annotations under our own prefix: the CRD's structural
    # schema would prune a status.kopf field. No handler requires a finalizer; naming the one
    # earlier versions added (for their status timer) makes kopf remove it where it is left.
    settings.persistence.finalizer = f"operator.{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"operator.{GROUP}")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=f"operator.{GROUP}", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = FIELD_MANAGER
    settings.watching.server_timeout = 300
    # Watch only the StatefulSets this operator made (server-side filter).
    settings.watching.label_selectors["apps", "statefulsets"] = f"{LABEL_MANAGED_BY}={FIELD_MANAGER}"
    STATE.api = await KubeApi.connect()
    timeout = SETTINGS.status_timeout

    async def fetch(url: str) -> Any | None:
        return await fetch_json(url, timeout)

    index: kopf.Index[ClaimKey, Claimant] = kwargs["car_claims"]

    def claims(key: ClaimKey) -> list[Claimant]:
        return list(index.get(key, ()))

    STATE.reconciler = Reconciler(STATE.api, SETTINGS, fetch, claims)


@kopf.index(GROUP, VERSION, PLURAL)
def car_claims(*, meta: Mapping[str, Any], spec: Mapping[str, Any], **_: Any) -> dict[ClaimKey, Claimant]:
    """Every watched ExternalServer's cars (see claims.py); kopf fills it from the watch before
    any handler runs, so the first reconcile after a start already knows every claim."""
    return index_entry(meta, spec)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    REFRESH.stop()
    if STATE.api is not None:
        await STATE.api.close()
    STATE.api = None
    STATE.reconciler = None


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile(*, namespace: str | None, name: str, **_: Any) -> None:
    """Create, update and operator restart: one idempotent reconcile."""
    if namespace is not None:
        await reconciler().reconcile(namespace, name)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def watched(
    *, type: str | None, namespace: str | None, name: str, meta: Mapping[str, Any], **_: Any
) -> None:
    """Every ExternalServer the watch reports gets a refresh loop (pods' /status into
    carStatuses, shard readiness, drift repair, Secret rotation); a deleted one loses it."""
    if namespace is None:
        return
    if type == "DELETED" or meta.get("deletionTimestamp"):
        REFRESH.forget(namespace, name)
    else:
        REFRESH.ensure(namespace, name)


@kopf.on.event(
    "apps",
    "v1",
    "statefulsets",
    labels={LABEL_NAME: "external-server", LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_INSTANCE: kopf.PRESENT},
)
async def shard_changed(
    *, type: str | None, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> None:
    """A shard StatefulSet changed (readiness, deletion): refresh its owner right away."""
    if type is None or namespace is None:  # the initial listing: resume covers it
        return
    await reconciler().reconcile(namespace, labels[LABEL_INSTANCE])
