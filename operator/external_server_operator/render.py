"""Pure builders: ExternalServer spec → server config JSON → ConfigMap, StatefulSet, Service.

No I/O here: everything the builders need from the cluster (the owner's uid, the
referenced Secrets' resourceVersions) is passed in, and the result is plain dicts ready
to be applied. The handlers compare these against the live objects and apply only on a
difference, so rendering must be deterministic: same input, byte-identical output.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .models import GROUP, KIND, VERSION, Car, ExternalServerSpec, Module
from .settings import HTTP_PORT, Settings

CONFIG_DIR = "/etc/external-server"
CONFIG_FILE = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
TLS_DIR = "/var/run/external-server/tls"
CONTAINER_NAME = "external-server"
FIELD_MANAGER = "external-server-operator"
RUN_AS_USER = 10001

CHECKSUM_ANNOTATION = f"{GROUP}/config-checksum"
SHARD_LABEL = f"{GROUP}/shard"
#: Environment variable the server takes its MQTT client id from (server/external_server/app.py).
CLIENT_ID_ENV = "FLEET_MQTT_CLIENT_ID"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
APP_NAME = "external-server"


# --- naming and sharding ---------------------------------------------------------------------


def shard_of(car_name: str, shards: int) -> int:
    """Stable shard of a car: sha256 of the name modulo the shard count.

    Independent of process, platform and Python's hash randomization, so every operator
    replica and every restart assigns a car to the same shard."""
    digest = hashlib.sha256(car_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def assign_shards(spec: ExternalServerSpec) -> dict[int, list[Car]]:
    """Cars per non-empty shard, shards ascending, cars in spec order."""
    by_shard: dict[int, list[Car]] = {}
    for car in spec.cars:
        by_shard.setdefault(shard_of(car.name, spec.shards), []).append(car)
    return dict(sorted(by_shard.items()))


def workload_name(name: str, shard: int) -> str:
    """The shard's StatefulSet (and, before, its Deployment); its one pod is ``<this>-0``."""
    return f"{name}-shard-{shard}"


#: The MQTT 3.1.1 specification obliges every broker to accept client ids of 1 to 23 bytes
#: (longer ones only "may" be accepted), so the ids stay within that.
MAX_CLIENT_ID = 23


def client_id(namespace: str, name: str, shard: int) -> str:
    """The shard's MQTT client id, unique per ExternalServer (namespace and name) and shard.

    ``es-<namespace>-<name>-<shard>`` when that fits in 23 bytes; otherwise a truncated
    ``es-<namespace>-<name>`` followed by 8 hex digits of sha256("<namespace>/<name>") and the
    shard, so two ExternalServers never share an id (a broker drops the older connection of
    a reused id) and any MQTT 3.1.1 broker accepts it (docs/operator.md)."""
    full = f"es-{namespace}-{name}-{shard}"
    if len(full.encode()) <= MAX_CLIENT_ID:
        return full
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]
    tail = f"-{digest}-{shard}"
    return f"es-{namespace}-{name}"[: MAX_CLIENT_ID - len(tail)] + tail


def configmap_name(name: str, shard: int) -> str:
    return f"{name}-shard-{shard}-config"


def service_name(name: str) -> str:
    return name


def selector_labels(name: str, shard: int | None = None) -> dict[str, str]:
    labels = {LABEL_NAME: APP_NAME, LABEL_INSTANCE: name}
    if shard is not None:
        labels[SHARD_LABEL] = str(shard)
    return labels


def labels(name: str, shard: int | None = None) -> dict[str, str]:
    return {
        **selector_labels(name, shard),
        LABEL_COMPONENT: "server",
        LABEL_PART_OF: "fleet-external-server",
        LABEL_MANAGED_BY: FIELD_MANAGER,
    }


# --- secrets ---------------------------------------------------------------------------------

_NON_ENV = re.compile(r"[^A-Z0-9]+")


def secret_env_name(secret: str, key: str) -> str:
    """Environment variable carrying ``key`` of Secret ``secret`` into the server pod.

    Readable prefix plus a hash of the exact pair, so distinct pairs never collide after
    the upper-casing and character replacement."""
    readable = _NON_ENV.sub("_", f"{secret}_{key}".upper()).strip("_")[:48]
    digest = hashlib.sha256(f"{secret}\0{key}".encode()).hexdigest()[:8].upper()
    return f"FLEET_SECRET_{readable}_{digest}"


def env_reference(env_name: str) -> str:
    """The config-file value the server resolves from its environment."""
    return "${env:" + env_name + "}"


