"""Cross-field validation of an ExternalServer: the rules the CRD schema cannot express.

Kubernetes 1.20 has no CEL, so the API server only enforces per-field rules. Everything
that spans fields is checked here, mirroring the server's own load-time checks
(docs/protocol.md §6.5), so an invalid resource is reported as ``ConfigValid=False`` instead
of being rolled out to a server that would refuse to start.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .models import ExternalServerSpec, Module

#: Children are named "<name>-shard-<i>-config" and labelled with <name>; a DNS-1035
#: label of at most this length keeps every derived name (including the StatefulSet pods'
#: controller-revision-hash label "<name>-shard-<i>-<hash>") within Kubernetes' 63-character
#: limits.
MAX_NAME_LENGTH = 40
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    """One reason the resource cannot be rendered."""

    reason: str
    message: str


def _duplicates(values: Iterable[Any]) -> list[Any]:
    return sorted(v for v, n in Counter(values).items() if n > 1)


def _module_problems(modules: list[Module], where: str) -> list[Problem]:
    problems: list[Problem] = []
    dup_ids = _duplicates(m.id for m in modules)
    if dup_ids:
        problems.append(Problem("DuplicateModule", f"{where}: module ids listed more than once: {dup_ids}"))
    for m in modules:
        secret_keys = [s.key for s in m.config_from_secret]
        dup_keys = _duplicates(secret_keys)
        if dup_keys:
            problems.append(
                Problem(
                    "DuplicateConfigKey",
                    f"{where}: module {m.id}: configFromSecret keys listed more than once: {dup_keys}",
                )
            )
        both = sorted(set(secret_keys) & set(m.config))
        if both:
            problems.append(
                Problem(
                    "DuplicateConfigKey",
                    f"{where}: module {m.id}: keys both in config and configFromSecret: {both}",
                )
            )
    return problems


def validate_spec(name: str, spec: ExternalServerSpec) -> list[Problem]:
    """All cross-field problems of a schema-valid spec; empty when it can be rendered."""
    problems: list[Problem] = []
    if len(name) > MAX_NAME_LENGTH or not _DNS1035.match(name):
        problems.append(
            Problem(
                "InvalidName",
                f"metadata.name {name!r} must be a DNS-1035 label (lower-case letters, digits, '-', "
                f"starting with a letter) of at most {MAX_NAME_LENGTH} characters: it names the "
                "Service and the shard StatefulSets",
            )
        )
    dup_cars = _duplicates(c.name for c in spec.cars)
    if dup_cars:
        problems.append(Problem("DuplicateCar", f"car names listed more than once: {dup_cars}"))
    problems.extend(_module_problems(spec.modules, "modules"))
    for car in spec.cars:
        problems.extend(_module_problems(car.modules, f"car {car.name}"))

    common = {m.id for m in spec.modules}
    conflicting = sorted({m.id for car in spec.cars for m in car.modules} & common)
    if conflicting:
        problems.append(
            Problem(
                "ModuleConflict",
                "each module can be configured either globally or per car, but not both; "
                f"module ids defined both globally and per car: {conflicting}",
            )
        )
    if not common:
        bare = [car.name for car in spec.cars if not car.modules]
        if bare:
            problems.append(
                Problem(
                    "CarWithoutModules",
                    f"there are no common modules and these cars have no modules: {bare}; "
                    "every car needs at least one module",
                )
            )
    return problems


def parse_spec(raw: Mapping[str, Any]) -> tuple[ExternalServerSpec | None, list[Problem]]:
    """Parse the resource's spec. Schema violations normally never get here (the API server
    rejects them), but an older CRD or a hand-edited object must not crash the operator."""
    try:
        return ExternalServerSpec.model_validate(dict(raw)), []
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in exc.errors()
        )
        return None, [Problem("SchemaViolation", f"spec does not match the schema: {details}")]


def summarize(problems: list[Problem]) -> tuple[str, str]:
    """The ConfigValid condition's reason and message for a non-empty problem list."""
    reasons = {p.reason for p in problems}
    reason = problems[0].reason if len(reasons) == 1 else "MultipleProblems"
    return reason, "; ".join(p.message for p in problems)
