"""Message builders and parsers (docs/protocol.md §2, in particular §2.4 byte for byte)."""

from __future__ import annotations

import pytest
from external_server.device import Device
from external_server.protocol import messages as m
from external_server.wire import ExternalProtocol_pb2 as ext
from external_server.wire import InternalProtocol_pb2 as internal
from hypothesis import given
from hypothesis import strategies as st

DEVICE = Device(1000, 0, "test", "T")


def hex_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- §2.4 wire examples ---------------------------------------------------------------


def test_connect_response_ok_bytes() -> None:
    """§2.4 / item 111: ExternalServer{connectResponse{sessionId:"id", type:OK}} = 0a 04 0a 02 69 64."""
    assert m.serialize(m.connect_response("id")) == hex_bytes("0a 04 0a 02 69 64")


def test_status_response_counter_zero_bytes() -> None:
    """§2.4: ExternalServer{statusResponse{"id", OK, 0}} = 12 04 0a 02 69 64 (defaults not serialized)."""
    assert m.serialize(m.status_response("id", 0)) == hex_bytes("12 04 0a 02 69 64")


def test_device_bytes() -> None:
    """§2.4: Device{module:1000, deviceType:0, deviceRole:"test", deviceName:"T"}
    = 08 e8 07 1a 04 74 65 73 74 22 01 54."""
    assert DEVICE.to_proto().SerializeToString() == hex_bytes("08 e8 07 1a 04 74 65 73 74 22 01 54")


# --- server-produced messages: exact content ---------------------------------------------


def test_connect_response_already_logged() -> None:
    """§2.4 / §4.8.1: a repeated Connect of the current session gets ALREADY_LOGGED."""
    message = m.connect_response("abc", already_logged=True)
    assert message.WhichOneof("MessageType") == "connectResponse"
    assert message.connectResponse.sessionId == "abc"
    assert message.connectResponse.type == ext.ConnectResponse.ALREADY_LOGGED
    assert m.serialize(message) == hex_bytes("0a 07 0a 03 61 62 63 10 01")


def test_status_response_echoes_counter() -> None:
    """§2.4: type OK, messageCounter = the status' counter."""
    message = m.status_response("id", 42)
    assert message.WhichOneof("MessageType") == "statusResponse"
    assert message.statusResponse == ext.StatusResponse(
        sessionId="id", type=ext.StatusResponse.OK, messageCounter=42
    )


def test_command_content() -> None:
    """§2.4 / item 174: Command{id, counter, {device, data}} with the device exactly as given."""
    device = Device(1000, 0, "test", "T", priority=3)
    message = m.command("id", 0, device, b"cmd")
    assert message.WhichOneof("MessageType") == "command"
    expected = ext.Command(
        sessionId="id",
        messageCounter=0,
        deviceCommand=internal.DeviceCommand(device=device.to_proto(), commandData=b"cmd"),
    )
    assert message.command == expected
    assert m.serialize(message) == ext.ExternalServer(command=expected).SerializeToString()


def test_empty_command_keeps_device() -> None:
    """§4.6.4: a server-generated empty command still carries the device; empty data not serialized."""
    parsed = m.parse_server_message(m.serialize(m.command("s", 7, DEVICE, b"")))
    assert isinstance(parsed, m.CommandMessage)
    assert (parsed.session_id, parsed.counter, parsed.device, parsed.data) == ("s", 7, DEVICE, b"")


@pytest.mark.parametrize("module", [0, 1, 2, 3, 999, 1000, 5000, 2**31 - 1])
def test_unknown_module_numbers_round_trip(module: int) -> None:
    """§2.1: Device.module is an open enum; 3 (reserved range) and 5000 (undeclared) survive."""
    device = Device(module, 7, "role", "name", 2)
    assert Device.from_proto(internal.Device.FromString(device.to_proto().SerializeToString())) == device
    parsed = m.parse_server_message(m.serialize(m.command("s", 1, device, b"x")))
    assert isinstance(parsed, m.CommandMessage)
    assert parsed.device == device
    parsed_status = m.parse_client_message(m.serialize(m.status("s", m.DeviceState.RUNNING, 1, device, b"")))
    assert isinstance(parsed_status, m.StatusMessage)
    assert parsed_status.device == device


# --- parsing what the car sends --------------------------------------------------------


def test_parse_connect() -> None:
    devices = [DEVICE, Device(3, 1, "teleop", "Cam")]
    parsed = m.parse_client_message(m.serialize(m.connect("s1", "c", "v", devices)))
    assert isinstance(parsed, m.ConnectMessage)
    assert parsed.kind is m.MessageKind.CONNECT
    assert (parsed.session_id, parsed.company, parsed.vehicle_name) == ("s1", "c", "v")
    assert parsed.devices == tuple(devices)
    assert parsed.message.connect.sessionId == "s1"