def modules_of_cars(spec: ExternalServerSpec, cars: Sequence[Car]) -> list[Module]:
    return [*spec.modules, *(m for car in cars for m in car.modules)]


def secret_refs(modules: Sequence[Module]) -> list[tuple[str, str]]:
    """(secret, key) pairs the modules reference, sorted, without duplicates."""
    refs = {(s.secret_key_ref.name, s.secret_key_ref.key) for m in modules for s in m.config_from_secret}
    return sorted(refs)


def referenced_secrets(spec: ExternalServerSpec) -> list[str]:
    """Names of every Secret the resource references (module values and broker TLS)."""
    names = {secret for secret, _ in secret_refs(modules_of_cars(spec, spec.cars))}
    if spec.broker.tls is not None:
        names.add(spec.broker.tls.secret_name)
    return sorted(names)


# --- server config -----------------------------------------------------------------------------


def _module_entry(module: Module) -> dict[str, Any]:
    config: dict[str, Any] = dict(module.config)
    for item in module.config_from_secret:
        config[item.key] = env_reference(secret_env_name(item.secret_key_ref.name, item.secret_key_ref.key))
    return {"lib_path": module.library, "config": config, "timeout_ms": module.command_wait_timeout_ms}


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def render_server_config(spec: ExternalServerSpec, cars: Sequence[Car]) -> dict[str, Any]:
    """The server's config file (docs/protocol.md §6, current format) for ``cars``."""
    level = spec.logging.level
    return {
        "company_name": spec.company,
        "external_communication": {
            "protocol": "MQTT",
            "server_address": spec.broker.host,
            "server_port": spec.broker.port,
            "timeout_ms": round(spec.timeouts.session_seconds * 1000),
        },
        "timeout": _number(spec.timeouts.response_seconds),
        "send_invalid_command": spec.send_invalid_command,
        "sleep_duration_after_connection_refused": _number(spec.timeouts.reconnect_delay_seconds),
        "common_modules": {str(m.id): _module_entry(m) for m in spec.modules},
        "cars": {
            car.name: {"specific_modules": {str(m.id): _module_entry(m) for m in car.modules}} for car in cars
        },
        "logging": {
            "console": {"level": level, "use": True},
            "file": {"level": level, "use": False, "path": ""},
        },
    }


def config_text(config: Mapping[str, Any]) -> str:
    """Deterministic JSON text of a config (insertion order kept: it is the module order)."""
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def checksum(config: str, secret_versions: Mapping[str, str]) -> str:
    """Checksum of everything a shard's pod mounts: its config and the Secrets it reads."""
    h = hashlib.sha256(config.encode("utf-8"))
    for secret in sorted(secret_versions):
        h.update(f"\0secret/{secret}={secret_versions[secret]}".encode())
    return h.hexdigest()


# --- Kubernetes objects ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """The ExternalServer the children belong to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def _metadata(owner: Owner, name: str, shard: int | None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner.name, shard),
        "ownerReferences": [owner.reference()],
    }


def render_configmap(owner: Owner, shard: int, config: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, configmap_name(owner.name, shard), shard),
        "data": {CONFIG_FILE: config},
    }


