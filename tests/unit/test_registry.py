"""Device registry (docs/protocol.md §4.9; checklist §8.5, items 76-81).

The reference also keeps a "not connected" list that the protocol flow never fills; we do
not have it, so the parts of items 77 and 80 about that list reduce to "unknown".
"""

from __future__ import annotations

from external_server.device import Device
from external_server.protocol.registry import DeviceRegistry
from external_server.wire import InternalProtocol_pb2

LIGHT = Device(1000, 0, "light", "Front light")
BUTTON = Device(1000, 1, "button", "Button")
MISSION = Device(1, 0, "car", "Car")


def test_empty_registry_knows_no_device() -> None:
    """Item 76: an empty registry has zero devices and every device is unknown."""
    registry = DeviceRegistry()
    assert len(registry) == 0
    assert not registry
    assert registry.devices() == []
    assert not registry.is_registered(LIGHT)
    assert registry.get(LIGHT) is None
    assert LIGHT not in registry


def test_register_lists_device_and_unregister_makes_it_unknown() -> None:
    """Item 77: registered -> listed; removal -> unknown; removing unknown is a no-op; clear empties."""
    registry = DeviceRegistry()
    assert registry.register(LIGHT)
    assert registry.is_registered(LIGHT)
    assert registry.devices() == [LIGHT]
    assert registry.unregister(LIGHT) == LIGHT
    assert not registry.is_registered(LIGHT)
    assert registry.unregister(LIGHT) is None
    assert registry.unregister(BUTTON) is None
    registry.register(LIGHT)
    registry.register(BUTTON)
    registry.clear()
    assert len(registry) == 0
    assert registry.devices() == []


def test_identity_ignores_name_and_priority() -> None:
    """Item 78: equal module, type and role -> same device; name and priority ignored."""
    registry = DeviceRegistry()
    registry.register(LIGHT)
    assert registry.is_registered(Device(1000, 0, "light", "Other name", priority=7))
    assert LIGHT.same_device(Device(1000, 0, "light", "", 3))
    assert not registry.is_registered(Device(1001, 0, "light", "Front light"))
    assert not registry.is_registered(Device(1000, 1, "light", "Front light"))
    assert not registry.is_registered(Device(1000, 0, "lights", "Front light"))


def test_proto_conversion_preserves_every_field() -> None:
    """Item 79: protobuf <-> internal record keeps module/type/role/name/priority."""
    proto = InternalProtocol_pb2.Device(
        module=InternalProtocol_pb2.Device.EXAMPLE_MODULE,
        deviceType=4,
        deviceRole="role",
        deviceName="name",
        priority=9,
    )
    device = Device.from_proto(proto)
    assert device == Device(1000, 4, "role", "name", 9)
    assert device.to_proto() == proto


def test_has_module() -> None:
    """Item 80: module 5 has a device, 6 and 7 do not; after removing its only device, 5 neither."""
    registry = DeviceRegistry()
    five = Device(5, 0, "a", "A")
    registry.register(five)
    assert registry.has_module(5)
    assert not registry.has_module(6)
    assert not registry.has_module(7)
    registry.register(Device(5, 1, "b", "B"))
    registry.unregister(five)
    assert registry.has_module(5)
    registry.unregister(Device(5, 1, "b", "B"))
    assert not registry.has_module(5)


def test_lookup_with_protobuf_or_internal_device() -> None:
    """Item 81: a protobuf device registered is found with either representation."""
    registry = DeviceRegistry()
    proto = Device(1000, 0, "light", "Front light").to_proto()
    assert registry.register(proto)
    assert registry.is_registered(proto)
    assert registry.is_registered(LIGHT)
    assert proto in registry
    assert registry.get(proto) == LIGHT
    assert registry.unregister(proto) == LIGHT
    assert "not a device" not in registry


def test_stored_copy_has_priority_zero_and_first_name() -> None:
    """§4.9: the stored copy has priority 0 and the name as first seen; duplicates are refused."""
    registry = DeviceRegistry()
    assert registry.register(Device(1000, 0, "light", "First", priority=3))
    assert not registry.register(Device(1000, 0, "light", "Second", priority=0))
    assert registry.get(LIGHT) == Device(1000, 0, "light", "First", 0)
    assert len(registry) == 1


def test_devices_are_kept_in_registration_order() -> None:
    """§4.9: ordered list; a device registered again after leaving goes to the end."""
    registry = DeviceRegistry()
    for device in (LIGHT, BUTTON, MISSION):
        registry.register(device)
    assert registry.devices() == [LIGHT, BUTTON, MISSION]
    registry.unregister(LIGHT)
    registry.register(LIGHT)
    assert registry.devices() == [BUTTON, MISSION, LIGHT]
    assert list(registry) == [BUTTON, MISSION, LIGHT]


def test_devices_snapshot_survives_mutation() -> None:
    """Clean-up iterates the devices while unregistering them."""
    registry = DeviceRegistry()
    registry.register(LIGHT)
    registry.register(BUTTON)
    for device in registry.devices():
        registry.unregister(device)
    assert len(registry) == 0