def test_parse_status_with_and_without_error_message() -> None:
    """§2.2: errorMessage has explicit presence: absent -> None, present but empty -> b""."""
    plain = m.parse_client_message(m.serialize(m.status("s", m.DeviceState.CONNECTING, 1, DEVICE, b"{}")))
    assert isinstance(plain, m.StatusMessage)
    assert plain.kind is m.MessageKind.STATUS
    assert (plain.session_id, plain.state, plain.counter) == ("s", 0, 1)
    assert (plain.device, plain.data) == (DEVICE, b"{}")
    assert plain.error_message is None

    empty = m.parse_client_message(m.serialize(m.status("s", m.DeviceState.RUNNING, 2, DEVICE, b"", b"")))
    assert isinstance(empty, m.StatusMessage)
    assert empty.error_message == b""

    error = m.parse_client_message(m.serialize(m.status("s", m.DeviceState.ERROR, 3, DEVICE, b"", b"error")))
    assert isinstance(error, m.StatusMessage)
    assert error.error_message == b"error"
    assert error.state == m.DeviceState.ERROR
    assert error.state == 2


def test_parse_status_keeps_unknown_state() -> None:
    """Open enums: an unknown deviceState is handed on as a number (logged as unknown state)."""
    parsed = m.parse_client_message(m.serialize(m.status("s", 9, 1, DEVICE, b"")))
    assert isinstance(parsed, m.StatusMessage)
    assert parsed.state == 9


def test_parse_command_response() -> None:
    payload = m.serialize(m.command_response("s", m.CommandResponseType.DEVICE_NOT_CONNECTED, 5))
    parsed = m.parse_client_message(payload)
    assert isinstance(parsed, m.CommandResponseMessage)
    assert parsed.kind is m.MessageKind.COMMAND_RESPONSE
    assert (parsed.session_id, parsed.type, parsed.counter) == ("s", 1, 5)


def test_empty_payload_is_unknown_message() -> None:
    """§2.1 / §4.8.4: an empty payload parses, with no member set -> "message of unknown type"."""
    parsed = m.parse_client_message(b"")
    assert isinstance(parsed, m.UnknownMessage)
    assert parsed.kind is m.MessageKind.UNKNOWN
    assert parsed.size == 0


def test_only_unknown_fields_is_unknown_message() -> None:
    """A field number the schema does not know (here 15, varint 1) leaves the oneof empty."""
    assert isinstance(m.parse_client_message(b"\x78\x01"), m.UnknownMessage)


def test_server_messages_are_not_client_messages() -> None:
    """A ConnectResponse is field 1 like Connect: parsing it as ExternalClient gives a Connect.

    Harmless (topics are separate); this just pins down that the parser does not guess."""
    parsed = m.parse_client_message(m.serialize(m.connect_response("id")))
    assert isinstance(parsed, m.ConnectMessage)
    assert parsed.session_id == "id"
    assert parsed.devices == ()


@pytest.mark.parametrize(
    ("payload", "reason_part"),
    [
        (hex_bytes("0a 04 0a 02 69"), "not a valid"),  # truncated
        (b"\xff\xff\xff\xff", "not a valid"),  # garbage
        (hex_bytes("0a 04 0a 02 ff fe"), "not a valid"),  # session id not UTF-8
        (b"\x0b", "not a valid"),  # start group without end
    ],
)
def test_invalid_payloads(payload: bytes, reason_part: str) -> None:
    """§2.1: a payload that fails to parse becomes InvalidMessage (logged and dropped), never an exception."""
    parsed = m.parse_client_message(payload)
    assert isinstance(parsed, m.InvalidMessage)
    assert parsed.kind is m.MessageKind.INVALID
    assert reason_part in parsed.reason
    assert parsed.size == len(payload)
    assert isinstance(m.parse_server_message(payload), m.InvalidMessage)


def test_oversized_payload_is_invalid_without_decoding() -> None:
    """Payloads above MAX_PAYLOAD_BYTES (1 MiB) are rejected before decoding."""
    big_status = m.serialize(m.status("s", 1, 1, DEVICE, b"x" * m.MAX_PAYLOAD_BYTES))
    parsed = m.parse_client_message(big_status)
    assert isinstance(parsed, m.InvalidMessage)
    assert "exceeds" in parsed.reason
    assert parsed.size == len(big_status)
    accepted = m.parse_client_message(big_status, max_size=len(big_status))
    assert isinstance(accepted, m.StatusMessage)
    at_limit = m.serialize(m.status("s", 1, 1, DEVICE, b"x" * (m.MAX_PAYLOAD_BYTES - 100)))
    assert len(at_limit) <= m.MAX_PAYLOAD_BYTES
    assert isinstance(m.parse_client_message(at_limit), m.StatusMessage)


