"""The example module (lib/modules/example) through the real ctypes binding (docs/protocol.md §5, §5.8).

Nothing on the C side is mocked: the session fixture builds libexample.so with
make and every test drives it through ModuleLibrary / ModuleContext.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from external_server.device import Device
from external_server.modules import (
    CONTEXT_INCORRECT,
    NOT_OK,
    OK,
    TIMEOUT_OCCURRED,
    DisconnectType,
    ModuleContext,
    ModuleInitError,
    ModuleLibrary,
    ModuleLoadError,
    build_init_config,
)
from external_server.modules.abi import Buffer, DeviceIdentification
from external_server.modules.convert import Arena
from support.example_module import build_example, counters, drop_command_file, push

ROOT = Path(__file__).resolve().parents[2]
MODULE_SRC = ROOT / "lib" / "modules" / "example"
MODULES_OUT = ROOT / "build" / "modules"
CC = os.environ.get("CC", "cc")

BUTTON = Device(1000, 0, "button", "left button")
LAMP = Device(1000, 0, "lamp", "front lamp")


def _make(*targets: str) -> None:
    build_example(*targets)


@pytest.fixture(scope="session")
def example_so() -> Path:
    """Build (make is incremental) and return build/modules/libexample.so."""
    _make()
    return MODULES_OUT / "libexample.so"


@pytest.fixture(scope="session")
def library(example_so: Path) -> ModuleLibrary:
    return ModuleLibrary.load(example_so)


ContextFactory = Callable[..., ModuleContext]


@pytest.fixture
def make_context(library: ModuleLibrary) -> Iterator[ContextFactory]:
    """Create contexts from module config; every one is destroyed at teardown."""
    created: list[ModuleContext] = []

    def factory(module_config: Mapping[str, str | int] | None = None, **kwargs: str | int) -> ModuleContext:
        context = library.init(build_init_config("company", "car", {**(module_config or {}), **kwargs}))
        created.append(context)
        return context

    yield factory
    for context in created:
        context.destroy()


# ---- loading and init -------------------------------------------------------


def test_module_number_is_1000(make_context: ContextFactory, library: ModuleLibrary) -> None:
    """§8.6 item 82: the adapter for the example module exists and reports id 1000."""
    context = make_context()
    assert library.get_module_number() == 1000
    assert context.get_module_number() == 1000


def test_library_is_loaded_once_per_path(example_so: Path, library: ModuleLibrary) -> None:
    assert ModuleLibrary.load(example_so) is library
    assert ModuleLibrary.load(str(example_so.parent / ".." / "modules" / example_so.name)) is library


def test_missing_file_raises_module_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "libnothing.so"
    with pytest.raises(ModuleLoadError, match=str(missing)):
        ModuleLibrary.load(missing)


def test_not_a_library_raises_module_load_error(tmp_path: Path) -> None:
    bogus = tmp_path / "libbogus.so"
    bogus.write_text("not an ELF file")
    with pytest.raises(ModuleLoadError, match=str(bogus)):
        ModuleLibrary.load(bogus)


def test_missing_symbol_raises_module_load_error(tmp_path: Path) -> None:
    """A real .so exporting only part of §5.3 must be refused, naming the path and the symbols."""
    source = tmp_path / "partial.c"
    source.write_text("int get_module_number(void) { return 7; }\n")
    partial = tmp_path / "libpartial.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(partial), str(source)], check=True)
    with pytest.raises(ModuleLoadError, match=str(partial)) as caught:
        ModuleLibrary.load(partial)
    assert "pop_command" in str(caught.value)
    assert "get_module_number" not in str(caught.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"supported_device_types": "0,x"},
        {"supported_device_types": "1,,2"},
        {"supported_device_types": "-1"},
        {"supported_device_types": "4294967296"},
        {"echo_every": "-1"},
        {"echo_every": ""},
        {"echo_every": "two"},
        {"command_dir": "/nonexistent/fleet-command-dir"},
        {"command_dir_poll_ms": "0"},
    ],
)
def test_init_with_invalid_config_raises(library: ModuleLibrary, bad: dict[str, str]) -> None:
    with pytest.raises(ModuleInitError, match="init returned NULL"):
        library.init(build_init_config("company", "car", bad))


def test_init_ignores_unknown_keys(make_context: ContextFactory) -> None:
    context = make_context({"whatever": "x", "timeout_ms": 5})
    assert context.wait_for_command(0) == TIMEOUT_OCCURRED


def test_build_init_config_order_and_override() -> None:
    """§5.6 step 3: company and car first; module values override in place, never repeated."""
    assert build_init_config("c", "v", {}) == [("company_name", "c"), ("car_name", "v")]
    assert build_init_config(
        "c", "v", {"a": 10, "car_name": "x", "flag": True, "off": False, "company_name": 3}
    ) == [
        ("company_name", "3"),
        ("car_name", "x"),
        ("a", "10"),
        ("flag", "1"),
        ("off", "0"),
    ]


# ---- device types, connect, disconnect ------------------------------------


def test_supported_device_types_from_config(make_context: ContextFactory, library: ModuleLibrary) -> None:
    """is_device_type_supported has no context: it answers for the union of live contexts."""
    context = make_context(supported_device_types="0, 4242,17")
    assert context.is_device_type_supported(4242)
    assert context.is_device_type_supported(17)
    assert context.is_device_type_supported(0)
    assert not context.is_device_type_supported(4243)
    context.destroy()
    assert not library.is_device_type_supported(4242)


def test_connect_then_announced_disconnect_returns_ok(make_context: ContextFactory) -> None:
    """§8.6 item 83: device_connected → 0, then device_disconnected(announced) → 0."""
    context = make_context()
    assert context.device_connected(BUTTON) == OK
    assert context.device_disconnected(DisconnectType.ANNOUNCED, BUTTON) == OK
    assert counters(context).devices == 0


def test_disconnect_of_unknown_device_is_not_ok(make_context: ContextFactory) -> None:
    context = make_context()
    assert context.device_disconnected(DisconnectType.TIMEOUT, BUTTON) == NOT_OK
    assert context.device_connected(BUTTON) == OK
    assert context.device_disconnected(DisconnectType.ERROR, Device(1000, 1, "button")) == NOT_OK
    assert context.device_disconnected(7, BUTTON) == NOT_OK
    assert context.device_disconnected(DisconnectType.TIMEOUT, Device(1000, 0, "button", "other name")) == OK
    assert context.device_disconnected(DisconnectType.TIMEOUT, BUTTON) == NOT_OK


def test_reconnect_of_known_device_updates_it(make_context: ContextFactory) -> None:
    context = make_context(command_on_connect="hello")
    assert context.device_connected(BUTTON) == OK
    assert context.device_connected(Device(1000, 0, "button", "renamed", 3)) == OK
    found = counters(context)
    assert (found.devices, found.connects) == (1, 2)
    context.pop_command()
    assert context.pop_command().device == Device(1000, 0, "button", "renamed", 3)


def test_reject_roles(make_context: ContextFactory) -> None:
    context = make_context(reject_roles="lamp, horn")
    assert context.device_connected(LAMP) == NOT_OK
    assert context.device_connected(BUTTON) == OK
    assert counters(context).devices == 1


def test_empty_role_is_refused_without_calling_module(make_context: ContextFactory) -> None:
    """§10 item 9 / §4.9: an empty role is a failed call; the module never sees it."""
    context = make_context(echo_every=1)
    nameless = Device(1000, 0, "", "x")
    assert context.device_connected(nameless) == NOT_OK
    assert context.forward_status(b"s", nameless) == NOT_OK
    assert context.forward_error_message(b"e", nameless) == NOT_OK
    assert context.command_ack(b"c", nameless) == NOT_OK
    assert context.device_disconnected(DisconnectType.ANNOUNCED, nameless) == NOT_OK
    found = counters(context)
    assert (found.connects, found.statuses, found.error_messages, found.acks) == (0, 0, 0, 0)


# ---- forwarding and counters ----------------------------------------------


def test_forwarding_calls_return_ok_and_are_counted(make_context: ContextFactory) -> None:
    context = make_context()
    assert context.device_connected(BUTTON) == OK
    assert context.forward_status(b'{"pressed": true}', BUTTON) == OK
    assert context.forward_status(b"", BUTTON) == OK
    assert context.forward_error_message(b"oops", BUTTON) == OK
    assert context.command_ack(b"cmd", BUTTON) == OK
    found = counters(context)
    assert (found.statuses, found.error_messages, found.acks, found.queued) == (2, 1, 1, 0)


def test_echo_every_queues_status_bytes(make_context: ContextFactory) -> None:
    context = make_context(echo_every=3)
    context.device_connected(BUTTON)
    for index in range(7):
        assert context.forward_status(f"status {index}".encode(), BUTTON) == OK
    assert [context.pop_command().data for _ in range(2)] == [b"status 2", b"status 5"]
    assert context.pop_command().remaining == NOT_OK


def test_echo_every_uses_command_data_when_set(make_context: ContextFactory) -> None:
    context = make_context(echo_every=1, command_data='{"lit_up": false}')
    context.device_connected(LAMP)
    context.forward_status(b"ignored", LAMP)
    popped = context.pop_command()
    assert (popped.remaining, popped.data, popped.device) == (0, b'{"lit_up": false}', LAMP)


def test_echo_is_only_for_connected_devices(make_context: ContextFactory) -> None:
    context = make_context(echo_every=1)
    assert context.forward_status(b"x", BUTTON) == OK
    assert counters(context).queued == 0


def test_echo_copies_input_and_keeps_binary_bytes(make_context: ContextFactory) -> None:
    """§5.4: the module copies inputs; bytes (NULs, non-UTF-8) round-trip unchanged."""
    context = make_context(echo_every=1)
    context.device_connected(BUTTON)
    payload = bytes(range(256)) * 4
    context.forward_status(bytearray(payload), BUTTON)
    assert context.pop_command().data == payload


def test_command_on_connect(make_context: ContextFactory) -> None:
    context = make_context(command_on_connect='{"lit_up": true}')
    assert context.device_connected(LAMP) == OK
    assert context.wait_for_command(0) == OK
    popped = context.pop_command()
    assert (popped.remaining, popped.data, popped.device) == (0, b'{"lit_up": true}', LAMP)


def test_no_command_without_configuration(make_context: ContextFactory) -> None:
    context = make_context()
    context.device_connected(BUTTON)
    context.forward_status(b"x", BUTTON)
    assert context.wait_for_command(0) == TIMEOUT_OCCURRED


def test_commands_stay_queued_after_disconnect(make_context: ContextFactory) -> None:
    """Stale-command policy belongs to the server (§5.7), so the module keeps them."""
    context = make_context(command_on_connect="c")
    context.device_connected(BUTTON)
    context.device_disconnected(DisconnectType.ANNOUNCED, BUTTON)
    assert context.pop_command().data == b"c"


# ---- pop_command -------------------------------------------------------------


def test_pop_command_returns_remaining_count(make_context: ContextFactory) -> None:
    """Three queued → 2, 1, 0, then NOT_OK; FIFO order and the device of each command."""
    context = make_context()
    for index, device in enumerate((BUTTON, LAMP, BUTTON)):
        assert push(context, device, f"cmd {index}".encode()) == OK
    popped = [context.pop_command() for _ in range(4)]
    assert [p.remaining for p in popped] == [2, 1, 0, NOT_OK]
    assert [p.data for p in popped] == [b"cmd 0", b"cmd 1", b"cmd 2", b""]
    assert [p.device for p in popped] == [BUTTON, LAMP, BUTTON, None]
    assert counters(context).commands_popped == 3


def test_pop_command_decodes_invalid_utf8_role_without_failing(make_context: ContextFactory) -> None:
    context = make_context()
    function = context.library.cdll["example_push_command"]
    function.argtypes = [ctypes.c_void_p, DeviceIdentification, Buffer]
    arena = Arena()
    ident = DeviceIdentification(1000, 2, arena.buffer(b"r\xffle"), arena.buffer(b""), 0)
    assert function(context.pointer, ident, arena.buffer(b"")) == OK
    popped = context.pop_command()
    assert popped.device == Device(1000, 2, "r\ufffdle", "")
    assert popped.data == b""


def test_allocate_and_deallocate(library: ModuleLibrary) -> None:
    """deallocate frees module memory, zeroes the buffer and accepts data == NULL."""
    buffer = Buffer()
    library.functions.deallocate(ctypes.byref(buffer))
    assert library.functions.allocate(ctypes.byref(buffer), 64) == OK
    assert buffer.data and buffer.size_in_bytes == 64
    library.functions.deallocate(ctypes.byref(buffer))
    assert (buffer.data, buffer.size_in_bytes) == (None, 0)


# ---- command_dir -------------------------------------------------------------


def test_command_dir_injection_in_name_order(make_context: ContextFactory, tmp_path: Path) -> None:
    """Files are taken in name order, one command each, deleted after reading; no device needed."""
    context = make_context(command_dir=str(tmp_path), command_dir_poll_ms=5)
    drop_command_file(tmp_path, "002.cmd", b'1000 0 lamp front lamp\n{"lit_up": true}\nsecond line')
    drop_command_file(tmp_path, "001.cmd", b"1000 3 button\n")
    drop_command_file(tmp_path, "003.cmd", b"-5 7 horn")
    (tmp_path / "ignored.txt").write_text("1000 0 x\ny")
    assert context.wait_for_command(1000) == OK
    popped = [context.pop_command() for _ in range(3)]
    assert [p.remaining for p in popped] == [2, 1, 0]
    assert popped[0].device == Device(1000, 3, "button", "")
    assert popped[0].data == b""
    assert popped[1].device == LAMP
    assert popped[1].data == b'{"lit_up": true}\nsecond line'
    assert popped[2].device == Device(-5, 7, "horn", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ignored.txt"]


def test_command_dir_file_dropped_while_waiting(make_context: ContextFactory, tmp_path: Path) -> None:
    context = make_context(command_dir=str(tmp_path), command_dir_poll_ms=5)
    timer = threading.Timer(0.1, drop_command_file, (tmp_path, "a.cmd", b"1000 0 button left button\nx"))
    timer.start()
    try:
        assert context.wait_for_command(5000) == OK  # woken by the file, not ended by the timeout
    finally:
        timer.join()
    popped = context.pop_command()
    assert (popped.remaining, popped.data, popped.device) == (0, b"x", BUTTON)


@pytest.mark.parametrize("content", [b"", b"1000 0\nx", b"abc 0 r\n", b"1000 -1 r\n", b"1000 0  name\n"])
def test_command_dir_malformed_file_is_set_aside(
    make_context: ContextFactory, tmp_path: Path, content: bytes
) -> None:
    context = make_context(command_dir=str(tmp_path))
    drop_command_file(tmp_path, "bad.cmd", content)
    assert context.wait_for_command(0) == TIMEOUT_OCCURRED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.cmd.bad"]
    assert counters(context).bad_command_files == 1


def test_command_dir_unreadable_entry_is_set_aside_not_retried(
    make_context: ContextFactory, tmp_path: Path
) -> None:
    context = make_context(command_dir=str(tmp_path))
    (tmp_path / "dir.cmd").mkdir()
    assert context.wait_for_command(0) == TIMEOUT_OCCURRED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.cmd.bad"]
    assert counters(context).bad_command_files == 1


# ---- wait_for_command ------------------------------------------------------


def test_wait_for_command_honours_timeout(make_context: ContextFactory) -> None:
    context = make_context()
    started = time.monotonic()
    assert context.wait_for_command(200) == TIMEOUT_OCCURRED
    assert time.monotonic() - started >= 0.19  # waited out its timeout
    started = time.monotonic()
    assert context.wait_for_command(0) == TIMEOUT_OCCURRED
    assert context.wait_for_command(-5) == TIMEOUT_OCCURRED
    assert time.monotonic() - started < 5.0  # no wait at all; the bound only guards against a hang


def test_wait_for_command_wakes_early_from_another_thread(make_context: ContextFactory) -> None:
    context = make_context(echo_every=1)
    context.device_connected(BUTTON)
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(context.wait_for_command(10_000)))
    waiter.start()
    time.sleep(0.1)  # most likely inside the wait by now; if not, OK comes at once (never flaky)
    assert context.forward_status(b"wake up", BUTTON) == OK
    waiter.join(5)
    assert result == [OK]  # within the join's 5 s: woken, not ended by its 10 s timeout
    assert context.pop_command().data == b"wake up"


def test_wait_for_command_returns_ok_while_commands_remain(make_context: ContextFactory) -> None:
    context = make_context()
    push(context, BUTTON, b"a")
    assert context.wait_for_command(0) == OK
    assert context.wait_for_command(0) == OK
    context.pop_command()
    assert context.wait_for_command(0) == TIMEOUT_OCCURRED


def test_concurrent_wait_pop_and_forward(make_context: ContextFactory) -> None:
    """§5.5: wait_for_command runs unlocked beside serialized forward/pop/ack calls; nothing is lost."""
    context = make_context(echo_every=2)
    context.device_connected(BUTTON)
    server_lock = threading.Lock()
    stop = threading.Event()
    received: list[bytes] = []
    errors: list[int] = []

    def worker() -> None:
        while not stop.is_set() or counters(context).queued:
            rc = context.wait_for_command(20)
            if rc == TIMEOUT_OCCURRED:
                continue
            if rc != OK:
                errors.append(rc)
                return
            while True:
                with server_lock:
                    popped = context.pop_command()
                    if popped.ok:
                        received.append(popped.data)
                        context.command_ack(popped.data, BUTTON)
                if popped.remaining <= 0:
                    break

    thread = threading.Thread(target=worker)
    thread.start()
    for index in range(2000):
        with server_lock:
            assert context.forward_status(f"{index}".encode(), BUTTON) == OK
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert errors == []
    assert received == [f"{index}".encode() for index in range(1, 2000, 2)]
    found = counters(context)
    assert (found.statuses, found.acks, found.queued) == (2000, 1000, 0)


# ---- destroy ------------------------------------------------------------------


def test_destroy_is_idempotent(library: ModuleLibrary) -> None:
    context = library.init(build_init_config("company", "car", {}))
    context.device_connected(BUTTON)
    assert context.destroy() == OK
    assert context.destroyed
    assert context.destroy() == OK
    assert context.device_connected(BUTTON) == CONTEXT_INCORRECT
    assert context.forward_status(b"x", BUTTON) == CONTEXT_INCORRECT
    assert context.wait_for_command(0) == CONTEXT_INCORRECT
    assert context.pop_command().remaining == CONTEXT_INCORRECT


def test_module_checks_null_context_itself(library: ModuleLibrary) -> None:
    functions = library.functions
    arena = Arena()
    ident = arena.device(BUTTON)
    assert functions.wait_for_command(0, None) == CONTEXT_INCORRECT
    assert functions.forward_status(arena.buffer(b""), ident, None) == CONTEXT_INCORRECT
    assert functions.pop_command(ctypes.byref(Buffer()), ctypes.byref(DeviceIdentification()), None) == (
        CONTEXT_INCORRECT
    )
    assert functions.destroy(ctypes.byref(ctypes.c_void_p())) == NOT_OK


def test_destroy_wakes_a_blocked_waiter(library: ModuleLibrary) -> None:
    """The server joins its waiter before destroy; the module still copes if it does not."""
    context = library.init(build_init_config("company", "car", {}))
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(context.wait_for_command(10_000)))
    waiter.start()
    time.sleep(0.1)  # most likely blocked by now; if not, the wait finds the context gone
    assert context.destroy() == OK
    waiter.join(5)
    assert result == [CONTEXT_INCORRECT]  # within the join's 5 s: woken, not ended by its 10 s timeout


# ---- C-level checks -------------------------------------------------------------


def test_thread_sanitizer_stress() -> None:
    """lib/modules/example/stress.c under ThreadSanitizer: the §5.5 threading model is race-free."""
    _make("tsan")
    command = [str(MODULES_OUT / "example_stress_tsan")]
    env = {**os.environ, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"}
    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env)
    if "unexpected memory mapping" in run.stderr and shutil.which("setarch"):
        # Kernels with high mmap entropy break TSan's shadow layout; without ASLR it runs.
        command = ["setarch", os.uname().machine, "-R", *command]
        run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "stress ok" in run.stdout


def test_header_has_c_linkage_for_cpp(example_so: Path, tmp_path: Path) -> None:
    """A C++ program including the header links against the C library (extern "C" guards work)."""
    if shutil.which("c++") is None:
        pytest.skip("c++ not installed")
    source = tmp_path / "probe.cpp"
    source.write_text(
        "#include <fleet_protocol/external_server_interface.h>\n"
        "int main() {\n"
        "    struct buffer b = {nullptr, 0};\n"
        "    if (allocate(&b, 8) != OK) return 2;\n"
        "    deallocate(&b);\n"
        "    return get_module_number() == 1000 && is_device_type_supported(0) == OK ? 0 : 1;\n"
        "}\n"
    )
    exe = tmp_path / "probe"
    subprocess.run(
        ["c++", f"-I{ROOT / 'lib' / 'include'}", "-o", str(exe), str(source), str(example_so)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert subprocess.run([str(exe)], check=False).returncode == 0
