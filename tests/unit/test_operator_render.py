"""Pure builders of the operator: sharding, server config, ConfigMap/Deployment/Service."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from external_server_operator.models import ExternalServerSpec
from external_server_operator.render import (
    CHECKSUM_ANNOTATION,
    CONFIG_PATH,
    MAX_CLIENT_ID,
    assign_shards,
    checksum,
    client_id,
    config_text,
    env_reference,
    is_subset,
    referenced_secrets,
    render_children,
    render_server_config,
    secret_env_name,
    shard_of,
)
from external_server_operator.settings import DEFAULT_IMAGE, Settings
from operator_fixtures import OWNER, spec, spec_dict

SETTINGS = Settings(image="example.org/fleet-external-server:1.2.3")
VERSIONS = {"acme-api": "100", "car-b-io": "200"}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# --- sharding -------------------------------------------------------------------------------


def test_shard_of_is_a_fixed_function_of_the_name() -> None:
    # Regression values: the assignment must never change between releases or processes.
    assert [shard_of("car_a", k) for k in (1, 2, 3, 4, 7)] == [0, 1, 2, 1, 1]
    assert [shard_of("car_c", k) for k in (1, 2, 3, 4, 7)] == [0, 1, 2, 3, 5]
    assert [shard_of("vehicle_1", k) for k in (1, 2, 3, 4, 7)] == [0, 1, 0, 1, 1]


def test_shard_of_does_not_depend_on_python_hash_seed() -> None:
    code = (
        "from external_server_operator.render import shard_of\n"
        "print([shard_of(f'c{i}', 5) for i in range(50)])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("0", "1", "12345")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([shard_of(f"c{i}", 5) for i in range(50)])


def test_shards_spread_cars_roughly_evenly() -> None:
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"car_{i}", 4)] += 1
    assert all(900 < c < 1100 for c in counts), counts


def test_assign_shards_keeps_spec_order_and_skips_empty_shards() -> None:
    s = spec(shards=7)
    by_shard = assign_shards(s)
    assert list(by_shard) == sorted(by_shard)
    assert all(cars for cars in by_shard.values())
    flat = {c.name: shard for shard, cars in by_shard.items() for c in cars}
    assert flat == {"car_a": 1, "car_b": 0, "car_c": 5}


# --- server config ---------------------------------------------------------------------------


def test_server_config_current_format() -> None:
    s = spec()
    cfg = render_server_config(s, s.cars)
    assert cfg["company_name"] == "acme_corp"
    assert cfg["external_communication"] == {
        "protocol": "MQTT",
        "server_address": "mosquitto.fleet.svc",
        "server_port": 1883,
        "timeout_ms": 45500,
    }
    assert cfg["timeout"] == 30
    assert isinstance(cfg["timeout"], int)
    assert cfg["sleep_duration_after_connection_refused"] == 0.5
    assert cfg["send_invalid_command"] is False
    assert list(cfg["cars"]) == ["car_a", "car_b", "car_c"]
    assert cfg["cars"]["car_a"] == {"specific_modules": {}}
    common = cfg["common_modules"]["1000"]
    assert common["lib_path"] == "/opt/external-server/modules/libexample.so"
    assert common["timeout_ms"] == 1500
    assert common["config"] == {
        "any_key": "string value",
        "retries": 3,
        "api_key": env_reference(secret_env_name("acme-api", "token")),
    }
    assert cfg["logging"] == {
        "console": {"level": "INFO", "use": True},
        "file": {"level": "INFO", "use": False, "path": ""},
    }


def test_secret_values_are_env_references_only() -> None:
    s = spec()
    text = config_text(render_server_config(s, s.cars))
    assert "secretKeyRef" not in text
    name = secret_env_name("car-b-io", "password")
    assert "${env:" + name + "}" in text
    assert name.startswith("FLEET_SECRET_CAR_B_IO_PASSWORD_")


def test_secret_env_names_are_valid_and_distinct() -> None:
    names = {secret_env_name(s, k) for s, k in [("a-b", "c"), ("a", "b-c"), ("a.b", "c"), ("a", "b.c")]}
    assert len(names) == 4
    assert all(n.replace("_", "").isalnum() and n.isupper() for n in names)


def test_config_text_is_deterministic() -> None:
    s = spec()
    assert config_text(render_server_config(s, s.cars)) == config_text(
        render_server_config(spec(), spec().cars)
    )
    json.loads(config_text(render_server_config(s, s.cars)))


# --- children --------------------------------------------------------------------------------


def test_children_per_shard() -> None:
    children = render_children(OWNER, spec(shards=2), VERSIONS, SETTINGS)
    assert [cm["metadata"]["name"] for cm in children.configmaps] == [
        "acme-shard-0-config",
        "acme-shard-1-config",
    ]
    assert [d["metadata"]["name"] for d in children.statefulsets] == ["acme-shard-0", "acme-shard-1"]
    assert children.service["metadata"]["name"] == "acme"
    assert children.assignment == {"car_a": 1, "car_b": 0, "car_c": 1}
    for shard, cm in enumerate(children.configmaps):
        cars = json.loads(cm["data"]["config.json"])["cars"]
        assert set(cars) == {c for c, s in children.assignment.items() if s == shard}
    assert [o["kind"] for o in children.objects()] == [
        "ConfigMap",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "StatefulSet",
    ]


def test_every_child_is_owned_and_labelled() -> None:
    children = render_children(OWNER, spec(shards=2), VERSIONS, SETTINGS)
    for obj in children.objects():
        meta = obj["metadata"]
        assert meta["namespace"] == "fleet"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "fleetprotocol.io/v1alpha1",
                "kind": "ExternalServer",
                "name": "acme",
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/name"] == "external-server"
        assert meta["labels"]["app.kubernetes.io/instance"] == "acme"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "external-server-operator"


def test_statefulset_shape() -> None:
    children = render_children(OWNER, spec(shards=2), VERSIONS, SETTINGS)
    d = children.statefulsets[0]
    assert (d["apiVersion"], d["kind"]) == ("apps/v1", "StatefulSet")
    assert d["spec"]["replicas"] == 1
    # one pod named <name>-shard-<i>-0: a replacement only once the old one is gone
    assert d["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert d["spec"]["podManagementPolicy"] == "Parallel"
    assert d["spec"]["serviceName"] == "acme"
    assert "strategy" not in d["spec"]
    selector = d["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/name": "external-server",
        "app.kubernetes.io/instance": "acme",
        "fleetprotocol.io/shard": "0",
    }
    template = d["spec"]["template"]
    assert selector.items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    c = _container(d)
    assert c["image"] == "example.org/fleet-external-server:1.2.3"
    assert c["command"] == ["external-server", "-c", CONFIG_PATH, "--http-port", "8080"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    # shard 0 holds car_b: the common module's secret and car_b's own
    env = {e["name"]: e for e in c["env"]}
    assert env["FLEET_MQTT_CLIENT_ID"]["value"] == "es-fleet-acme-0"
    assert env[secret_env_name("acme-api", "token")]["valueFrom"] == {
        "secretKeyRef": {"name": "acme-api", "key": "token"}
    }
    assert env[secret_env_name("car-b-io", "password")]["valueFrom"]["secretKeyRef"]["name"] == "car-b-io"
    # shard 1 (car_a, car_c) does not get car_b's secret
    env1 = {e["name"] for e in _container(children.statefulsets[1])["env"]}
    assert secret_env_name("car-b-io", "password") not in env1
    assert secret_env_name("acme-api", "token") in env1
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "acme-shard-0-config"
    assert "emptyDir" in volumes["tmp"]
    assert "broker-tls" not in volumes


def test_default_image_comes_from_settings() -> None:
    d = render_children(OWNER, spec(), {}, Settings()).statefulsets[0]
    assert _container(d)["image"] == DEFAULT_IMAGE == "fleet-external-server:0.1.0"
    own = render_children(OWNER, spec(server={"image": "mine:1"}), {}, Settings()).statefulsets[0]
    assert _container(own)["image"] == "mine:1"


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "EXTERNAL_SERVER_IMAGE": "x:1",
            "EXTERNAL_SERVER_OPERATOR_STATUS_INTERVAL": "3",
            "EXTERNAL_SERVER_OPERATOR_STATUS_PORT": "9999",
        }
    )
    assert (s.image, s.status_interval, s.status_port) == ("x:1", 3.0, 9999)
    assert Settings.from_env({}) == Settings()


def test_tls_secret_is_mounted_and_passed_on_the_command_line() -> None:
    broker = {"host": "10.1.2.3", "port": 8883, "tls": {"secretName": "acme-mqtt", "caKey": "root.pem"}}
    s = spec(broker=broker)
    d = render_children(OWNER, s, {"acme-mqtt": "7"}, SETTINGS).statefulsets[0]
    c = _container(d)
    tls_dir = "/var/run/external-server/tls"
    assert c["command"][-7:] == [
        "--tls",
        "--ca",
        f"{tls_dir}/ca.crt",
        "--cert",
        f"{tls_dir}/tls.crt",
        "--key",
        f"{tls_dir}/tls.key",
    ]
    assert {"name": "broker-tls", "mountPath": tls_dir, "readOnly": True} in c["volumeMounts"]
    volume = next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == "broker-tls")
    assert volume["secret"]["secretName"] == "acme-mqtt"
    assert volume["secret"]["items"] == [
        {"key": "root.pem", "path": "ca.crt"},
        {"key": "tls.crt", "path": "tls.crt"},
        {"key": "tls.key", "path": "tls.key"},
    ]
    assert "acme-mqtt" in referenced_secrets(s)


def test_pod_knobs() -> None:
    server = {
        "imagePullPolicy": "Always",
        "imagePullSecrets": [{"name": "regcred"}],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": 128}},
        "nodeSelector": {"fleet": "yes"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "fleet", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 60,
    }
    d = render_children(OWNER, spec(server=server), {}, SETTINGS).statefulsets[0]
    pod = d["spec"]["template"]["spec"]
    c = _container(d)
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": 128}}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"fleet": "yes"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "fleet", "effect": "NoSchedule"}
    ]
    assert pod["terminationGracePeriodSeconds"] == 60
    plain = render_children(OWNER, spec(), {}, SETTINGS).statefulsets[0]
    assert "resources" not in _container(plain)
    assert "nodeSelector" not in plain["spec"]["template"]["spec"]


def test_service_selects_all_shards() -> None:
    svc = render_children(OWNER, spec(shards=3), {}, SETTINGS).service
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "external-server",
        "app.kubernetes.io/instance": "acme",
    }
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]


# --- checksum ---------------------------------------------------------------------------------


def _checksums(s: ExternalServerSpec, versions: dict[str, str]) -> list[str]:
    return [
        d["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        for d in render_children(OWNER, s, versions, SETTINGS).statefulsets
    ]


def test_checksum_is_stable() -> None:
    assert _checksums(spec(shards=2), VERSIONS) == _checksums(spec(shards=2), dict(VERSIONS))


def test_checksum_follows_config_changes_of_the_shard_only() -> None:
    before = _checksums(spec(shards=2), VERSIONS)
    data = spec_dict(shards=2)
    data["cars"][1]["modules"][0]["config"] = {"extra": "x"}  # car_b, shard 0
    after = _checksums(ExternalServerSpec.model_validate(data), VERSIONS)
    assert after[0] != before[0]
    assert after[1] == before[1]


def test_checksum_follows_secret_versions_of_used_secrets_only() -> None:
    before = _checksums(spec(shards=2), VERSIONS)
    after = _checksums(spec(shards=2), {**VERSIONS, "car-b-io": "201"})
    assert after[0] != before[0]  # shard 0 uses car-b-io
    assert after[1] == before[1]
    assert checksum("x", {"s": ""}) != checksum("x", {"s": "1"})


# --- comparing with live objects ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "live", "expected"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": {"b": [1, {"c": 1}]}}, {"a": {"b": [1, {"c": 1, "d": 0}], "x": 1}}, True),
        ({"a": [1, 2]}, {"a": [1]}, False),
        ({"a": [1]}, {"a": [1, 2]}, False),
        ({"a": {}}, {}, True),
        ({"a": []}, {}, True),
        ({"a": "1"}, {"a": 1}, False),
        ({"a": {"b": 1}}, {"a": "x"}, False),
    ],
)
def test_is_subset(desired: Any, live: Any, expected: bool) -> None:
    assert is_subset(desired, live) is expected


def test_rendered_children_are_subsets_of_themselves_with_defaults() -> None:
    for obj in render_children(OWNER, spec(), VERSIONS, SETTINGS).objects():
        live = json.loads(json.dumps(obj))
        live["metadata"]["resourceVersion"] = "1"
        live["status"] = {}
        assert is_subset(obj, live)


def test_client_ids_are_unique_and_fit_every_mqtt_broker() -> None:
    assert client_id("fleet", "acme", 0) == "es-fleet-acme-0"
    long_ns = "production-europe-west-with-a-very-long-namespace-name-0123456789"[:63]
    ids = {
        client_id(ns, name, shard)
        for ns in ("fleet", "fleet-staging", long_ns, long_ns[:-1] + "x")
        for name in (
            "acme",
            "acme-corp-the-second-of-its-name-x-y-z",
            "acme-corp-the-second-of-its-name-x-y-w",
        )
        for shard in (0, 1, 63)
    }
    assert len(ids) == 4 * 3 * 3
    assert all(1 <= len(i.encode()) <= MAX_CLIENT_ID == 23 for i in ids), sorted(ids)
    long_id = client_id(long_ns, "acme", 7)
    assert long_id.startswith("es-productio") and long_id.endswith("-7")
    assert client_id(long_ns, "acme", 7) == long_id  # deterministic
