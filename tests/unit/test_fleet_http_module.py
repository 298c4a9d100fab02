"""The fleet_http modules (lib/modules/fleet_http) against the HTTP API double (docs/http-bridge.md §3, §4).

Nothing on the C side is mocked: the session fixture builds the three libraries
with make and every test drives them through the project's ctypes binding
(ModuleLibrary / ModuleContext). The API side is tests/support/http_api_double.py,
an in-process test double of the Fleet Protocol HTTP API on a free loopback port
with T_api = 1 s. Test names carry the §4 check ("c4_…") or §3 fix ("f3_…") they show.
"""

from __future__ import annotations

import ctypes
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

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
    PoppedCommand,
    build_init_config,
)
from external_server.modules.abi import Buffer, DeviceIdentification
from external_server.modules.convert import Arena
from support.fleet_http_module import (
    COMPANY,
    REQUIRE_REAL_PARTS,
    build_fleet_http,
    library_path,
    module_config,
    stats,
)
from support.http_api_double import FleetHttpApiDouble, UnresponsiveHost, message
from support.waiting import free_port, wait_until_blocking

T_API_S = 1.0

MISSION_DEVICE = Device(1, 1, "autonomy", "Autonomy")
IO_DEVICE = Device(2, 3, "button", "Button")
TRANSPARENT_DEVICE = Device(3, 1, "test_device_1", "Test_Device_1")
DEVICES = {1: MISSION_DEVICE, 2: IO_DEVICE, 3: TRANSPARENT_DEVICE}

MISSION_STATUS = {
    "state": "IDLE",
    "telemetry": {"speed": 0, "fuel": 1, "position": {"x": 1}},
    "nextStop": None,
}
IO_STATUS = [[1, 0], [0, 1], {"butPr": 0}]
TRANSPARENT_STATUS = {"content": "x", "timestamp": 111}
STATUSES: dict[int, Any] = {1: MISSION_STATUS, 2: IO_STATUS, 3: TRANSPARENT_STATUS}


def mission_command(index: int) -> dict[str, Any]:
    return {"action": "START", "route": f"route_{index}", "stops": [{"name": f"stop {index}"}]}


def io_command(index: int) -> list[dict[str, int]]:
    return [{"outNum": index, "actType": 2}]


def transparent_command(index: int) -> dict[str, Any]:
    return {"command": index, "text": f"c{index}"}


COMMANDS: dict[int, Callable[[int], Any]] = {1: mission_command, 2: io_command, 3: transparent_command}


def io_bytes(index: int) -> bytes:
    """io's normalised command format: outNum first, then actType (§2.5)."""
    return f'[{{"outNum":{index},"actType":2}}]'.encode()


