"""The config the operator renders is accepted by the server's own config loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from external_server_operator.models import ExternalServerSpec
from external_server_operator.render import render_children, secret_env_name
from external_server_operator.settings import Settings
from operator_fixtures import OWNER, spec_dict

loading = pytest.importorskip(
    "external_server.config.loading",
    reason="external_server.config.loading (the server's config loader) does not exist yet",
)


def _with_libraries(tmp_path: Path) -> ExternalServerSpec:
    """The sample spec with module libraries that exist (the loader checks lib_path)."""
    data = spec_dict(shards=2)
    for i, module in enumerate([*data["modules"], *(m for c in data["cars"] for m in c.get("modules", []))]):
        lib = tmp_path / f"lib{i}.so"
        lib.write_bytes(b"")
        module["library"] = str(lib)
    return ExternalServerSpec.model_validate(data)


def test_rendered_configs_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _with_libraries(tmp_path)
    monkeypatch.setenv(secret_env_name("acme-api", "token"), "token-from-secret")
    monkeypatch.setenv(secret_env_name("car-b-io", "password"), "password-from-secret")
    children = render_children(OWNER, s, {}, Settings())
    assert len(children.configs) == 2
    for shard, text in children.configs.items():
        path = tmp_path / f"config-{shard}.json"
        path.write_text(text)
        config = loading.load_config(path)
        assert config.company_name == "acme_corp"
        assert set(config.cars) == {c for c, sh in children.assignment.items() if sh == shard}


def test_loader_rejects_what_the_operator_reports_invalid(tmp_path: Path) -> None:
    s = _with_libraries(tmp_path)
    children = render_children(OWNER, s, {}, Settings())
    doc = json.loads(next(iter(children.configs.values())))
    first_car = next(iter(doc["cars"]))
    doc["cars"][first_car]["specific_modules"] = {"1000": doc["common_modules"]["1000"]}
    path = tmp_path / "conflict.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(loading.ConfigError):
        loading.load_config(path)
