"""Malformed and unexpected input from a car: dropped or ignored, logged, counted; nobody stalls.

Every case is sent by ``car_a`` in normal communication; afterwards ``car_a`` must still
get the StatusResponse of its next valid status (and nothing for the bad input) and
``car_b`` must still get its answers. A property test then throws random bytes and
random (valid) messages at one car and checks that well-behaved sessions still work.

"A module that blocks" is not a case here: the example module has no option to block
in its calls; ``test_multi_car.py`` wraps its ``forward_status`` with a blocking wait
to check that a blocked module of one car does not block another car.
"""

from __future__ import annotations

import asyncio
import logging
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from external_server.device import Device
from external_server.protocol import messages
from external_server.protocol.messages import MAX_PAYLOAD_BYTES
from external_server.session.state import CarState
from external_server.session.stats import SessionStats
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, ServerUnderTest, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mosquitto_broker import MosquittoBroker
from process_helpers import (
    connect_sequence,
    connect_with_retry,
    expect_status_response,
    next_of_session,
)

pytestmark = pytest.mark.broker

DEVICE = Device(1000, 0, "test", "T")
REJECTED = Device(1000, 0, "rejected", "refused by the module")
MODULE_CONFIG = {"reject_roles": "rejected"}
RUNNING = ext.Status.RUNNING


def _status(session_id: str, counter: int, device: Device = DEVICE, state: int = RUNNING) -> bytes:
    return messages.status(session_id, state, counter, device, b'{"ok":true}').SerializeToString()


def _invalid(stats: SessionStats) -> int:
    return sum(stats.invalid_messages.values())


@dataclass(frozen=True)
class BadInput:
    name: str
    payload: Callable[[str, int], bytes]
    """(current session id, next status counter) → what car_a publishes."""
    consumes_counter: bool
    """True when the server passes it through the status order checker (counter used up)."""
    counted: Callable[[SessionStats], int]
    log_text: str
    log_level: int = logging.WARNING


CASES = [
    BadInput(
        "not_protobuf",
        lambda _sid, _c: b"\xff\xfe this is not a protobuf \x00\x01",
        False,
        _invalid,
        "not a valid ExternalClient",
    ),
    BadInput(
        "truncated_status",
        lambda sid, c: _status(sid, c)[:-4],
        False,
        _invalid,
        "not a valid ExternalClient",
    ),
    BadInput(
        "oversized_payload",
        lambda sid, c: messages.status(
            sid, RUNNING, c, DEVICE, b"x" * (MAX_PAYLOAD_BYTES + 16)
        ).SerializeToString(),
        False,
        _invalid,
        "exceeds the limit",
    ),
    BadInput(
        "unknown_oneof_field_7",
        lambda _sid, _c: bytes([7 << 3 | 2, 2]) + b"hi",  # field 7, length-delimited, not in ExternalClient
        False,
        lambda stats: stats.ignored["unknown_type"],
        "unknown type",
    ),
    BadInput(
        "empty_payload",
        lambda _sid, _c: b"",
        False,
        lambda stats: stats.ignored["unknown_type"],
        "unknown type",
    ),
    BadInput(
        "status_with_wrong_session_id",
        lambda _sid, c: _status("not-the-session", c),
        False,
        lambda stats: stats.ignored["foreign_session"],
        "different session ID",
        logging.INFO,
    ),
    BadInput(
        "command_response_with_wrong_session_id",
        lambda _sid, _c: messages.command_response("not-the-session", 0, 0).SerializeToString(),
        False,
        lambda stats: stats.ignored["foreign_session"],
        "different session ID",
        logging.INFO,
    ),
    BadInput(
        "status_of_unknown_module",
        lambda sid, c: _status(sid, c, Device(1001, 0, "test", "T")),
        True,
        lambda stats: stats.ignored["unknown_module"],
        "unknown module",
    ),
    BadInput(
        "status_of_unknown_device_type",
        lambda sid, c: _status(sid, c, Device(1000, 7, "test", "T")),
        True,
        lambda stats: stats.ignored["unsupported_type"],
        "not supported",
    ),
    BadInput(
        "status_with_unknown_state",
        lambda sid, c: _status(sid, c, state=9),
        True,
        lambda stats: stats.ignored["status_not_handled"],
        "unknown state",
    ),
    BadInput(
        "status_with_old_counter",
        lambda sid, _c: _status(sid, 1),
        False,
        lambda stats: stats.ignored["old_status_counter"],
        "smaller than expected",
    ),
    BadInput(
        "module_returns_error",  # example module: device_connected → NOT_OK for reject_roles
        lambda sid, c: _status(sid, c, REJECTED, state=ext.Status.CONNECTING),
        True,
        lambda stats: stats.module_errors["device_connected"],
        "refused device",
        logging.ERROR,
    ),
]


