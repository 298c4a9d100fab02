"""kopf handlers: thin wrappers around ``controller.Reconciler``.

Importing this module registers the handlers with kopf's default registry.
"""

from __future__ import annotations

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


def reconciler() -> Reconciler:
    if STATE.reconciler is None:
        raise kopf.TemporaryError("operator is still starting", delay=1)
    return STATE.reconciler


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    # Keep kopf's bookkeeping in annotations under our own prefix: the CRD's structural
    # schema would prune a status.kopf field.
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


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.status_interval, initial_delay=SETTINGS.status_interval)
async def refresh(*, namespace: str | None, name: str, **_: Any) -> None:
    """Periodically: pods' /status into carStatuses, shard readiness, drift repair,
    Secret rotation (a changed resourceVersion changes the checksum)."""
    if namespace is not None:
        await reconciler().reconcile(namespace, name)


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
