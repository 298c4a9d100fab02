"""Server construction: module loading and the module-number check (§5.6, §8.1 items 17, 18)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from external_server.app import CompanyServer, StartupError
from external_server.cli import CliOptions
from external_server.config.loading import load_config
from support.example_module import build_example


def _config(tmp_path: Path, lib_path: Path, module_key: str = "1000") -> Path:
    document = {
        "company_name": "company",
        "external_communication": {
            "protocol": "MQTT",
            "server_address": "127.0.0.1",
            "server_port": 1,
            "timeout_ms": 1000,
        },
        "timeout": 1,
        "send_invalid_command": False,
        "sleep_duration_after_connection_refused": 0.1,
        "common_modules": {module_key: {"lib_path": str(lib_path), "config": {}}},
        "cars": {"car_a": {}, "car_b": {}},
        "logging": {"console": {"level": "INFO", "use": False}, "file": {"level": "INFO", "use": False}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    """A private copy of the example module, so a test may delete it."""
    copy = tmp_path / "libexample_copy.so"
    shutil.copy(build_example(), copy)
    return copy


def test_item_18_matching_module_number_builds_every_car(tmp_path: Path, example_copy: Path) -> None:
    """§8.1 item 18: key "1000" for the example module → the server is created, one context per car."""
    path = _config(tmp_path, example_copy)
    server = CompanyServer(load_config(path), CliOptions(config_path=path))
    server.build()
    try:
        assert [len(unit.runtimes) for unit in server.cars.values()] == [1, 1]
        first, second = (unit.runtimes[0].context for unit in server.cars.values())
        assert first.pointer != second.pointer, "each car must own its context (§7)"
    finally:
        server._stop_modules()


def test_item_18_module_number_mismatch_fails_startup(tmp_path: Path, example_copy: Path) -> None:
    """§8.1 item 18: key "111111111" for the example module → creation fails naming both numbers."""
    path = _config(tmp_path, example_copy, module_key="111111111")
    server = CompanyServer(load_config(path), CliOptions(config_path=path))
    with pytest.raises(StartupError, match="Module number '1000' returned from API does not match module ID"):
        server.build()


def test_item_17_library_disappearing_after_validation(tmp_path: Path, example_copy: Path) -> None:
    """§8.1 item 17: the file validated at load is gone at init → a clear startup error naming it."""
    path = _config(tmp_path, example_copy)
    config = load_config(path)
    example_copy.unlink()
    server = CompanyServer(config, CliOptions(config_path=path))
    with pytest.raises(StartupError, match=r"libexample_copy\.so"):
        server.build()
