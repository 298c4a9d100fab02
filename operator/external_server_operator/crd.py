"""Generate the ExternalServer CustomResourceDefinition from the pydantic models.

    python -m external_server_operator.crd                 # print the CRD YAML
    python -m external_server_operator.crd -o charts/external-server/crds/externalserver.yaml
    python -m external_server_operator.crd --check charts/external-server/crds/externalserver.yaml

pydantic's JSON schema is turned into a Kubernetes *structural* OpenAPI v3 schema:
``$ref`` inlined, titles dropped, ``Optional[X]`` → X (absent rather than null),
``int | str`` → ``x-kubernetes-int-or-string``, ``const`` → a one-value enum. Anything this
converter does not know is an error, so a model change can never silently produce a
schema the API server would interpret differently from the operator.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from .models import (
    CATEGORIES,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ExternalServerSpec,
    ExternalServerStatus,
)

HEADER = (
    "# Generated from external_server_operator.models by\n"
    "#   python -m external_server_operator.crd -o charts/external-server/crds/externalserver.yaml\n"
    "# Do not edit by hand: tests/unit/test_operator_crd.py checks that this file is up to date.\n"
)

#: Output key order, for a stable, readable file.
_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "default",
    "required",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "items",
    "additionalProperties",
    "properties",
)
_SCALAR_KEYS = frozenset(_KEY_ORDER) - {"items", "additionalProperties", "properties", "required"}


class SchemaError(ValueError):
    """The pydantic schema uses a construct without a structural equivalent."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a ``$ref``; the referring node's own keys (description, default) win."""
    if "$ref" not in node:
        return node
    ref = node["$ref"]
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise SchemaError(f"unresolvable $ref {ref!r}")
    merged = dict(_resolve(defs[ref[len(prefix) :]], defs))
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _int_or_string(branches: list[dict[str, Any]]) -> dict[str, Any] | None:
    types = sorted(b.get("type", "") for b in branches)
    if types != ["integer", "string"]:
        return None
    out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
    for b in branches:
        extra = set(b) - {"type", "pattern", "title"}
        if extra:
            raise SchemaError(f"int-or-string branch with unsupported keys {sorted(extra)}")
        if "pattern" in b:
            out["pattern"] = b["pattern"]
    return out


def structural(node: dict[str, Any], defs: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Convert one pydantic JSON-schema node (and its children) to a structural schema."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    if "anyOf" in node:
        branches = [_resolve(b, defs) for b in node["anyOf"] if b.get("type") != "null"]
        outer = {k: v for k, v in node.items() if k not in ("anyOf", "title")}
        if outer.get("default", 0) is None:
            del outer["default"]
        if len(branches) == 1:
            inner = structural(branches[0], defs, where)
            for key, value in outer.items():
                if key not in _SCALAR_KEYS:
                    raise SchemaError(f"{where}: unsupported keyword {key!r} beside anyOf")
                inner[key] = value
            return _ordered(inner)
        special = _int_or_string(branches)
        if special is None:
            raise SchemaError(f"{where or '<root>'}: union without a structural equivalent: {node['anyOf']}")
        out.update(special)
        node = outer
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "default":
            if value is not None:
                out["default"] = value
        elif key in {"exclusiveMinimum", "exclusiveMaximum"}:
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out["properties"] = {
                name: structural(sub, defs, f"{where}.{name}") for name, sub in value.items()
            }
        elif key == "items":
            out["items"] = structural(value, defs, f"{where}[]")
        elif key == "additionalProperties":
            if not isinstance(value, dict):
                raise SchemaError(f"{where}: additionalProperties must be a schema")
            out["additionalProperties"] = structural(value, defs, f"{where}{{}}")
        elif key == "required":
            out["required"] = list(value)
        elif key in _SCALAR_KEYS:
            out[key] = value
        else:
            raise SchemaError(f"{where or '<root>'}: unsupported JSON-schema keyword {key!r}")
    if "type" not in out and not out.get("x-kubernetes-int-or-string") and "properties" not in out:
        raise SchemaError(f"{where or '<root>'}: every structural schema node needs a type")
    if "properties" in out:
        out.setdefault("type", "object")
    return _ordered(out)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    unknown = set(node) - set(_KEY_ORDER)
    if unknown:
        raise SchemaError(f"unexpected keys {sorted(unknown)}")
    return {k: node[k] for k in _KEY_ORDER if k in node}


def _without_defaults(node: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in node.items() if k != "default"}
    if "properties" in out:
        out["properties"] = {name: _without_defaults(sub) for name, sub in out["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _without_defaults(out[key])
    return out


def model_schema(
    model: type[ExternalServerSpec] | type[ExternalServerStatus], *, defaults: bool = True
) -> dict[str, Any]:
    """Structural schema of a model. ``defaults=False`` leaves out every default: the status
    is written whole by the operator, and Kubernetes 1.20 mis-reads a "" default as null."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = structural(raw, raw.get("$defs", {}))
    return schema if defaults else _without_defaults(schema)


def open_api_schema() -> dict[str, Any]:
    """The version's ``openAPIV3Schema``."""
    return {
        "description": "One company's BringAuto Fleet Protocol External Server.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(ExternalServerSpec),
            "status": model_schema(ExternalServerStatus, defaults=False),
        },
    }


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Company", "type": "string", "jsonPath": ".spec.company"},
    {"name": "Cars", "type": "integer", "jsonPath": ".status.cars.total"},
    {"name": "Connected", "type": "integer", "jsonPath": ".status.cars.connected"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Shards", "type": "integer", "jsonPath": ".spec.shards", "priority": 1},
    {
        "name": "ConfigValid",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="ConfigValid")].status',
        "priority": 1,
    },
]


def crd() -> dict[str, Any]:
    """The complete CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "fleet-external-server"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Write repeated sub-schemas out in full instead of as YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml() -> str:
    body = yaml.dump(
        crd(),
        Dumper=_NoAliasDumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
        allow_unicode=True,
    )
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m external_server_operator.crd", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-o", "--output", type=Path, help="write the CRD to this file")
    group.add_argument("--check", type=Path, help="exit 1 when this file differs from the generated CRD")
    args = parser.parse_args(argv)
    text = render_yaml()
    if args.check is not None:
        if not args.check.is_file() or args.check.read_text(encoding="utf-8") != text:
            print(f"{args.check} is out of date: run python -m external_server_operator.crd -o {args.check}")
            return 1
        return 0
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
