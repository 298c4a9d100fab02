"""Pydantic models of the ExternalServer resource (fleetprotocol.io/v1alpha1).

These models are the single source of truth for the resource's shape: the CRD's OpenAPI
schema is generated from them (``external_server_operator.crd``) and the operator parses
every resource with them. Field names are snake_case in Python and camelCase on the wire
(``alias_generator``); constraints (patterns, ranges, enums, defaults) are written so that
they translate one to one into a Kubernetes *structural* schema that the API server
enforces. Rules that span several fields are not expressible without CEL (Kubernetes 1.20)
and live in ``validation.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from pydantic.alias_generators import to_camel

GROUP = "fleetprotocol.io"
VERSION = "v1alpha1"
KIND = "ExternalServer"
PLURAL = "externalservers"
SINGULAR = "externalserver"
SHORT_NAMES = ("exs",)
CATEGORIES = ("fleet",)

#: Company, car and config names as the server accepts them (docs/protocol.md §6).
NAME_PATTERN = r"^[a-z0-9_]+$"
#: An RFC 1123 host name; dotted IPv4 addresses are host names of this form too.
HOST_PATTERN = (
    r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)
#: A Kubernetes object name (DNS-1123 subdomain), used for Secret references.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A key inside a Secret.
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
#: An absolute path inside the server image.
LIBRARY_PATTERN = r"^/.*[^/]$"
#: A Kubernetes resource quantity ("500m", "128Mi", "1").
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

MAX_MODULE_ID = 2**31 - 1

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
ConfigValue = StrictInt | StrictStr
Quantity = StrictInt | Annotated[str, Field(pattern=QUANTITY_PATTERN)]


def _list_map(*keys: str) -> dict[str, Any]:
    """Schema extension of a list of named objects keyed by ``keys``."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


#: Schema extension making the API server fill in an absent object so its own field
#: defaults apply.
OBJECT_DEFAULT: dict[str, Any] = {"default": {}}


class KubeModel(BaseModel):
    """Base: camelCase on the wire, unknown fields ignored (the API server prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class BrokerTLS(KubeModel):
    """Mutual TLS towards the broker, from a cert-manager style Secret."""

    secret_name: str = Field(
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Secret holding the CA certificate, client certificate and client key.",
    )
    ca_key: str = Field(
        default="ca.crt", max_length=253, pattern=SECRET_KEY_PATTERN, description="Key of the CA certificate."
    )
    cert_key: str = Field(
        default="tls.crt",
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key of the PEM client certificate.",
    )
    key_key: str = Field(
        default="tls.key",
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key of the PEM client private key.",
    )


class Broker(KubeModel):
    """The MQTT broker the company's cars talk through."""

    host: str = Field(
        min_length=1,
        max_length=253,
        pattern=HOST_PATTERN,
        description="Broker host: an RFC 1123 host name or an IPv4 address.",
    )
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port.")
    transport: Literal["mqtt"] = Field(default="mqtt", description="Transport protocol; only mqtt today.")
    tls: BrokerTLS | None = Field(default=None, description="Mutual TLS; plain TCP when absent.")


class Timeouts(KubeModel):
    """Protocol timers, in seconds."""

    response_seconds: float = Field(
        default=30,
        ge=0,
        le=86400,
        description="Wait for each expected message (the config file's `timeout`).",
    )
    session_seconds: float = Field(
        default=30,
        ge=0,
        le=86400,
        description="Session inactivity timeout (`external_communication.timeout_ms`).",
    )
    reconnect_delay_seconds: float = Field(
        default=0.5,
        ge=0,
        le=3600,
        description="Pause after every ended session run (`sleep_duration_after_connection_refused`).",
    )


class Logging(KubeModel):
    """Server logging (console only: the container's root filesystem is read-only)."""

    level: LogLevel = Field(default="INFO", description="Console log level.")


