"""Fixtures shared by the integration tests (real broker, real processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest's default "prepend" import mode puts this directory on sys.path.
from mosquitto_broker import MosquittoBroker, running_mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh mosquitto on a free loopback port; ``.stop()``/``.start()`` restart it on the same port."""
    with running_mosquitto(tmp_path) as broker:
        yield broker