async def _two_running_cars(server: ServerUnderTest, car_a: CarClient, car_b: CarClient) -> None:
    await asyncio.gather(connect_sequence(car_a, "a", [DEVICE]), connect_sequence(car_b, "b", [DEVICE]))
    for car in ("car_a", "car_b"):
        await server.wait_state(car, CarState.RUNNING)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_bad_input_is_dropped_and_both_cars_still_answered(
    case: BadInput, mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="external_server")
    server = await start_server(
        tmp_path, mosquitto.port, cars=("car_a", "car_b"), module_config=MODULE_CONFIG
    )
    try:
        async with (
            CarClient(mosquitto.address, COMPANY, "car_a") as car_a,
            CarClient(mosquitto.address, COMPANY, "car_b") as car_b,
        ):
            await _two_running_cars(server, car_a, car_b)
            car_a.send_status("a", RUNNING, 2, DEVICE, b"{}")  # the status baseline (§4.10) is now 2
            await expect_status_response(car_a, "a", 2)
            stats = server.session("car_a").stats
            before, first_record = case.counted(stats), len(caplog.records)
            counter = 3
            await car_a.send_acknowledged(case.payload("a", counter))
            if case.consumes_counter:
                counter += 1
            car_a.send_status("a", RUNNING, counter, DEVICE, b"{}")
            # strict: the next message is the answer to the good status, nothing for the bad input
            await expect_status_response(car_a, "a", counter)
            car_b.send_status("b", RUNNING, 2, DEVICE, b"{}")
            await expect_status_response(car_b, "b", 2)

            assert case.counted(stats) == before + 1
            logged = [
                record
                for record in caplog.records[first_record:]
                if case.log_text in record.getMessage() and getattr(record, "car_name", None) == "car_a"
            ]
            assert logged, f"no log line containing {case.log_text!r}"
            assert logged[0].levelno == case.log_level
            for car in ("car_a", "car_b"):
                assert server.session(car).state == CarState.RUNNING
                assert sum(server.session(car).stats.resets.values()) == 0
            assert await car_a.receive(0.3) is None
            assert server.counters("car_b")["statuses"] == 2
    finally:
        await server.stop()


