"""The committed protobuf modules match lib/proto, and the wire examples of docs/protocol.md §2.4 hold."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from external_server.wire import ExternalProtocol_pb2 as ext
from external_server.wire import InternalProtocol_pb2 as internal

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import gen_proto  # noqa: E402


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    """Regenerating from lib/proto changes nothing (run `make proto` if this fails)."""
    written = gen_proto.generate(tmp_path)
    assert written, "protoc produced nothing"
    for fresh in written:
        committed = gen_proto.DEFAULT_OUT / fresh.name
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make proto`"


def test_connect_response_bytes() -> None:
    """§2.4: ExternalServer{connectResponse{sessionId:"id", type:OK}} = 0a 04 0a 02 69 64."""
    message = ext.ExternalServer(
        connectResponse=ext.ConnectResponse(sessionId="id", type=ext.ConnectResponse.OK)
    )
    assert message.SerializeToString() == bytes.fromhex("0a040a026964")


def test_status_response_bytes() -> None:
    """§2.4: ExternalServer{statusResponse{sessionId:"id", OK, messageCounter 0}} = 12 04 0a 02 69 64."""
    message = ext.ExternalServer(statusResponse=ext.StatusResponse(sessionId="id", messageCounter=0))
    assert message.SerializeToString() == bytes.fromhex("12040a026964")


def test_device_bytes() -> None:
    """§2.4: Device{module:1000, deviceType:0, deviceRole:"test", deviceName:"T"}."""
    device = internal.Device(
        module=internal.Device.EXAMPLE_MODULE, deviceType=0, deviceRole="test", deviceName="T"
    )
    assert device.SerializeToString() == bytes.fromhex("08e8071a0474657374220154")


@pytest.mark.parametrize("module", [3, 5, 999, 5000, 2**31 - 1])
def test_module_numbers_outside_the_enum_round_trip(module: int) -> None:
    """§2.1: Device.module is an open enum; any module number survives a round trip."""
    device = internal.Device(module=module, deviceRole="r")  # type: ignore[arg-type]
    assert internal.Device.FromString(device.SerializeToString()).module == module


def test_field_numbers_match_the_spec_tables() -> None:
    """§2.2/§2.3: field numbers and the proto packages are those of the tables."""
    expected = {
        ext.ExternalServer: {"connectResponse": 1, "statusResponse": 2, "command": 3},
        ext.ExternalClient: {"connect": 1, "status": 2, "commandResponse": 3},
        ext.Connect: {"sessionId": 1, "company": 2, "vehicleName": 3, "devices": 4},
        ext.ConnectResponse: {"sessionId": 1, "type": 2},
        ext.Status: {
            "sessionId": 1,
            "deviceState": 2,
            "messageCounter": 3,
            "deviceStatus": 4,
            "errorMessage": 5,
        },
        ext.StatusResponse: {"sessionId": 1, "type": 2, "messageCounter": 3},
        ext.Command: {"sessionId": 1, "messageCounter": 2, "deviceCommand": 3},
        ext.CommandResponse: {"sessionId": 1, "type": 2, "messageCounter": 3},
        internal.Device: {"module": 1, "deviceType": 2, "deviceRole": 3, "deviceName": 4, "priority": 5},
        internal.DeviceStatus: {"device": 1, "statusData": 2},
        internal.DeviceCommand: {"device": 1, "commandData": 2},
    }
    for message, fields in expected.items():
        actual = {field.name: field.number for field in message.DESCRIPTOR.fields}
        assert actual == fields, message.DESCRIPTOR.full_name
    assert ext.DESCRIPTOR.package == "ExternalProtocol"
    assert internal.DESCRIPTOR.package == "InternalProtocol"
    assert ext.Status.DeviceState.Value("ERROR") == 2
    assert ext.Status.DeviceState.Value("DISCONNECT") == 3
    assert ext.CommandResponse.Type.Value("INVALID_COMMAND") == 3


def test_error_message_has_explicit_presence() -> None:
    """§2.2: Status.errorMessage is `optional bytes`: an explicitly empty value is present."""
    status = ext.Status(errorMessage=b"")
    assert status.HasField("errorMessage")
    assert not ext.Status().HasField("errorMessage")
