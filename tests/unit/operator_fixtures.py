"""Shared sample ExternalServer resources for the operator's unit tests."""

from __future__ import annotations

import copy
from typing import Any

from external_server_operator.models import ExternalServerSpec
from external_server_operator.render import Owner

OWNER = Owner(name="acme", namespace="fleet", uid="11111111-2222-3333-4444-555555555555")

SPEC: dict[str, Any] = {
    "company": "acme_corp",
    "broker": {"host": "mosquitto.fleet.svc", "port": 1883},
    "timeouts": {"responseSeconds": 30, "sessionSeconds": 45.5, "reconnectDelaySeconds": 0.5},
    "modules": [
        {
            "id": 1000,
            "library": "/opt/external-server/modules/libexample.so",
            "commandWaitTimeoutMs": 1500,
            "config": {"any_key": "string value", "retries": 3},
            "configFromSecret": [{"key": "api_key", "secretKeyRef": {"name": "acme-api", "key": "token"}}],
        }
    ],
    "cars": [
        {"name": "car_a"},
        {
            "name": "car_b",
            "modules": [
                {
                    "id": 2,
                    "library": "/opt/external-server/modules/libio.so",
                    "configFromSecret": [
                        {"key": "password", "secretKeyRef": {"name": "car-b-io", "key": "password"}}
                    ],
                }
            ],
        },
        {"name": "car_c"},
    ],
}


def spec_dict(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(SPEC)
    data.update(changes)
    return data


def spec(**changes: Any) -> ExternalServerSpec:
    return ExternalServerSpec.model_validate(spec_dict(**changes))