def compact(data: Any) -> bytes:
    """Compact JSON with sorted keys: the command bytes the modules hand to the server (§2.5)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def command_for(device: Device, data: Any, **kwargs: str) -> dict[str, Any]:
    return message(device.module, device.device_type, device.role, device.name, data, **kwargs)


def pop_all(context: ModuleContext) -> list[PoppedCommand]:
    popped = []
    while True:
        command = context.pop_command()
        if not command.ok:
            return popped
        popped.append(command)
        if command.remaining == 0:
            return popped


def receive(context: ModuleContext, count: int, timeout_s: float = T_API_S + 2) -> list[PoppedCommand]:
    """wait_for_command + pop_command until ``count`` commands arrived (the server's worker loop)."""
    received: list[PoppedCommand] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        if context.wait_for_command(100) == OK:
            received.extend(pop_all(context))
    return received


# ---- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def libraries() -> dict[int, ModuleLibrary]:
    result = build_fleet_http()
    if not result.built:
        reason = f"fleet_http modules not built: {result.output}"
        if REQUIRE_REAL_PARTS:
            pytest.fail(f"{reason}; FLEET_REQUIRE_REAL_PARTS=1 requires them")
        pytest.skip(reason)
    return {module_id: ModuleLibrary.load(library_path(module_id)) for module_id in (1, 2, 3)}


@pytest.fixture
def api() -> Iterator[FleetHttpApiDouble]:
    with FleetHttpApiDouble(t_api_s=T_API_S) as double:
        yield double


ContextFactory = Callable[..., ModuleContext]


@pytest.fixture
def contexts(libraries: dict[int, ModuleLibrary]) -> Iterator[ContextFactory]:
    """init() a module context (§4 setup config plus overrides); all destroyed at teardown."""
    created: list[ModuleContext] = []

    def factory(module_id: int, api_url: str, car: str = "car_a", **overrides: str | int) -> ModuleContext:
        config = module_config(api_url, **overrides)
        context = libraries[module_id].init(build_init_config(COMPANY, car, config))
        created.append(context)
        return context

    yield factory
    for context in created:
        context.destroy()


def announce(context: ModuleContext, device: Device | None = None, status: Any = None) -> None:
    """A first status makes the car and device known to the API; then the context primes."""
    module_id = context.get_module_number()
    device = device or DEVICES[module_id]
    data = STATUSES[module_id] if status is None else status
    assert context.forward_status(json.dumps(data).encode(), device) == OK
    wait_until_blocking(lambda: stats(context)["primed"] == 1, 3.0, "primed")


# ---- §4.1 init ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module_id", [1, 2, 3])
def test_c1_valid_config_and_identity(
    contexts: ContextFactory, api: FleetHttpApiDouble, module_id: int
) -> None:
    context = contexts(module_id, api.base_url)
    assert context.get_module_number() == module_id
    assert context.device_connected(DEVICES[module_id]) == OK


@pytest.mark.parametrize("module_id", [1, 2, 3])
@pytest.mark.parametrize(
    "override",
    [
        {"api_url": "ftp://127.0.0.1:8089/v2/protocol"},
        {"api_url": "http://h:port"},
        {"api_url": "HTTP://h/v2/protocol"},
        {"api_url": "http://user@h/v2/protocol"},
        {"api_url": "http://[::1]:8089/v2/protocol"},
        {"api_url": "http://h/v2/protocol?x=1"},
        {"api_url": "http://h/v2/%20"},
        {"api_url": "http://h..x/v2"},
        {"api_key": ""},
        {"company_name": "Company_X"},
        {"company_name": ""},
        {"car_name": "car-a"},
        {"max_requests_threshold_count": "-1"},
        {"retry_requests_delay_ms": "abc"},
        {"delay_after_threshold_reached_ms": "2147483648"},
        {"connect_timeout_ms": "0"},
        {"status_base64_fallback": "2"},
    ],
)
def test_c1_invalid_value_makes_init_return_null(
    libraries: dict[int, ModuleLibrary], module_id: int, override: dict[str, str]
) -> None:
    config = {**module_config("http://127.0.0.1:8089/v2/protocol"), **override}
    with pytest.raises(ModuleInitError):
        libraries[module_id].init(build_init_config(COMPANY, "car_a", config))


@pytest.mark.parametrize("module_id", [1, 2, 3])
@pytest.mark.parametrize("missing", ["api_url", "api_key"])
def test_c1_missing_url_or_key_makes_init_return_null(
    libraries: dict[int, ModuleLibrary], module_id: int, missing: str
) -> None:
    config = module_config("http://127.0.0.1:8089/v2/protocol")
    del config[missing]
    with pytest.raises(ModuleInitError):
        libraries[module_id].init(build_init_config(COMPANY, "car_a", config))


def test_c1_missing_company_or_car_makes_init_return_null(libraries: dict[int, ModuleLibrary]) -> None:
    pairs = [("car_name", "car_a"), ("api_url", "http://127.0.0.1:1/v2/protocol"), ("api_key", "k")]
    with pytest.raises(ModuleInitError):
        libraries[3].init(pairs)
    with pytest.raises(ModuleInitError):
        libraries[3].init([("company_name", "company_x"), *pairs[1:]])


@pytest.mark.parametrize("module_id", [1, 2, 3])
def test_c1_missing_int_keys_are_defaulted(libraries: dict[int, ModuleLibrary], module_id: int) -> None:
    pairs = [("api_url", "http://127.0.0.1:1/v2/protocol"), ("api_key", "DefaultKey"), ("other", "x")]
    context = libraries[module_id].init(build_init_config(COMPANY, "car_a", dict(pairs)))
    assert context.destroy() == OK


def test_c1_first_occurrence_of_a_key_wins(libraries: dict[int, ModuleLibrary]) -> None:
    base = [("company_name", COMPANY), ("car_name", "car_a"), ("api_url", "http://127.0.0.1:1/v2/protocol")]
    context = libraries[3].init([*base, ("api_key", "DefaultKey"), ("api_key", "")])
    assert context.destroy() == OK
    with pytest.raises(ModuleInitError):
        libraries[3].init([*base, ("api_key", ""), ("api_key", "DefaultKey")])


@pytest.mark.parametrize(
    ("module_id", "value", "valid"),
    [
        (1, "10", True),
        (1, "-0", True),
        (1, "10ms", False),
        (1, "+10", False),
        (1, " 10", False),
        (2, "10ms", True),
        (2, " +10", True),
        (2, "-0", True),
        (2, "x10", False),
        (3, "10ms", True),
        (3, "2147483647", True),
        (3, "99999999999", False),
    ],
)
def test_c1_integer_parsing_per_module(
    libraries: dict[int, ModuleLibrary], module_id: int, value: str, valid: bool
) -> None:
    """§2.2: mission parses the whole string; io and transparent behave like std::stoi."""
    config = module_config("http://127.0.0.1:1/v2/protocol", retry_requests_delay_ms=value)
    if valid:
        assert libraries[module_id].init(build_init_config(COMPANY, "car_a", config)).destroy() == OK
    else:
        with pytest.raises(ModuleInitError):
            libraries[module_id].init(build_init_config(COMPANY, "car_a", config))


@pytest.mark.parametrize(
    ("url", "mission", "others"),
    [
        ("http://127.0.0.1", True, True),
        ("https://http-api:8080/v2/protocol", True, True),
        ("http://h/v2/protocol/", True, True),
        ("http://h/v2//protocol", False, True),
        ("http://h/v2/protocol//", False, True),
    ],
)
def test_c1_url_path_rules_per_module(
    libraries: dict[int, ModuleLibrary], url: str, mission: bool, others: bool
) -> None:
    """§2.2: mission allows one trailing '/' and no empty segments; io/transparent allow empty segments."""
    for module_id, valid in ((1, mission), (2, others), (3, others)):
        config = module_config(url)
        if valid:
            assert libraries[module_id].init(build_init_config(COMPANY, "car_a", config)).destroy() == OK
        else:
            with pytest.raises(ModuleInitError):
                libraries[module_id].init(build_init_config(COMPANY, "car_a", config))


@pytest.mark.parametrize("module_id", [1, 2, 3])
def test_c1_null_context(libraries: dict[int, ModuleLibrary], module_id: int) -> None:
    """NULL context → CONTEXT_INCORRECT everywhere except command_ack (OK); destroy(NULL) → NOT_OK."""
    functions = libraries[module_id].functions
    arena = Arena()
    ident = arena.device(DEVICES[module_id])
    data = arena.buffer(b"{}")
    assert functions.forward_status(data, ident, None) == CONTEXT_INCORRECT
    assert functions.forward_error_message(data, ident, None) == CONTEXT_INCORRECT
    assert functions.device_connected(ident, None) == CONTEXT_INCORRECT
    assert functions.device_disconnected(0, ident, None) == CONTEXT_INCORRECT
    assert functions.wait_for_command(0, None) == CONTEXT_INCORRECT
    assert functions.pop_command(ctypes.byref(Buffer()), ctypes.byref(DeviceIdentification()), None) == (
        CONTEXT_INCORRECT
    )
    assert functions.command_ack(data, ident, None) == OK
    assert functions.destroy(ctypes.byref(ctypes.c_void_p())) == NOT_OK
    assert functions.destroy(None) == NOT_OK


@pytest.mark.parametrize(
    ("module_id", "supported", "unsupported"),
    [(1, [1], [0, 2, 1000]), (2, [1, 2, 3, 4], [0, 5]), (3, [0, 1, 7, 4294967295], [])],
)
def test_c1_supported_device_types(
    libraries: dict[int, ModuleLibrary], module_id: int, supported: list[int], unsupported: list[int]
) -> None:
    library = libraries[module_id]
    assert library.get_module_number() == module_id
    assert all(library.is_device_type_supported(t) for t in supported)
    assert not any(library.is_device_type_supported(t) for t in unsupported)


# ---- §4.2 status round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [False, True])
def test_c2_status_round_trip(contexts: ContextFactory, api: FleetHttpApiDouble, error: bool) -> None:
    context = contexts(3, api.base_url)
    t0 = int(time.time() * 1000)
    forward = context.forward_error_message if error else context.forward_status
    assert forward(b'{"content":"x","timestamp":111}', TRANSPARENT_DEVICE) == OK
    status, body = api.request("GET", f"/status/{COMPANY}/car_a", query={"since": str(t0)})
    assert status == 200
    assert len(body) == 1
    (found,) = body
    assert found["device_id"] == {"module_id": 3, "type": 1, "role": "test_device_1", "name": "Test_Device_1"}
    assert found["payload"] == {
        "message_type": "STATUS_ERROR" if error else "STATUS",
        "encoding": "JSON",
        "data": {"content": "x", "timestamp": 111},
    }
    assert found["timestamp"] >= t0


def test_c2_one_message_per_post_and_no_priority(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(3, api.base_url)
    device = Device(3, 7, "lamp", "Front lamp ü", priority=5)
    for index in range(3):
        assert context.forward_status(compact({"i": index}), device) == OK
    assert api.count("POST /status", 200) == 3  # same-ms duplicates were retried
    stored = api.stored("status", COMPANY, "car_a")
    assert [s["payload"]["data"] for s in stored] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert all(set(s["device_id"]) == {"module_id", "type", "role", "name"} for s in stored)
    assert stored[0]["device_id"]["name"] == "Front lamp ü"


# ---- §4.3 module rules -------------------------------------------------------------------------------------


def test_c3_mission_validation(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(1, api.base_url)
    valid = json.dumps(MISSION_STATUS).encode()
    assert context.forward_status(valid, Device(1, 0, "autonomy", "Autonomy")) == NOT_OK
    for invalid in (
        {"state": "FLYING", "telemetry": {"speed": 1}, "nextStop": None},
        {"state": "IDLE", "telemetry": {"speed": "fast"}, "nextStop": None},
        {"state": "IDLE", "telemetry": {"speed": 1}},
        {"telemetry": {"speed": 1}, "nextStop": None},
        [1, 2],
        "IDLE",
    ):
        assert context.forward_status(json.dumps(invalid).encode(), MISSION_DEVICE) == NOT_OK
    assert context.forward_status(b"not json", MISSION_DEVICE) == NOT_OK
    assert context.forward_error_message(b'{"finishedStops": 3}', MISSION_DEVICE) == NOT_OK
    assert api.count("POST /status") == 0
    assert stats(context)["status_rejected"] == 9

    assert context.forward_status(valid, MISSION_DEVICE) == OK
    assert context.forward_error_message(b'{"finishedStops": []}', MISSION_DEVICE) == OK
    assert [s["payload"]["message_type"] for s in api.stored("status", COMPANY, "car_a")] == [
        "STATUS",
        "STATUS_ERROR",
    ]
    status, body = api.request("GET", f"/available-devices/{COMPANY}/car_a", query={"module_id": "1"})
    assert status == 200
    assert body["device_list"] == [{"module_id": 1, "type": 1, "role": "autonomy", "name": "Autonomy"}]


def test_c3_io_array_and_transparent_string(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    io = contexts(2, api.base_url)
    transparent = contexts(3, api.base_url)
    assert io.forward_status(b'[[1,0],[0,1],{"butPr":1}]', IO_DEVICE) == OK
    assert transparent.forward_status(b'"Status 0"', TRANSPARENT_DEVICE) == OK
    data = [s["payload"]["data"] for s in api.stored("status", COMPANY, "car_a")]
    assert data == [[[1, 0], [0, 1], {"butPr": 1}], "Status 0"]


@pytest.mark.parametrize("module_id", [2, 3])
@pytest.mark.parametrize("payload", [b"42", b"null", b"true", b"", b"{broken", b"\xff\xfe"])
def test_c3_scalars_and_non_json_are_not_posted(
    contexts: ContextFactory, api: FleetHttpApiDouble, module_id: int, payload: bytes
) -> None:
    """The API rejects JSON scalars (400) and non-JSON: NOT_OK without a request (io too, decision)."""
    context = contexts(module_id, api.base_url)
    assert context.forward_status(payload, DEVICES[module_id]) == NOT_OK
    assert api.count("POST /status") == 0


def test_c3_transparent_base64_fallback_when_enabled(
    contexts: ContextFactory, api: FleetHttpApiDouble
) -> None:
    """§3.9 (optional, off by default): non-JSON status bytes go out as encoding BASE64."""
    context = contexts(3, api.base_url, status_base64_fallback="1")
    assert context.forward_status(b"\x00raw\xff", TRANSPARENT_DEVICE) == OK
    assert context.forward_status(b"42", TRANSPARENT_DEVICE) == OK
    assert context.forward_status(b'{"a":1}', TRANSPARENT_DEVICE) == OK
    payloads = [s["payload"] for s in api.stored("status", COMPANY, "car_a")]
    assert payloads[0] == {"message_type": "STATUS", "encoding": "BASE64", "data": "AHJhd/8="}
    assert payloads[1] == {"message_type": "STATUS", "encoding": "BASE64", "data": "NDI="}
    assert payloads[2] == {"message_type": "STATUS", "encoding": "JSON", "data": {"a": 1}}


def test_c3_role_breaking_the_api_pattern_is_not_posted(
    contexts: ContextFactory, api: FleetHttpApiDouble
) -> None:
    context = contexts(3, api.base_url)
    assert context.forward_status(b"{}", Device(3, 1, "Upper", "x")) == NOT_OK
    assert context.forward_status(b"{}", Device(3, 1, "sp ace", "x")) == NOT_OK
    assert api.count("POST /status") == 0


# ---- §4.4 delivery and order (§3.2 FIFO) -------------------------------------------------------------------


@pytest.mark.parametrize("module_id", [1, 2, 3])
def test_c4_delivery_in_fifo_order(contexts: ContextFactory, api: FleetHttpApiDouble, module_id: int) -> None:
    context = contexts(module_id, api.base_url)
    device = DEVICES[module_id]
    announce(context)
    make = COMMANDS[module_id]
    assert api.post_commands(COMPANY, "car_a", [command_for(device, make(i)) for i in (1, 2, 3)])[0] == 200
    assert api.post_commands(COMPANY, "car_a", [command_for(device, make(4))])[0] == 200
    assert api.post_commands(COMPANY, "car_a", [command_for(device, make(5))])[0] == 200
    wait_until_blocking(lambda: stats(context)["queued"] == 5, 10.0, "five commands queued")
    assert context.wait_for_command(0) == OK
    popped = [context.pop_command() for _ in range(5)]
    assert [p.remaining for p in popped] == [4, 3, 2, 1, 0]
    assert all(
        p.device == Device(device.module, device.device_type, device.role, device.name, 0) for p in popped
    )
    expected = [io_bytes(i) if module_id == 2 else compact(make(i)) for i in range(1, 6)]
    assert [p.data for p in popped] == expected
    assert context.pop_command().remaining == NOT_OK


def test_c4_io_command_is_normalised(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(2, api.base_url)
    announce(context)
    data = [{"actType": 2, "outNum": 3, "extra": "x"}, {"outNum": 1, "actType": 0}]
    api.post_commands(COMPANY, "car_a", [command_for(IO_DEVICE, data)])
    (popped,) = receive(context, 1)
    assert popped.data == b'[{"outNum":3,"actType":2},{"outNum":1,"actType":0}]'


def test_c4_command_name_comes_from_the_message(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    """The API ignores the name for identity; the popped device carries the poster's name."""
    context = contexts(3, api.base_url)
    announce(context)
    api.post_commands(COMPANY, "car_a", [message(3, 1, "test_device_1", "Other", "x")])
    (popped,) = receive(context, 1)
    assert popped.device == Device(3, 1, "test_device_1", "Other", 0)
    assert popped.data == b'"x"'


# ---- §4.5 no first-poll loss (§3.1 lossless priming) -------------------------------------------------------


def test_c5_command_posted_during_first_wait_is_delivered(
    contexts: ContextFactory, api: FleetHttpApiDouble
) -> None:
    """The car is already known (an earlier ES run posted a status); wait right after init."""
    assert (
        api.post_status(COMPANY, "car_a", [message(3, 1, "test_device_1", "T", {}, message_type="STATUS")])[0]
        == 200
    )
    context = contexts(3, api.base_url)
    timer = threading.Timer(
        0.1, api.post_commands, (COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, "fresh")])
    )
    timer.start()
    try:
        received = receive(context, 1)
    finally:
        timer.join()
    assert [p.data for p in received] == [b'"fresh"']


def test_c5_api_started_after_init(contexts: ContextFactory) -> None:
    double = FleetHttpApiDouble(t_api_s=T_API_S, port=free_port())  # started only after init
    context = contexts(3, double.base_url)
    try:
        assert context.wait_for_command(300) == TIMEOUT_OCCURRED
        double.start()
        assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == OK
        timer = threading.Timer(
            0.1, double.post_commands, (COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, "after start")])
        )
        timer.start()
        try:
            received = receive(context, 1)
        finally:
            timer.join()
        assert [p.data for p in received] == [b'"after start"']
    finally:
        context.destroy()
        double.close()


def test_f1_successful_status_triggers_priming_at_once(
    contexts: ContextFactory, api: FleetHttpApiDouble
) -> None:
    """Unprimed (car unknown → 404): the snapshot is retried right after a successful status."""
    context = contexts(3, api.base_url)
    wait_until_blocking(lambda: stats(context)["prime_requests"] >= 1, 10.0, "first snapshot attempt")
    # right after a failed attempt the next scheduled one is PRIME_RETRY_MS (500 ms) away
    before = stats(context)["prime_requests"]
    wait_until_blocking(lambda: stats(context)["prime_requests"] > before, 10.0, "a scheduled retry")
    started = time.monotonic()
    assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == OK
    wait_until_blocking(lambda: stats(context)["primed"] == 1, 10.0, "primed")
    # the one latency claim left in this file: "at once" means before the 500 ms schedule
    assert time.monotonic() - started < 0.45


def test_f1_unprimed_retries_are_spaced(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    """While the car is unknown the snapshot is retried about every 500 ms, never in a busy loop:
    the third attempt comes no sooner than two retry periods after the context was made."""
    started = time.monotonic()
    context = contexts(3, api.base_url)
    wait_until_blocking(lambda: stats(context)["prime_requests"] >= 3, 10.0, "three snapshot attempts")
    assert time.monotonic() - started >= 0.8  # two gaps of about 500 ms (a busy loop: milliseconds)
    assert stats(context)["primed"] == 0


# ---- §4.6 no stale replay ----------------------------------------------------------------------------------


def test_c6_commands_from_before_init_are_never_delivered(
    contexts: ContextFactory, api: FleetHttpApiDouble
) -> None:
    old = contexts(3, api.base_url, car="car_a")
    announce(old)
    api.post_commands(COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, f"old {i}") for i in range(3)])
    assert [p.data for p in receive(old, 3)] == [b'"old 0"', b'"old 1"', b'"old 2"']
    old.destroy()

    context = contexts(3, api.base_url, car="car_a")  # an ES restart: the API still has the history
    wait_until_blocking(lambda: stats(context)["primed"] == 1, 2.0, "primed")
    assert context.wait_for_command(T_API_S * 1000 + 300) == TIMEOUT_OCCURRED
    api.post_commands(COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, "new")])
    assert [p.data for p in receive(context, 1)] == [b'"new"']
    assert context.wait_for_command(300) == TIMEOUT_OCCURRED