def _container(
    owner: Owner, spec: ExternalServerSpec, shard: int, modules: Sequence[Module], image: str
) -> dict[str, Any]:
    command = ["external-server", "-c", CONFIG_PATH, "--http-port", str(HTTP_PORT)]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.broker.tls is not None:
        command += ["--tls", "--ca", f"{TLS_DIR}/ca.crt", "--cert", f"{TLS_DIR}/tls.crt"]
        command += ["--key", f"{TLS_DIR}/tls.key"]
        mounts.append({"name": "broker-tls", "mountPath": TLS_DIR, "readOnly": True})
    env: list[dict[str, Any]] = [
        {"name": CLIENT_ID_ENV, "value": client_id(owner.namespace, owner.name, shard)}
    ]
    env += [
        {"name": secret_env_name(secret, key), "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for secret, key in secret_refs(modules)
    ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": command,
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": env,
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    if spec.server.image_pull_policy is not None:
        container["imagePullPolicy"] = spec.server.image_pull_policy
    resources = spec.server.resources.model_dump(by_alias=True, exclude_defaults=True)
    if resources:
        container["resources"] = resources
    return container


def render_statefulset(
    owner: Owner,
    *,
    spec: ExternalServerSpec,
    shard: int,
    cars: Sequence[Car],
    config_checksum: str,
    settings: Settings,
) -> dict[str, Any]:
    """The StatefulSet of one shard: at most one server pod, by construction.

    Its single pod is named ``<name>-shard-<i>-0``, and the StatefulSet controller creates a
    pod of that name only once the previous one is gone from the API (terminated), for
    rollouts, deletions and evictions alike, so two servers never hold a shard's cars at the
    same time (a Deployment starts the replacement while the old pod is still terminating).
    ``Parallel`` pod management: with one replica it differs from ``OrderedReady`` only in not
    waiting for a broken pod to become Ready before replacing it with a fixed template.
    ``serviceName`` (required) names the ExternalServer's Service; no per-pod DNS is used."""
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {
                "name": configmap_name(owner.name, shard),
                "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}],
            },
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    tls = spec.broker.tls
    if tls is not None:
        volumes.append(
            {
                "name": "broker-tls",
                "secret": {
                    "secretName": tls.secret_name,
                    "defaultMode": 0o440,
                    "items": [
                        {"key": tls.ca_key, "path": "ca.crt"},
                        {"key": tls.cert_key, "path": "tls.crt"},
                        {"key": tls.key_key, "path": "tls.key"},
                    ],
                },
            }
        )
    pod_spec: dict[str, Any] = {
        "containers": [
            _container(owner, spec, shard, modules_of_cars(spec, cars), spec.server.image or settings.image)
        ],
        "volumes": volumes,
        "terminationGracePeriodSeconds": spec.server.termination_grace_period_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.server.node_selector:
        pod_spec["nodeSelector"] = dict(spec.server.node_selector)
    if spec.server.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in spec.server.tolerations
        ]
    if spec.server.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.server.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(owner, workload_name(owner.name, shard), shard),
        "spec": {
            "replicas": 1,
            "serviceName": service_name(owner.name),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(owner.name, shard)},
            "template": {
                "metadata": {
                    "labels": labels(owner.name, shard),
                    "annotations": {CHECKSUM_ANNOTATION: config_checksum},
                },
                "spec": pod_spec,
            },
        },
    }


def render_service(owner: Owner) -> dict[str, Any]:
    """One Service over all shards' HTTP ports (status and metrics)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, service_name(owner.name), None),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


@dataclass
class Children:
    """Everything one ExternalServer owns, rendered."""

    configmaps: list[dict[str, Any]] = field(default_factory=list)
    statefulsets: list[dict[str, Any]] = field(default_factory=list)
    service: dict[str, Any] = field(default_factory=dict)
    #: car name → shard
    assignment: dict[str, int] = field(default_factory=dict)
    #: shard → rendered config JSON text
    configs: dict[int, str] = field(default_factory=dict)

    def objects(self) -> list[dict[str, Any]]:
        """In apply order: a StatefulSet's ConfigMap and Service (its ``serviceName``) first."""
        return [*self.configmaps, self.service, *self.statefulsets]


def render_children(
    owner: Owner,
    spec: ExternalServerSpec,
    secret_versions: Mapping[str, str],
    settings: Settings,
) -> Children:
    """All children of a (cross-field valid) spec.

    ``secret_versions``: resourceVersion of each referenced Secret ("" when missing); only
    the Secrets a shard actually uses enter its checksum."""
    children = Children(service=render_service(owner))
    for shard, cars in assign_shards(spec).items():
        text = config_text(render_server_config(spec, cars))
        used = {secret for secret, _ in secret_refs(modules_of_cars(spec, cars))}
        if spec.broker.tls is not None:
            used.add(spec.broker.tls.secret_name)
        digest = checksum(text, {s: secret_versions.get(s, "") for s in used})
        children.configs[shard] = text
        children.configmaps.append(render_configmap(owner, shard, text))
        children.statefulsets.append(
            render_statefulset(
                owner, spec=spec, shard=shard, cars=cars, config_checksum=digest, settings=settings
            )
        )
    children.assignment = {car.name: shard_of(car.name, spec.shards) for car in spec.cars}
    return children


# --- comparing with the live objects ------------------------------------------------------------------


def _empty(value: Any) -> bool:
    return value is None or value in ({}, [])


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field of ``desired`` has the same value in ``live``.

    The API server adds defaults (and drops empty collections), so the live object is a
    superset of what the operator applied when nothing needs to change."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        for key, value in desired.items():
            if key not in live:
                if _empty(value):
                    continue
                return False
            if not is_subset(value, live[key]):
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return False
        return all(is_subset(d, item) for d, item in zip(desired, live, strict=True))
    return bool(desired == live)
