"""Keep the chart's values.schema.json in step with the CRD.

    python tools/helm/gen_values_schema.py           # rewrite definitions.externalServerSpec
    python tools/helm/gen_values_schema.py --check   # exit 1 when the file is out of date

Everything in charts/external-server/values.schema.json is written by hand except
``definitions.externalServerSpec``: the CRD's OpenAPI schema of ``spec`` (from the chart's
crds/externalserver.yaml), turned into plain JSON Schema so that ``helm install`` rejects a bad
ExternalServer in the values before anything reaches the cluster:

- ``x-kubernetes-int-or-string`` becomes ``"type": ["integer", "string"]``; other
  ``x-kubernetes-*`` keys and ``default`` are dropped (the API server applies the defaults);
- objects without ``additionalProperties`` get ``additionalProperties: false``: the API server
  would silently prune a misspelt field, the chart refuses it instead;
- ``broker`` is not required: the chart fills it in with the development broker's address.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "external-server" / "crds" / "externalserver.yaml"
SCHEMA = ROOT / "charts" / "external-server" / "values.schema.json"
DEFINITION = "externalServerSpec"


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "default":
            continue
        out[key] = _convert(value)
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of an ExternalServer spec as the chart's values accept it."""
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    spec: dict[str, Any] = _convert(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    spec["required"] = [r for r in spec.get("required", []) if r != "broker"]
    if not spec["required"]:
        del spec["required"]
    return spec


def render(current: dict[str, Any], crd: dict[str, Any]) -> str:
    updated = dict(current)
    updated["definitions"] = {**current.get("definitions", {}), DEFINITION: spec_schema(crd)}
    return json.dumps(updated, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = parser.parse_args(argv)
    crd = yaml.safe_load(CRD.read_text())
    current_text = SCHEMA.read_text()
    wanted = render(json.loads(current_text), crd)
    if current_text == wanted:
        return 0
    if args.check:
        print(f"{SCHEMA.relative_to(ROOT)} is out of date: run python tools/helm/gen_values_schema.py")
        return 1
    SCHEMA.write_text(wanted)
    print(f"wrote {SCHEMA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
