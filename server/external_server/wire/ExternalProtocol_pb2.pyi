from . import InternalProtocol_pb2 as _InternalProtocol_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExternalServer(_message.Message):
    __slots__ = ("connectResponse", "statusResponse", "command")
    CONNECTRESPONSE_FIELD_NUMBER: _ClassVar[int]
    STATUSRESPONSE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    connectResponse: ConnectResponse
    statusResponse: StatusResponse
    command: Command
    def __init__(self, connectResponse: _Optional[_Union[ConnectResponse, _Mapping]] = ..., statusResponse: _Optional[_Union[StatusResponse, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ...) -> None: ...

class ExternalClient(_message.Message):
    __slots__ = ("connect", "status", "commandResponse")
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COMMANDRESPONSE_FIELD_NUMBER: _ClassVar[int]
    connect: Connect
    status: Status
    commandResponse: CommandResponse
    def __init__(self, connect: _Optional[_Union[Connect, _Mapping]] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., commandResponse: _Optional[_Union[CommandResponse, _Mapping]] = ...) -> None: ...

class Connect(_message.Message):
    __slots__ = ("sessionId", "company", "vehicleName", "devices")
    SESSIONID_FIELD_NUMBER: _ClassVar[int]
    COMPANY_FIELD_NUMBER: _ClassVar[int]
    VEHICLENAME_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    sessionId: str
    company: str
    vehicleName: str
    devices: _containers.RepeatedCompositeFieldContainer[_InternalProtocol_pb2.Device]
    def __init__(self, sessionId: _Optional[str] = ..., company: _Optional[str] = ..., vehicleName: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[_InternalProtocol_pb2.Device, _Mapping]]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("sessionId", "type")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[ConnectResponse.Type]
        ALREADY_LOGGED: _ClassVar[ConnectResponse.Type]
    OK: ConnectResponse.Type
    ALREADY_LOGGED: ConnectResponse.Type
    SESSIONID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    sessionId: str
    type: ConnectResponse.Type
    def __init__(self, sessionId: _Optional[str] = ..., type: _Optional[_Union[ConnectResponse.Type, str]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("sessionId", "deviceState", "messageCounter", "deviceStatus", "errorMessage")
    class DeviceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CONNECTING: _ClassVar[Status.DeviceState]
        RUNNING: _ClassVar[Status.DeviceState]
        ERROR: _ClassVar[Status.DeviceState]
        DISCONNECT: _ClassVar[Status.DeviceState]
    CONNECTING: Status.DeviceState
    RUNNING: Status.DeviceState
    ERROR: Status.DeviceState
    DISCONNECT: Status.DeviceState
    SESSIONID_FIELD_NUMBER: _ClassVar[int]
    DEVICESTATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGECOUNTER_FIELD_NUMBER: _ClassVar[int]
    DEVICESTATUS_FIELD_NUMBER: _ClassVar[int]
    ERRORMESSAGE_FIELD_NUMBER: _ClassVar[int]
    sessionId: str
    deviceState: Status.DeviceState
    messageCounter: int
    deviceStatus: _InternalProtocol_pb2.DeviceStatus
    errorMessage: bytes
    def __init__(self, sessionId: _Optional[str] = ..., deviceState: _Optional[_Union[Status.DeviceState, str]] = ..., messageCounter: _Optional[int] = ..., deviceStatus: _Optional[_Union[_InternalProtocol_pb2.DeviceStatus, _Mapping]] = ..., errorMessage: _Optional[bytes] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("sessionId", "type", "messageCounter")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[StatusResponse.Type]
    OK: StatusResponse.Type
    SESSIONID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGECOUNTER_FIELD_NUMBER: _ClassVar[int]
    sessionId: str
    type: StatusResponse.Type
    messageCounter: int
    def __init__(self, sessionId: _Optional[str] = ..., type: _Optional[_Union[StatusResponse.Type, str]] = ..., messageCounter: _Optional[int] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("sessionId", "messageCounter", "deviceCommand")
    SESSIONID_FIELD_NUMBER: _ClassVar[int]
    MESSAGECOUNTER_FIELD_NUMBER: _ClassVar[int]
    DEVICECOMMAND_FIELD_NUMBER: _ClassVar[int]
    sessionId: str
    messageCounter: int
    deviceCommand: _InternalProtocol_pb2.DeviceCommand
    def __init__(self, sessionId: _Optional[str] = ..., messageCounter: _Optional[int] = ..., deviceCommand: _Optional[_Union[_InternalProtocol_pb2.DeviceCommand, _Mapping]] = ...) -> None: ...

class CommandResponse(_message.Message):
    __slots__ = ("sessionId", "type", "messageCounter")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[CommandResponse.Type]
        DEVICE_NOT_CONNECTED: _ClassVar[CommandResponse.Type]
        DEVICE_NOT_SUPPORTED: _ClassVar[CommandResponse.Type]
        INVALID_COMMAND: _ClassVar[CommandResponse.Type]
    OK: CommandResponse.Type
    DEVICE_NOT_CONNECTED: CommandResponse.Type
    DEVICE_NOT_SUPPORTED: CommandResponse.Type
    INVALID_COMMAND: CommandResponse.Type
    SESSIONID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGECOUNTER_FIELD_NUMBER: _ClassVar[int]
    sessionId: str
    type: CommandResponse.Type
    messageCounter: int
    def __init__(self, sessionId: _Optional[str] = ..., type: _Optional[_Union[CommandResponse.Type, str]] = ..., messageCounter: _Optional[int] = ...) -> None: ...
