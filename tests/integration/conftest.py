"""Fixtures shared by the integration tests (real broker, real processes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest's default "prepend" import mode puts this directory on sys.path.
from mosquitto_broker import MosquittoBroker, find_mosquitto


def _require_real_parts() -> bool:
    return os.environ.get("FLEET_REQUIRE_REAL_PARTS") == "1"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh mosquitto on a free loopback port; ``.stop()``/``.start()`` restart it on the same port."""
    binary = find_mosquitto()
    if binary is None:
        reason = "mosquitto is not installed (apt-get install mosquitto)"
        if _require_real_parts():
            pytest.fail(f"{reason}; FLEET_REQUIRE_REAL_PARTS=1 requires it")
        pytest.skip(reason)
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = MosquittoBroker(binary, workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
