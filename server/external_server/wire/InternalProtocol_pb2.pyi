from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InternalClient(_message.Message):
    __slots__ = ("deviceConnect", "deviceStatus")
    DEVICECONNECT_FIELD_NUMBER: _ClassVar[int]
    DEVICESTATUS_FIELD_NUMBER: _ClassVar[int]
    deviceConnect: DeviceConnect
    deviceStatus: DeviceStatus
    def __init__(self, deviceConnect: _Optional[_Union[DeviceConnect, _Mapping]] = ..., deviceStatus: _Optional[_Union[DeviceStatus, _Mapping]] = ...) -> None: ...

class InternalServer(_message.Message):
    __slots__ = ("deviceConnectResponse", "deviceCommand")
    DEVICECONNECTRESPONSE_FIELD_NUMBER: _ClassVar[int]
    DEVICECOMMAND_FIELD_NUMBER: _ClassVar[int]
    deviceConnectResponse: DeviceConnectResponse
    deviceCommand: DeviceCommand
    def __init__(self, deviceConnectResponse: _Optional[_Union[DeviceConnectResponse, _Mapping]] = ..., deviceCommand: _Optional[_Union[DeviceCommand, _Mapping]] = ...) -> None: ...

class DeviceConnect(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: Device
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class DeviceConnectResponse(_message.Message):
    __slots__ = ("responseType", "device")
    class ResponseType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[DeviceConnectResponse.ResponseType]
        ALREADY_CONNECTED: _ClassVar[DeviceConnectResponse.ResponseType]
        MODULE_NOT_SUPPORTED: _ClassVar[DeviceConnectResponse.ResponseType]
        DEVICE_NOT_SUPPORTED: _ClassVar[DeviceConnectResponse.ResponseType]
        HIGHER_PRIORITY_ALREADY_CONNECTED: _ClassVar[DeviceConnectResponse.ResponseType]
    OK: DeviceConnectResponse.ResponseType
    ALREADY_CONNECTED: DeviceConnectResponse.ResponseType
    MODULE_NOT_SUPPORTED: DeviceConnectResponse.ResponseType
    DEVICE_NOT_SUPPORTED: DeviceConnectResponse.ResponseType
    HIGHER_PRIORITY_ALREADY_CONNECTED: DeviceConnectResponse.ResponseType
    RESPONSETYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    responseType: DeviceConnectResponse.ResponseType
    device: Device
    def __init__(self, responseType: _Optional[_Union[DeviceConnectResponse.ResponseType, str]] = ..., device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class DeviceStatus(_message.Message):
    __slots__ = ("device", "statusData")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATUSDATA_FIELD_NUMBER: _ClassVar[int]
    device: Device
    statusData: bytes
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., statusData: _Optional[bytes] = ...) -> None: ...

class DeviceCommand(_message.Message):
    __slots__ = ("device", "commandData")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    COMMANDDATA_FIELD_NUMBER: _ClassVar[int]
    device: Device
    commandData: bytes
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., commandData: _Optional[bytes] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("module", "deviceType", "deviceRole", "deviceName", "priority")
    class Module(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESERVED_MODULE: _ClassVar[Device.Module]
        MISSION_MODULE: _ClassVar[Device.Module]
        IO_MODULE: _ClassVar[Device.Module]
        EXAMPLE_MODULE: _ClassVar[Device.Module]
    RESERVED_MODULE: Device.Module
    MISSION_MODULE: Device.Module
    IO_MODULE: Device.Module
    EXAMPLE_MODULE: Device.Module
    MODULE_FIELD_NUMBER: _ClassVar[int]
    DEVICETYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICEROLE_FIELD_NUMBER: _ClassVar[int]
    DEVICENAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    module: Device.Module
    deviceType: int
    deviceRole: str
    deviceName: str
    priority: int
    def __init__(self, module: _Optional[_Union[Device.Module, str]] = ..., deviceType: _Optional[int] = ..., deviceRole: _Optional[str] = ..., deviceName: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...
