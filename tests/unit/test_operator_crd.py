"""The committed CRD is exactly what the generator makes from the pydantic models, and
the generated schema is structural and agrees with the models."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from external_server_operator import crd
from external_server_operator.models import ExternalServerSpec
from operator_fixtures import SPEC

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "charts" / "external-server" / "crds" / "externalserver.yaml"


def schema() -> dict[str, Any]:
    doc = crd.crd()
    s: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return s


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in (node.get("properties") or {}).items():
        out += walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_committed_crd_is_up_to_date() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == crd.render_yaml(), "the CRD is stale: run make crd"


def test_generator_cli_check() -> None:
    cmd = [sys.executable, "-m", "external_server_operator.crd", "--check", str(CRD_FILE)]
    assert subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    out = subprocess.run(
        [sys.executable, "-m", "external_server_operator.crd"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout == crd.render_yaml()


def test_crd_identity() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    assert doc["metadata"]["name"] == "externalservers.fleetprotocol.io"
    spec = doc["spec"]
    assert spec["group"] == "fleetprotocol.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "ExternalServer",
        "listKind": "ExternalServerList",
        "plural": "externalservers",
        "singular": "externalserver",
        "shortNames": ["exs"],
        "categories": ["fleet"],
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [
        (c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert columns == [
        ("Company", ".spec.company"),
        ("Cars", ".status.cars.total"),
        ("Connected", ".status.cars.connected"),
        ("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        ("Age", ".metadata.creationTimestamp"),
    ]


def test_schema_is_structural_without_cel() -> None:
    text = CRD_FILE.read_text()
    assert "x-kubernetes-validations" not in text
    assert "$ref" not in text and "anyOf" not in text and "nullable" not in text
    for path, node in walk(schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            item = node["items"]
            for key in keys:
                assert key in item.get("required", []) or "default" in item["properties"][key], (path, key)
        for key in ("properties", "additionalProperties"):
            if key in node:
                assert node["type"] == "object", path


def test_enforced_rules_are_present() -> None:
    nodes = dict(walk(schema()))
    spec = ".spec"
    assert nodes[spec]["required"] == ["company", "broker", "cars"]
    assert nodes[f"{spec}.company"]["pattern"] == "^[a-z0-9_]+$"
    assert nodes[f"{spec}.cars[].name"]["pattern"] == "^[a-z0-9_]+$"
    assert (nodes[f"{spec}.broker.port"]["minimum"], nodes[f"{spec}.broker.port"]["maximum"]) == (1, 65535)
    assert nodes[f"{spec}.broker.port"]["default"] == 1883
    assert nodes[f"{spec}.broker.transport"]["enum"] == ["mqtt"]
    assert nodes[f"{spec}.logging.level"]["enum"] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    assert nodes[f"{spec}.shards"]["default"] == 1
    assert nodes[f"{spec}.cars"]["minItems"] == 1
    assert nodes[f"{spec}.cars"]["x-kubernetes-list-map-keys"] == ["name"]
    assert nodes[f"{spec}.modules"]["x-kubernetes-list-map-keys"] == ["id"]
    assert nodes[f"{spec}.modules[].config{{}}"] == {"x-kubernetes-int-or-string": True}
    assert nodes[f"{spec}.timeouts"]["default"] == {}
    assert nodes[f"{spec}.broker.tls.caKey"]["default"] == "ca.crt"


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """What the API server's structural defaulting does to ``value``."""
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    if isinstance(value, list) and "items" in node:
        value = [apply_defaults(node["items"], v) for v in value]
    return value


@pytest.mark.parametrize(
    "raw",
    [
        {
            "company": "c",
            "broker": {"host": "h"},
            "cars": [{"name": "a", "modules": [{"id": 1, "library": "/l"}]}],
        },
        SPEC,
        {**SPEC, "broker": {"host": "h", "tls": {"secretName": "s"}}, "server": {"resources": {}}},
    ],
)
def test_crd_defaults_equal_model_defaults(raw: dict[str, Any]) -> None:
    defaulted = apply_defaults(dict(walk(schema()))[".spec"], copy.deepcopy(raw))
    from_api = ExternalServerSpec.model_validate(defaulted)
    from_model = ExternalServerSpec.model_validate(copy.deepcopy(raw))
    assert from_api == from_model
    # and the defaults the API server stores are exactly the model's defaults
    assert (
        from_model.model_dump(by_alias=True, exclude_unset=False)["broker"]["port"]
        == defaulted["broker"]["port"]
    )


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        (".spec.company", ["acme", "acme_corp", "a1"], ["Acme", "acme-corp", "acme corp", ""]),
        (
            ".spec.broker.host",
            ["mosquitto", "127.0.0.1", "my.broker.example.com", "a-b.c"],
            ["host:1883", "-a", "a..b", "", "::1"],
        ),
        (".spec.modules[].library", ["/opt/m/lib.so"], ["lib.so", "/opt/", ""]),
        (".spec.server.resources.limits{}", ["100m", "1Gi", "2", "0.5"], ["1 Gi", "abc"]),
    ],
)
def test_patterns_agree_with_python(field: str, good: list[str], bad: list[str]) -> None:
    pattern = re.compile(dict(walk(schema()))[field]["pattern"])
    assert all(pattern.search(g) for g in good)
    assert not any(pattern.search(b) for b in bad)


def test_converter_rejects_unknown_constructs() -> None:
    with pytest.raises(crd.SchemaError):
        crd.structural({"oneOf": [{"type": "string"}]}, {})
    with pytest.raises(crd.SchemaError):
        crd.structural({"anyOf": [{"type": "string"}, {"type": "boolean"}]}, {})
    with pytest.raises(crd.SchemaError):
        crd.structural({"description": "no type"}, {})
    assert crd.structural(
        {"anyOf": [{"$ref": "#/$defs/X"}, {"type": "null"}], "default": None}, {"X": {"type": "string"}}
    ) == {"type": "string"}
