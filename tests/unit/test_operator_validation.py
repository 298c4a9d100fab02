"""Cross-field validation of ExternalServer specs (what the CRD schema cannot express)."""

from __future__ import annotations

from typing import Any

import pytest
from external_server_operator.validation import parse_spec, summarize, validate_spec
from operator_fixtures import spec, spec_dict

MODULE: dict[str, Any] = {"id": 7, "library": "/opt/m/lib7.so"}


def reasons(name: str = "acme", **changes: Any) -> list[str]:
    return [p.reason for p in validate_spec(name, spec(**changes))]


def test_valid_sample() -> None:
    assert validate_spec("acme", spec()) == []


def test_module_both_common_and_per_car() -> None:
    data = spec_dict()
    data["cars"][0]["modules"] = [{"id": 1000, "library": "/opt/other.so"}]
    problems = validate_spec("acme", parse_spec(data)[0])  # type: ignore[arg-type]
    assert [p.reason for p in problems] == ["ModuleConflict"]
    assert "[1000]" in problems[0].message
    assert "either globally or per car" in problems[0].message


def test_same_module_in_two_cars_is_fine() -> None:
    cars = [{"name": "a", "modules": [MODULE]}, {"name": "b", "modules": [MODULE]}]
    assert reasons(modules=[], cars=cars) == []


def test_car_without_module_when_no_common_modules() -> None:
    cars = [{"name": "a", "modules": [MODULE]}, {"name": "b"}]
    problems = validate_spec("acme", spec(modules=[], cars=cars))
    assert [p.reason for p in problems] == ["CarWithoutModules"]
    assert "['b']" in problems[0].message


def test_car_without_module_is_fine_with_common_modules() -> None:
    assert reasons(cars=[{"name": "a"}]) == []


def test_duplicate_car_names() -> None:
    assert reasons(cars=[{"name": "a"}, {"name": "a"}]) == ["DuplicateCar"]


def test_duplicate_module_ids() -> None:
    assert reasons(modules=[MODULE, {**MODULE, "library": "/x.so"}]) == ["DuplicateModule"]
    cars = [{"name": "a", "modules": [MODULE, MODULE]}]
    assert reasons(cars=cars) == ["DuplicateModule"]


def test_secret_key_also_plain_config_key() -> None:
    module = {
        **MODULE,
        "config": {"api_key": "plain"},
        "configFromSecret": [{"key": "api_key", "secretKeyRef": {"name": "s", "key": "k"}}],
    }
    assert reasons(modules=[module]) == ["DuplicateConfigKey"]
    twice = {
        **MODULE,
        "configFromSecret": [
            {"key": "api_key", "secretKeyRef": {"name": "s", "key": "k"}},
            {"key": "api_key", "secretKeyRef": {"name": "s", "key": "j"}},
        ],
    }
    assert reasons(modules=[twice]) == ["DuplicateConfigKey"]


@pytest.mark.parametrize("name", ["Acme", "1acme", "acme_x", "a" * 41, "acme-"])
def test_resource_name_must_fit_the_children(name: str) -> None:
    assert reasons(name=name) == ["InvalidName"]


@pytest.mark.parametrize("name", ["a", "acme", "acme-2", "a" * 40])
def test_resource_name_ok(name: str) -> None:
    assert reasons(name=name) == []


def test_summary_of_several_problems() -> None:
    cars = [{"name": "a", "modules": [{"id": 1000, "library": "/x.so"}]}, {"name": "a"}]
    problems = validate_spec("acme", spec(cars=cars))
    reason, message = summarize(problems)
    assert reason == "MultipleProblems"
    assert "DuplicateCar" not in message and "more than once" in message and "both" in message
    assert summarize(problems[:1])[0] == problems[0].reason


def test_schema_violation_is_reported_not_raised() -> None:
    parsed, problems = parse_spec({"company": "Bad Name", "broker": {"host": "h"}, "cars": []})
    assert parsed is None
    assert [p.reason for p in problems] == ["SchemaViolation"]
    assert "company" in problems[0].message and "cars" in problems[0].message