def test_c6_no_replay_when_api_was_unreachable_at_the_first_poll(
    contexts: ContextFactory, api: FleetHttpApiDouble
) -> None:
    """History survives an API restart (stored commands of a device that has not re-posted)."""
    other = Device(3, 1, "other_device", "Other")
    assert api.post_status(COMPANY, "car_a", [command_for(other, {}, message_type="STATUS")])[0] == 200
    assert api.post_commands(COMPANY, "car_a", [command_for(other, "stale")])[0] == 200
    api.stop()
    context = contexts(3, api.base_url)
    wait_until_blocking(lambda: stats(context)["prime_requests"] >= 2, 3.0, "failed snapshots")
    api.start()  # a restart: the car is unknown until its next status; 'stale' stays stored
    assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == OK
    wait_until_blocking(lambda: stats(context)["primed"] == 1, 2.0, "primed")
    assert context.wait_for_command(T_API_S * 1000 + 300) == TIMEOUT_OCCURRED
    api.post_commands(COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, "new")])
    assert [p.data for p in receive(context, 1)] == [b'"new"']
    assert stats(context)["commands_received"] == 1


# ---- §4.7 module filtering and car isolation ---------------------------------------------------------------


def test_c7_module_filtering_and_car_isolation(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    io = contexts(2, api.base_url)
    transparent = contexts(3, api.base_url)
    car_b = contexts(3, api.base_url, car="car_b")
    announce(io)
    announce(transparent)
    announce(car_b)
    mixed = [
        command_for(IO_DEVICE, io_command(7)),
        command_for(TRANSPARENT_DEVICE, "for module 3"),
        command_for(IO_DEVICE, io_command(8)),
    ]
    assert api.post_commands(COMPANY, "car_a", mixed)[0] == 200
    assert api.post_commands(COMPANY, "car_b", [command_for(TRANSPARENT_DEVICE, "for car_b")])[0] == 200
    assert [p.data for p in receive(io, 2)] == [io_bytes(7), io_bytes(8)]
    assert [p.data for p in receive(transparent, 1)] == [b'"for module 3"']
    assert [p.data for p in receive(car_b, 1)] == [b'"for car_b"']
    time.sleep(0.2)
    for context in (io, transparent, car_b):
        assert context.wait_for_command(0) == TIMEOUT_OCCURRED
    assert stats(io)["commands_other"] == 1
    assert stats(transparent)["commands_other"] == 2


# ---- §4.8 timeout honoured (§3.3) --------------------------------------------------------------------------


def test_c8_wait_for_command_honours_its_timeout(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(3, api.base_url)
    announce(context)
    for _ in range(3):
        started = time.monotonic()
        assert context.wait_for_command(300) == TIMEOUT_OCCURRED
        assert 0.29 <= time.monotonic() - started < 5.0  # waited it out; the upper bound guards a hang
    started = time.monotonic()
    assert context.wait_for_command(0) == TIMEOUT_OCCURRED
    assert context.wait_for_command(-5) == TIMEOUT_OCCURRED
    assert time.monotonic() - started < 5.0  # no wait at all; the bound only guards against a hang


def test_c8_command_posted_during_a_wait_is_not_lost(
    contexts: ContextFactory, api: FleetHttpApiDouble
) -> None:
    context = contexts(3, api.base_url)
    announce(context)
    poster = threading.Timer(
        0.15, api.post_commands, (COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, [1])])
    )
    poster.start()
    results = [context.wait_for_command(100) for _ in range(3)]
    poster.join()
    wait_until_blocking(lambda: stats(context)["queued"] == 1, 2.0, "queued")
    assert context.wait_for_command(100) == OK
    assert [p.data for p in pop_all(context)] == [b"[1]"]
    assert all(rc in (OK, TIMEOUT_OCCURRED) for rc in results)


