"""A small asyncio JSON client for the few Kubernetes API calls the operator makes.

Objects are plain dicts exactly as the API server serves them (camelCase), which is what
the pure builders produce and what ``render.is_subset`` compares. Credentials come from
the kubernetes package's config loaders (in-cluster service account, else kubeconfig).
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from .errors import KubeError
from .render import FIELD_MANAGER

__all__ = ["KubeApi", "KubeError", "fetch_json"]

#: kind → (API prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("api/v1", "configmaps"),
    "Service": ("api/v1", "services"),
    "Secret": ("api/v1", "secrets"),
    "Pod": ("api/v1", "pods"),
    "Event": ("api/v1", "events"),
    "PodTemplate": ("api/v1", "podtemplates"),
    "Deployment": ("apis/apps/v1", "deployments"),
    "StatefulSet": ("apis/apps/v1", "statefulsets"),
    "Lease": ("apis/coordination.k8s.io/v1", "leases"),
    "ExternalServer": ("apis/fleetprotocol.io/v1alpha1", "externalservers"),
}


@dataclass
class _Auth:
    host: str
    ssl: ssl.SSLContext | bool
    configuration: Any

    def headers(self) -> dict[str, str]:
        token = self.configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        return {"Authorization": token} if token else {}


def _load_auth() -> _Auth:
    cfg = k8s_client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        k8s_config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    ctx: ssl.SSLContext | bool
    if cfg.host.startswith("https"):
        if cfg.verify_ssl:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    else:
        ctx = False
    return _Auth(host=cfg.host.rstrip("/"), ssl=ctx, configuration=cfg)


def object_path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    path = f"/{prefix}/namespaces/{quote(namespace)}/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


class KubeApi:
    """The operator's API calls. Create with ``await KubeApi.connect()``; ``close()`` at exit."""

    def __init__(self, auth: _Auth, session: aiohttp.ClientSession) -> None:
        self._auth = auth
        self._session = session

    @classmethod
    async def connect(cls) -> KubeApi:
        auth = _load_auth()
        timeout = aiohttp.ClientTimeout(total=30)
        return cls(auth, aiohttp.ClientSession(timeout=timeout))

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        allow_404: bool = False,
    ) -> Any:
        headers = {"Accept": "application/json", **self._auth.headers()}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with self._session.request(
            method, self._auth.host + path, params=params, data=data, headers=headers, ssl=self._auth.ssl
        ) as resp:
            text = await resp.text()
            if resp.status == 404 and allow_404:
                return None
            if resp.status >= 400:
                raise KubeError(resp.status, method, path, text)
            return json.loads(text) if text else None

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._request(
            "GET", object_path(kind, namespace, name), allow_404=True
        )
        return result

    async def list(
        self, kind: str, namespace: str, label_selector: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(label_selector.items()))
        result = await self._request("GET", object_path(kind, namespace), params={"labelSelector": selector})
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's field manager (taking over conflicts)."""
        meta = obj["metadata"]
        result: dict[str, Any] = await self._request(
            "PATCH",
            object_path(str(obj["kind"]), meta["namespace"], meta["name"]),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        return result

    async def delete(
        self, kind: str, namespace: str, name: str, uid: str | None = None, propagation: str = "Background"
    ) -> None:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": propagation,
        }
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        await self._request("DELETE", object_path(kind, namespace, name), body=body, allow_404=True)

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self._request(
            "PATCH",
            object_path(kind, namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        result: dict[str, Any] = await self._request(
            "POST", object_path(str(obj["kind"]), meta["namespace"]), body=obj
        )
        return result

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: an update that fails with 409 when metadata.resourceVersion is no longer current."""
        meta = obj["metadata"]
        result: dict[str, Any] = await self._request(
            "PUT", object_path(str(obj["kind"]), meta["namespace"], meta["name"]), body=obj
        )
        return result

    async def validate_pod_template(self, namespace: str, name: str, template: Mapping[str, Any]) -> None:
        """Server-side dry run of a PodTemplate holding ``template``: raises the API server's
        validation error (KubeError 422) for a pod spec it would refuse; stores nothing."""
        body = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"generateName": f"{name}-", "namespace": namespace},
            "template": template,
        }
        await self._request(
            "POST", object_path("PodTemplate", namespace), params={"dryRun": "All"}, body=body
        )


async def fetch_json(url: str, timeout_s: float) -> Any | None:
    """GET a JSON document; None when unreachable, failing or not JSON."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(url, headers={"Accept": "application/json"}) as resp,
        ):
            if resp.status != 200:
                return None
            return json.loads(await resp.text())
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
        return None