class SecretKeySelector(KubeModel):
    """A key of a Secret in the ExternalServer's namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")
    key: str = Field(max_length=253, pattern=SECRET_KEY_PATTERN, description="Key inside the Secret.")


class SecretConfigValue(KubeModel):
    """A module config value that must not sit in a ConfigMap."""

    key: str = Field(min_length=1, max_length=253, description="Module config key.")
    secret_key_ref: SecretKeySelector = Field(description="Where the value comes from.")


class Module(KubeModel):
    """A module (shared library) the server loads; one context per car."""

    id: int = Field(
        ge=0, le=MAX_MODULE_ID, description="Module number; must equal the library's get_module_number()."
    )
    library: str = Field(
        min_length=2,
        max_length=4096,
        pattern=LIBRARY_PATTERN,
        description="Absolute path of the module's shared library inside the server image.",
    )
    command_wait_timeout_ms: int = Field(
        default=1000, ge=1, le=3_600_000, description="Argument of wait_for_command, in milliseconds."
    )
    config: dict[str, ConfigValue] = Field(
        default_factory=dict, description="Module configuration: string or integer values."
    )
    config_from_secret: list[SecretConfigValue] = Field(
        default_factory=list,
        description="Module configuration values taken from Secrets (passed to the pod as environment).",
        json_schema_extra=_list_map("key"),
    )


class Car(KubeModel):
    """A car served by this company's server."""

    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN, description="Car name.")
    modules: list[Module] = Field(
        default_factory=list,
        description="Car-specific modules, in addition to the common ones.",
        json_schema_extra=_list_map("id"),
    )


class Toleration(KubeModel):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourceRequirements(KubeModel):
    """Compute resources of the server container (core/v1 ResourceRequirements)."""

    limits: dict[str, Quantity] = Field(default_factory=dict)
    requests: dict[str, Quantity] = Field(default_factory=dict)


class LocalObjectReference(KubeModel):
    """A reference to an object in the same namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)


class ServerPod(KubeModel):
    """Knobs of the server pods."""

    image: str | None = Field(
        default=None,
        max_length=1024,
        description="Server image; default: the operator's EXTERNAL_SERVER_IMAGE.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Container resources."
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    termination_grace_period_seconds: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="Time for the disconnect notification of every car on shutdown.",
    )


class ExternalServerSpec(KubeModel):
    """One company's External Server, possibly split into shards."""

    company: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN, description="Company name.")
    broker: Broker
    timeouts: Timeouts = Field(default_factory=Timeouts, json_schema_extra=OBJECT_DEFAULT)
    send_invalid_command: bool = Field(
        default=False, description="Forward commands that fail the module's validation."
    )
    logging: Logging = Field(default_factory=Logging, json_schema_extra=OBJECT_DEFAULT)
    modules: list[Module] = Field(
        default_factory=list,
        description="Common modules: every car gets its own context of each.",
        json_schema_extra=_list_map("id"),
    )
    cars: list[Car] = Field(
        min_length=1, description="The company's cars.", json_schema_extra=_list_map("name")
    )
    shards: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Cars are split over this many server StatefulSets (one pod each).",
    )
    server: ServerPod = Field(default_factory=ServerPod, json_schema_extra=OBJECT_DEFAULT)


# --- status -------------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KubeModel):
    """A condition in the Kubernetes API conventions' shape."""

    type: str = Field(description="Ready, ConfigValid, Progressing or CarsExclusive.")
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: str = Field(default="", description="When status last changed (RFC 3339).")


class ShardCounts(KubeModel):
    """Shard StatefulSets wanted and ready."""

    desired: int = 0
    ready: int = 0


class CarCounts(KubeModel):
    """Cars configured and cars with an established session."""

    total: int = 0
    connected: int = 0


class CarStatus(KubeModel):
    """One car's session as its server pod reports it."""

    name: str
    shard: int
    state: str = Field(default="Unknown", description="Session state from the pod, or Unknown.")
    devices: int = Field(default=0, description="Devices registered in the car's session.")
    since: str = Field(default="", description="When the operator first saw this state (RFC 3339).")


class ExternalServerStatus(KubeModel):
    """Observed state, written by the operator."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=_list_map("type"))
    shards: ShardCounts = Field(default_factory=ShardCounts)
    cars: CarCounts = Field(default_factory=CarCounts)
    car_statuses: list[CarStatus] = Field(default_factory=list, json_schema_extra=_list_map("name"))
