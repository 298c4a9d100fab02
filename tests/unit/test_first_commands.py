"""Selection of the first commands of a session (docs/protocol.md §4.6, phase C; checklist items 119-124)."""

from __future__ import annotations

from dataclasses import dataclass

from external_server.device import Device
from external_server.protocol.first_commands import FirstCommand, select_first_commands
from external_server.protocol.registry import DeviceRegistry

D1 = Device(1000, 0, "one", "One")
D2 = Device(1000, 0, "two", "Two")
D3 = Device(1000, 0, "three", "Three")
IO = Device(2, 1, "button", "Button")


def registry_of(*devices: Device) -> DeviceRegistry:
    registry = DeviceRegistry()
    for device in devices:
        assert registry.register(device)
    return registry


def empty(device: Device) -> FirstCommand:
    return FirstCommand(device, b"", server_generated=True)


def from_module(device: Device, data: bytes, module_id: int = 1000) -> FirstCommand:
    return FirstCommand(device, data, server_generated=False, module_id=module_id)


def test_empty_queue_gives_server_generated_empty_command() -> None:
    """Item 119: empty module queue -> the device's first command is empty and server-generated."""
    selection = select_first_commands([(1000, [])], registry_of(D1))
    assert selection.commands == (empty(D1),)
    assert selection.dropped == ()


def test_queued_command_is_used() -> None:
    """Item 120: one queued command for the device -> it is the first command (module-originated)."""
    selection = select_first_commands([(1000, [(b"cmd", D1)])], registry_of(D1))
    assert selection.commands == (from_module(D1, b"cmd"),)


def test_only_the_oldest_command_per_device_is_kept() -> None:
    """Item 121 / §10.5: three queued commands for one device -> only the first (oldest)."""
    queue = [(b"first", D1), (b"second", D1), (b"third", D1)]
    selection = select_first_commands([(1000, queue)], registry_of(D1))
    assert selection.commands == (from_module(D1, b"first"),)
    assert [d.data for d in selection.superseded] == [b"second", b"third"]


def test_empty_commands_in_registration_order() -> None:
    """Item 122: three devices and empty queues -> three empty commands in registration order."""
    selection = select_first_commands([(1000, [])], registry_of(D2, D3, D1))
    assert selection.commands == (empty(D2), empty(D3), empty(D1))


def test_one_command_per_device_in_queue_order() -> None:
    """Item 123: one command per device -> those, in queue order; two per device -> the first of each."""
    registry = registry_of(D1, D2, D3)
    selection = select_first_commands([(1000, [(b"3", D3), (b"1", D1), (b"2", D2)])], registry)
    assert selection.commands == (from_module(D3, b"3"), from_module(D1, b"1"), from_module(D2, b"2"))

    queue = [(b"1a", D1), (b"2a", D2), (b"1b", D1), (b"3a", D3), (b"2b", D2), (b"3b", D3)]
    selection = select_first_commands([(1000, queue)], registry)
    assert selection.commands == (from_module(D1, b"1a"), from_module(D2, b"2a"), from_module(D3, b"3a"))


def test_command_for_unregistered_device_is_dropped() -> None:
    """Item 124: queued commands for a registered and a not-registered device -> only the registered one's."""
    selection = select_first_commands([(1000, [(b"x", D2), (b"y", D1)])], registry_of(D1))
    assert selection.commands == (from_module(D1, b"y"),)
    assert [(d.module_id, d.device, d.data) for d in selection.dropped] == [(1000, D2, b"x")]


def test_device_must_match_exactly_including_name_and_priority() -> None:
    """§4.6.3: all five fields count, so another name or priority != 0 drops the command."""
    registry = registry_of(D1, D2)
    queue = [(b"renamed", Device(1000, 0, "one", "Other")), (b"urgent", Device(1000, 0, "two", "Two", 1))]
    selection = select_first_commands([(1000, queue)], registry)
    assert selection.commands == (empty(D1), empty(D2))
    assert [d.data for d in selection.dropped] == [b"renamed", b"urgent"]


def test_oldest_is_chosen_before_the_exact_match_check() -> None:
    """§4.6 steps 2 then 3: the oldest per module/type/role/name is kept even if it is then dropped."""
    registry = registry_of(D1)
    queue = [(b"old", D1.with_priority(2)), (b"new", D1)]
    selection = select_first_commands([(1000, queue)], registry)
    assert selection.commands == (empty(D1),)
    assert [d.data for d in selection.dropped] == [b"old"]
    assert [d.data for d in selection.superseded] == [b"new"]


def test_names_distinguish_devices_in_the_per_device_key() -> None:
    """§4.6.2: the per-device key is module/type/role/name, so another name is another key."""
    registry = registry_of(D1)
    queue = [(b"other name", Device(1000, 0, "one", "X")), (b"right", D1)]
    selection = select_first_commands([(1000, queue)], registry)
    assert selection.commands == (from_module(D1, b"right"),)
    assert selection.superseded == ()


def test_module_commands_first_then_generated_in_registration_order() -> None:
    """§4.6.5: module commands in module order and queue order, then empty ones by registration."""
    registry = registry_of(D1, IO, D2, D3)
    queues = [(2, [(b"io", IO)]), (1000, [(b"three", D3)])]
    selection = select_first_commands(queues, registry)
    assert selection.commands == (
        from_module(IO, b"io", module_id=2),
        from_module(D3, b"three"),
        empty(D1),
        empty(D2),
    )


def test_generated_command_uses_stored_copy() -> None:
    """§2.4: a server-generated command addresses the registered device (priority 0, first name)."""
    registry = registry_of(Device(1000, 0, "one", "One", priority=5))
    selection = select_first_commands([], registry)
    assert selection.commands == (empty(Device(1000, 0, "one", "One", 0)),)


def test_no_registered_device_gives_nothing() -> None:
    """§4.6.1 is the caller's check; the selection itself just drops everything."""
    selection = select_first_commands([(1000, [(b"x", D1)])], DeviceRegistry())
    assert selection.commands == ()
    assert len(selection.dropped) == 1


@dataclass(frozen=True)
class Queued:
    data: bytes
    device: Device


def test_accepts_objects_with_data_and_device() -> None:
    """The module runtime's QueuedCommand can be passed as it is."""
    selection = select_first_commands([(1000, [Queued(b"obj", D1)])], registry_of(D1, D2))
    assert selection.commands == (from_module(D1, b"obj"), empty(D2))