def test_c8_destroy_during_a_long_poll_returns_within_a_second(
    libraries: dict[int, ModuleLibrary],
) -> None:
    with FleetHttpApiDouble(t_api_s=30.0) as api:
        context = libraries[3].init(build_init_config(COMPANY, "car_a", module_config(api.base_url)))
        announce(context)
        wait_until_blocking(lambda: stats(context)["poll_requests"] >= 1, 10.0, "long poll started")
        wait_until_blocking(lambda: api.waiting("command") >= 1, 10.0, "the 30 s long poll parked")
        waiter_result: list[int] = []
        waiter = threading.Thread(target=lambda: waiter_result.append(context.wait_for_command(30_000)))
        waiter.start()
        time.sleep(0.05)  # most likely blocked by now; if not, the wait finds the context gone
        started = time.monotonic()
        assert context.destroy() == OK
        elapsed = time.monotonic() - started
        waiter.join(5)
        assert elapsed < 10.0  # the poll was cut short: it had 30 s left (a second or less normally)
        assert waiter_result == [CONTEXT_INCORRECT]


# ---- §4.9 API down, then back; §4.10 unresponsive host (§3.4 bounded forward_status) -----------------------


def test_c9_api_down_then_back(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(3, api.base_url)
    announce(context)
    other = Device(3, 1, "other_device", "Other")
    assert context.forward_status(b"{}", other) == OK
    api.stop()

    started = time.monotonic()
    assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == NOT_OK
    assert time.monotonic() - started < 5.0

    before = stats(context)
    window_started = time.monotonic()
    # at least 3 s, and on until the guard has held the poller back once (a guard against a hang)
    while time.monotonic() - window_started < 3.0 or stats(context)["guard_delays"] == before["guard_delays"]:
        assert time.monotonic() - window_started < 30.0, "the request-frequency guard never engaged"
        assert context.wait_for_command(200) == TIMEOUT_OCCURRED
    after = stats(context)
    window = time.monotonic() - window_started
    polls = (after["poll_requests"] + after["sweep_requests"]) - (
        before["poll_requests"] + before["sweep_requests"]
    )
    # §2.6 guard 3/1000/500/220: at most C+1 polls per Dl + C·R = 1.16 s once throttled, C before;
    # an upper bound over the window actually measured, so a slow machine only makes it looser.
    assert polls <= 3 + 4 * math.ceil(window / 1.16), (polls, window)

    api.start()  # restarted: car unknown until it posts again, history kept
    assert api.post_commands(COMPANY, "car_a", [command_for(other, "x")])[0] == 404
    assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == OK
    api.post_commands(COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, "after restart")])
    assert [p.data for p in receive(context, 1, timeout_s=5.0)] == [b'"after restart"']
    assert context.wait_for_command(300) == TIMEOUT_OCCURRED