async def test_bad_input_during_the_connect_sequence(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Undecodable payloads in phases A, B and D are dropped; a device the module refuses is not
    registered (ConnectResponse is OK anyway, §4.4); the sequence completes with the other device."""
    caplog.set_level(logging.INFO, logger="external_server")
    garbage = b"\x0a\xff\x01"
    server = await start_server(
        tmp_path, mosquitto.port, cars=("car_a", "car_b"), module_config=MODULE_CONFIG
    )
    try:
        async with CarClient(mosquitto.address, COMPANY, "car_a") as car_a:
            car_a.send(garbage)
            car_a.send_connect("a", [REJECTED, DEVICE])
            assert (await car_a.expect("connectResponse")).connectResponse.type == ext.ConnectResponse.OK
            car_a.send(garbage)
            car_a.send_status("a", ext.Status.CONNECTING, 1, DEVICE, b"{}")
            await expect_status_response(car_a, "a", 1)
            command = (await car_a.expect("command")).command
            assert command.deviceCommand.device.deviceRole == DEVICE.role
            car_a.send(garbage)
            car_a.send_command_response("a", command.messageCounter)
            await server.wait_state("car_a", CarState.RUNNING)
            car_a.send_status("a", RUNNING, 2, DEVICE, b"{}")
            await expect_status_response(car_a, "a", 2)
            stats = server.session("car_a").stats
            assert _invalid(stats) == 3
            assert stats.module_errors["device_connected"] == 1
            assert [device.role for device in server.session("car_a").registry.devices()] == [DEVICE.role]
            assert any("refused device" in record.getMessage() for record in caplog.records)
    finally:
        await server.stop()


# ---- property test: random input, then well-behaved sessions --------------------------

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
_SESSION_IDS = st.sampled_from(["fz", "other", ""]) | st.text(alphabet=string.ascii_letters, max_size=8)
_DEVICES = st.builds(
    Device,
    module=st.sampled_from([1000, 1000, 1001, 0, 3]) | st.integers(-5, 2**31 - 1),
    device_type=st.sampled_from([0, 0, 1]) | st.integers(0, 2**32 - 1),
    role=st.sampled_from(["test", "rejected", "", "other"]) | _TEXT,
    name=_TEXT,
    priority=st.integers(0, 2**32 - 1),
)
_COUNTERS = st.integers(0, 12) | st.integers(0, 2**32 - 1)
_CONNECTS = st.builds(
    lambda sid, devices: messages.connect(sid, COMPANY, "car_a", devices),
    _SESSION_IDS,
    st.lists(_DEVICES, max_size=3),
)
_STATUSES = st.builds(
    messages.status,
    _SESSION_IDS,
    st.integers(0, 5),
    _COUNTERS,
    _DEVICES,
    st.binary(max_size=32),
    st.none() | st.binary(max_size=16),
)
_COMMAND_RESPONSES = st.builds(messages.command_response, _SESSION_IDS, st.integers(0, 5), _COUNTERS)
_PAYLOADS = st.one_of(
    st.binary(max_size=64),
    _CONNECTS.map(lambda message: message.SerializeToString()),
    _STATUSES.map(lambda message: message.SerializeToString()),
    _COMMAND_RESPONSES.map(lambda message: message.SerializeToString()),
)


async def _fuzz_then_well_behaved(
    broker: MosquittoBroker, tmp_path: Path, connected_first: bool, payloads: list[bytes]
) -> None:
    server = await start_server(tmp_path, broker.port, cars=("car_a", "car_b"), module_config=MODULE_CONFIG)
    try:
        async with (
            CarClient(broker.address, COMPANY, "car_a") as car_a,
            CarClient(broker.address, COMPANY, "car_b") as car_b,
        ):
            if connected_first:
                await connect_sequence(car_a, "fz", [DEVICE])
            for payload in payloads:
                car_a.send(payload)
            await car_a.send_acknowledged(b"\xff")  # everything above is at the broker now
            # no settling pause: the connect sequences below retry with fresh ids while car_a's
            # session is still busy with the fuzz (as a gateway would)

            session_b, _ = await connect_with_retry(car_b, [DEVICE], prefix="b", timeout_s=1.5)
            car_b.send_status(session_b, RUNNING, 2, DEVICE, b"{}")
            await next_of_session(car_b, session_b, "statusResponse", 5.0)

            session_a, _ = await connect_with_retry(car_a, [DEVICE], prefix="a", timeout_s=1.5)
            car_a.send_status(session_a, RUNNING, 2, DEVICE, b"{}")
            answer = await next_of_session(car_a, session_a, "statusResponse", 5.0)
            assert answer.statusResponse.messageCounter == 2

            assert not server.task.done()
            for car in ("car_a", "car_b"):
                assert server.session(car).state == CarState.RUNNING
                assert server.session(car).stats.resets["unexpected_error"] == 0, server.session(car).stats
    finally:
        await server.stop()


def test_random_input_then_well_behaved_sessions(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """Random bytes and random valid messages in random order to car_a (bounded), then car_b and
    car_a (fresh session id) complete sessions: the server still answers, no session crashed."""

    @settings(
        max_examples=12,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(connected_first=st.booleans(), payloads=st.lists(_PAYLOADS, min_size=1, max_size=40))
    def run(connected_first: bool, payloads: list[bytes]) -> None:
        asyncio.run(_fuzz_then_well_behaved(mosquitto, tmp_path, connected_first, payloads))

    run()
