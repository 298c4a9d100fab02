"""The command-waiting loop in C (external_server.native) and its Python fallback (docs/protocol.md §5.7)."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator

import pytest
from external_server import native
from external_server.device import Device
from external_server.modules import OK, TIMEOUT_OCCURRED, ModuleContext, ModuleLibrary, build_init_config
from external_server.modules import context as context_module
from support.example_module import build_example, push

DEVICE = Device(1000, 0, "lamp", "front lamp")


@pytest.fixture(params=["native", "python"])
def context(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleContext]:
    if request.param == "native":
        assert native.WAIT_UNTIL_EVENT is not None, "the C helper was not built (pip install -e . builds it)"
    else:
        monkeypatch.setattr(context_module, "WAIT_UNTIL_EVENT", None)
    library = ModuleLibrary.load(build_example())
    created = library.init(build_init_config("company", "car", {}))
    yield created
    created.destroy()


def test_returns_ok_as_soon_as_a_command_is_queued(context: ModuleContext) -> None:
    """Timeouts are repeated inside the loop; a command pushed from another thread ends it with OK."""
    stop = ctypes.c_int(0)
    assert context.device_connected(DEVICE) == OK
    timer = threading.Timer(0.3, lambda: push(context, DEVICE, b"cmd"))
    timer.start()
    started = time.monotonic()
    rc = context.wait_for_event(50, stop)  # several 50 ms timeouts pass before the push
    elapsed = time.monotonic() - started
    timer.join()
    assert rc == OK
    assert 0.2 < elapsed < 5.0
    assert context.pop_command().data == b"cmd"


def test_stop_flag_ends_the_loop_within_one_timeout(context: ModuleContext) -> None:
    stop = ctypes.c_int(0)
    threading.Timer(0.2, lambda: setattr(stop, "value", 1)).start()
    started = time.monotonic()
    assert context.wait_for_event(100, stop) == TIMEOUT_OCCURRED
    assert time.monotonic() - started < 3.0