def test_c10_unresponsive_host(contexts: ContextFactory) -> None:
    with UnresponsiveHost() as host:
        context = contexts(3, host.base_url, status_timeout_ms="1000", circuit_breaker_failures="2")
        durations = []
        for _ in range(3):
            started = time.monotonic()
            assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == NOT_OK
            durations.append(time.monotonic() - started)
        assert context.wait_for_command(300) == TIMEOUT_OCCURRED
        assert all(d < 5.0 for d in durations[:2]), durations  # bounded (status_timeout_ms 1000), no hang
        assert stats(context)["breaker_rejections"] == 1  # breaker open: the third call was not sent
        assert durations[2] < 1.0, durations  # so it did not sit out the 1 s status timeout


def test_f4_circuit_breaker_opens_and_closes(contexts: ContextFactory) -> None:
    """Connection refused: bounded retries, the breaker opens after 3 failed calls and closes on success."""
    double = FleetHttpApiDouble(t_api_s=T_API_S, port=free_port())  # not started: connection refused
    context = contexts(3, double.base_url, circuit_breaker_open_ms="400")
    try:
        for _ in range(3):
            started = time.monotonic()
            assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == NOT_OK
            assert time.monotonic() - started < 5.0  # bounded retries; the bound only guards a hang
        assert stats(context)["breaker_opened"] == 1
        assert stats(context)["status_retries"] == 6  # two retries per call, then give up
        assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == NOT_OK
        assert stats(context)["status_retries"] == 6  # breaker open: rejected without an attempt
        double.start()
        time.sleep(0.45)  # the scenario: the breaker's 400 ms open period passes
        assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == OK  # half-open attempt succeeds
        assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == OK
        found = stats(context)
        assert (found["breaker_rejections"], found["status_ok"]) == (1, 2)
    finally:
        context.destroy()
        double.close()