def test_bytearray_and_memoryview_are_accepted_and_other_types_are_invalid() -> None:
    payload = m.serialize(m.command_response("s", 0, 1))
    assert isinstance(m.parse_client_message(bytearray(payload)), m.CommandResponseMessage)
    assert isinstance(m.parse_client_message(memoryview(payload)), m.CommandResponseMessage)
    not_bytes: object = "text"
    parsed = m.parse_client_message(not_bytes)  # type: ignore[arg-type]
    assert isinstance(parsed, m.InvalidMessage)
    assert "not bytes" in parsed.reason


def test_kind_narrows_the_union() -> None:
    """The Literal ``kind`` tag lets the session dispatch on it (mypy narrows the union too)."""
    parsed = m.parse_client_message(m.serialize(m.command_response("s", 0, 4)))
    if parsed.kind == m.MessageKind.COMMAND_RESPONSE:
        assert parsed.counter == 4
    else:  # pragma: no cover
        pytest.fail("wrong kind")


# --- the car side (fleet simulator) -------------------------------------------------------


def test_parse_server_messages() -> None:
    ok = m.parse_server_message(m.serialize(m.connect_response("s")))
    assert isinstance(ok, m.ConnectResponseMessage)
    assert (ok.session_id, ok.type, ok.kind) == (
        "s",
        m.ConnectResponseType.OK,
        m.MessageKind.CONNECT_RESPONSE,
    )
    logged = m.parse_server_message(m.serialize(m.connect_response("s", already_logged=True)))
    assert isinstance(logged, m.ConnectResponseMessage)
    assert logged.type == m.ConnectResponseType.ALREADY_LOGGED
    response = m.parse_server_message(m.serialize(m.status_response("s", 9)))
    assert isinstance(response, m.StatusResponseMessage)
    assert (response.session_id, response.type, response.counter) == ("s", 0, 9)
    assert isinstance(m.parse_server_message(b""), m.UnknownMessage)


def test_connect_builder_matches_protobuf() -> None:
    built = m.connect("s", "company", "car", [DEVICE])
    assert built == ext.ExternalClient(
        connect=ext.Connect(sessionId="s", company="company", vehicleName="car", devices=[DEVICE.to_proto()])
    )


def test_status_builder_presence_of_error_message() -> None:
    assert not m.status("s", 0, 1, DEVICE, b"").status.HasField("errorMessage")
    assert m.status("s", 0, 1, DEVICE, b"", b"").status.HasField("errorMessage")


# --- properties ------------------------------------------------------------------------


@given(st.binary(max_size=512))
def test_random_bytes_never_raise(payload: bytes) -> None:
    parsed = m.parse_client_message(payload)
    assert parsed.kind in set(m.MessageKind)
    assert m.parse_server_message(payload).kind in set(m.MessageKind)


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=64), st.binary(max_size=8))
def test_mutated_valid_payloads_never_raise(tail: bytes, cut: int, noise: bytes) -> None:
    """Truncations and splices of real messages, the likeliest garbage on a real link."""
    valid = m.serialize(m.status("session", 1, 3, DEVICE, tail, b"err"))
    for payload in (valid[:cut], valid[:cut] + noise + valid[cut:], noise + valid):
        m.parse_client_message(payload)
        m.parse_server_message(payload)


devices = st.builds(
    Device,
    module=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    device_type=st.integers(min_value=0, max_value=2**32 - 1),
    role=st.text(max_size=20),
    name=st.text(max_size=20),
    priority=st.integers(min_value=0, max_value=2**32 - 1),
)
uint32 = st.integers(min_value=0, max_value=2**32 - 1)


@given(
    session=st.text(max_size=16),
    state=st.integers(min_value=0, max_value=3),
    counter=uint32,
    device=devices,
    data=st.binary(max_size=64),
    error=st.none() | st.binary(max_size=16),
)
def test_status_round_trip(
    session: str, state: int, counter: int, device: Device, data: bytes, error: bytes | None
) -> None:
    parsed = m.parse_client_message(m.serialize(m.status(session, state, counter, device, data, error)))
    assert parsed == m.StatusMessage(session, state, counter, device, data, error, ext.ExternalClient())


@given(session=st.text(max_size=16), counter=uint32, device=devices, data=st.binary(max_size=64))
def test_command_round_trip(session: str, counter: int, device: Device, data: bytes) -> None:
    parsed = m.parse_server_message(m.serialize(m.command(session, counter, device, data)))
    assert parsed == m.CommandMessage(session, counter, device, data, ext.ExternalServer())


def test_invalid_payloads_carry_a_low_cardinality_category() -> None:
    """Counters are keyed by category, never by the free-text reason (which names sizes)."""
    oversized = m.parse_client_message(b"\x00" * 2048, max_size=1024)
    garbage = m.parse_client_message(b"\xff\xff\xff")
    assert oversized.kind == m.MessageKind.INVALID and oversized.category == "oversized"
    assert garbage.kind == m.MessageKind.INVALID and garbage.category == "malformed"