# ---- §4.11 auth --------------------------------------------------------------------------------------------


def test_c11_wrong_key(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    started = time.monotonic()
    context = contexts(3, api.base_url, api_key="WrongKey")
    assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == NOT_OK
    assert api.count("POST /status", 401) == 1  # a 401 is never retried
    while api.count("GET /command", 401) < 3:
        assert time.monotonic() - started < 15.0, "the poller stopped retrying"
        assert context.wait_for_command(250) == TIMEOUT_OCCURRED
    assert time.monotonic() - started >= 0.8  # about every 500 ms, not a busy loop
    assert api.count("GET /command", 200) == 0


# ---- §4.12 same-millisecond burst (§3.6 retries) -----------------------------------------------------------


def test_c12_burst_of_200_statuses_all_stored(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(3, api.base_url)
    for index in range(200):
        assert context.forward_status(compact({"i": index}), TRANSPARENT_DEVICE) == OK
    stored = api.stored("status", COMPANY, "car_a")
    assert [s["payload"]["data"]["i"] for s in stored] == list(range(200))
    found = stats(context)
    assert found["status_ok"] == 200
    assert found["duplicate_retries"] == api.duplicate_rejections


def test_f6_same_millisecond_duplicate_is_retried(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(3, api.base_url)
    api.freeze_clock_until_duplicate()
    assert context.forward_status(b'{"n":1}', TRANSPARENT_DEVICE) == OK
    assert context.forward_status(b'{"n":2}', TRANSPARENT_DEVICE) == OK
    stored = api.stored("status", COMPANY, "car_a")
    assert [s["payload"]["data"] for s in stored] == [{"n": 1}, {"n": 2}]
    assert stored[0]["timestamp"] < stored[1]["timestamp"]
    assert (api.duplicate_rejections, stats(context)["duplicate_retries"]) == (1, 1)


def test_f6_server_errors_are_retried_within_the_budget(
    contexts: ContextFactory, api: FleetHttpApiDouble
) -> None:
    context = contexts(3, api.base_url)
    api.fail_next("POST /status", 2, 503)
    assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == OK
    assert (api.count("POST /status"), stats(context)["status_retries"]) == (3, 2)
    api.fail_next("POST /status", 3, 500)
    assert context.forward_status(b"{}", TRANSPARENT_DEVICE) == NOT_OK
    assert api.count("POST /status") == 6


def test_f6_schema_400_is_not_retried(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(3, api.base_url)
    assert context.forward_status(b"{}", Device(-1, 1, "role", "x")) == NOT_OK  # module_id < 0: API 400
    assert api.count("POST /status", 400) == 1
    assert stats(context)["status_retries"] == 0


# ---- §4.13 encoding passthrough ----------------------------------------------------------------------------


def test_c13_base64_command_is_passed_through(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(3, api.base_url)
    announce(context)
    api.post_commands(COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, "aGVsbG8=", encoding="BASE64")])
    (popped,) = receive(context, 1)
    assert popped.data == b'"aGVsbG8="'
    assert len(popped.data) == 10


# ---- §4.14 empty and unknown -------------------------------------------------------------------------------


def test_c14_empty_queue_unknown_car_unknown_device(
    contexts: ContextFactory, api: FleetHttpApiDouble, capfd: pytest.CaptureFixture[str]
) -> None:
    context = contexts(3, api.base_url, car="car_unknown")
    assert context.pop_command().remaining == NOT_OK
    window_started = time.monotonic()
    while time.monotonic() - window_started < 1.5:
        assert context.wait_for_command(300) == TIMEOUT_OCCURRED
    requests = len(api.request_log)
    assert context.device_disconnected(DisconnectType.ANNOUNCED, TRANSPARENT_DEVICE) == NOT_OK
    assert context.device_connected(TRANSPARENT_DEVICE) == OK
    assert context.command_ack(b"x", TRANSPARENT_DEVICE) == OK
    assert context.device_disconnected(DisconnectType.TIMEOUT, TRANSPARENT_DEVICE) == OK
    time.sleep(0.05)
    assert all(r.route == "GET /command" for r in api.request_log[requests:])
    logged = capfd.readouterr().err.splitlines()
    unknown = [line for line in logged if "car unknown" in line]
    assert len(unknown) == 1, logged


def test_c14_disconnect_matches_all_fields(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    context = contexts(3, api.base_url)
    device = Device(3, 1, "lamp", "Lamp", 2)
    assert context.device_connected(device) == OK
    assert context.device_disconnected(0, Device(3, 1, "lamp", "Lamp", 0)) == NOT_OK
    assert context.device_disconnected(0, Device(3, 1, "lamp", "Other", 2)) == NOT_OK
    assert stats(context)["devices"] == 1
    assert context.device_disconnected(0, device) == OK
    assert stats(context)["devices"] == 0
    assert len(api.request_log) <= 2  # only the poller's snapshot attempts


# ---- §3.5 cursor precision, §3.7 invalid commands ----------------------------------------------------------


def test_f5_second_post_in_the_same_millisecond_is_delivered(
    contexts: ContextFactory, api: FleetHttpApiDouble
) -> None:
    """With since=cursor+1 alone a later POST sharing the cursor's millisecond would be skipped for ever."""
    second = Device(3, 1, "second_device", "Second")
    context = contexts(3, api.base_url)
    announce(context)
    assert context.forward_status(b"{}", second) == OK
    api.freeze_clock()
    try:
        api.post_commands(COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, "first")])
        assert [p.data for p in receive(context, 1)] == [b'"first"']
        # the poller is back in its long poll with since = cursor + 1 (the one that delivered is done)
        wait_until_blocking(lambda: api.waiting("command") == 1, 10.0, "the next long poll")
        api.post_commands(COMPANY, "car_a", [command_for(second, "same ms")])
        received = receive(context, 1)
    finally:
        api.unfreeze_clock()
    assert [(p.data, p.device.role if p.device else "") for p in received] == [
        (b'"same ms"', "second_device")
    ]
    stamps = {c["timestamp"] for c in api.stored("command", COMPANY, "car_a")}
    assert len(stamps) == 1
    assert context.wait_for_command(T_API_S * 1000 + 300) == TIMEOUT_OCCURRED  # and nothing twice


@pytest.mark.parametrize("module_id", [1, 2])
def test_f7_invalid_command_is_skipped_not_fatal(
    contexts: ContextFactory, api: FleetHttpApiDouble, module_id: int
) -> None:
    context = contexts(module_id, api.base_url)
    device = DEVICES[module_id]
    announce(context)
    invalid: Any = {"action": "JUMP", "stops": [], "route": "r"} if module_id == 1 else [{"outNum": "x"}]
    batch = [command_for(device, COMMANDS[module_id](1)), command_for(device, invalid)]
    batch.append(command_for(device, COMMANDS[module_id](2)))
    api.post_commands(COMPANY, "car_a", batch)
    api.post_commands(COMPANY, "car_a", [command_for(device, COMMANDS[module_id](3))])
    popped = receive(context, 3)
    expected = [io_bytes(i) if module_id == 2 else compact(COMMANDS[module_id](i)) for i in (1, 2, 3)]
    assert [p.data for p in popped] == expected
    assert stats(context)["commands_invalid"] == 1
    assert stats(context)["commands_received"] == 4


# ---- §3.8 concurrency through the binding ------------------------------------------------------------------


def test_f8_concurrent_wait_pop_and_statuses(contexts: ContextFactory, api: FleetHttpApiDouble) -> None:
    """The server's model (§5.5): unlocked waiter beside serialized statuses; every command once, in order."""
    context = contexts(3, api.base_url)
    announce(context)
    server_lock = threading.Lock()
    received: list[bytes] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set() or stats(context)["queued"]:
            if context.wait_for_command(20) != OK:
                continue
            with server_lock:
                received.extend(p.data for p in pop_all(context))

    thread = threading.Thread(target=worker)
    thread.start()

    def post_all() -> None:
        for index in range(40):
            assert api.post_commands(COMPANY, "car_a", [command_for(TRANSPARENT_DEVICE, [index])])[0] == 200

    poster = threading.Thread(target=post_all)
    poster.start()
    for index in range(150):
        with server_lock:
            assert context.forward_status(compact({"i": index}), TRANSPARENT_DEVICE) == OK
    poster.join()
    wait_until_blocking(lambda: len(received) == 40, 10.0, "40 commands")
    stop.set()
    thread.join(5)
    assert received == [f"[{i}]".encode() for i in range(40)]
