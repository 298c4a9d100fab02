"""Settings of one simulated gateway: its devices, pacing, bounds and the §3.4 timers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..device import Device

DEFAULT_MODULE = 1000
DEFAULT_DEVICE_TYPE = 0
DEFAULT_ROLE_PREFIX = "device_"

StatusDataFactory = Callable[[Device, int], bytes]
"""``factory(device, sequence_number) -> status bytes``; the sequence counts every status of the gateway."""


@dataclass(frozen=True, slots=True)
class GatewayTimings:
    """The gateway's timers (docs/protocol.md §3.4, §4.15); tests shorten them."""

    connect_response_timeout_s: float = 5.0
    """Each read of the connect sequence (the gateway's ``receive_message_timeout``)."""
    status_response_timeout_s: float = 30.0
    """A status not answered within this drops the connection (a reconnect follows)."""
    reconnect_delay_s: float = 10.0
    """Pause after a failed connect sequence."""
    disconnect_wait_s: float = 10.0
    """How long :meth:`SimulatedGateway.disconnect_device` waits for the server's answer."""
    drain_timeout_s: float = 5.0
    """At the end of a bounded run: how long to wait for responses to the last statuses."""

    def __post_init__(self) -> None:
        for name in (
            "connect_response_timeout_s",
            "status_response_timeout_s",
            "reconnect_delay_s",
            "disconnect_wait_s",
            "drain_timeout_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """One car: who it is, which devices it has and how it sends statuses.

    Open loop (default) sends ``rate_hz`` statuses per second whatever the server
    does; closed loop sends the next status as soon as the previous one is
    answered. A run ends ``duration_s`` after it started (start delay
    included) or after ``max_statuses`` statuses of normal communication,
    whichever comes first; with neither it runs until stopped.
    """

    company: str
    car: str
    devices: tuple[Device, ...]
    rate_hz: float = 1.0
    closed_loop: bool = False
    duration_s: float | None = None
    max_statuses: int | None = None
    start_delay_s: float = 0.0
    timings: GatewayTimings = field(default_factory=GatewayTimings)
    status_data: StatusDataFactory | None = None
    keep_commands: int = 10_000
    disconnect_at_end: bool = True
    """When the run ends in normal communication, send DISCONNECT for every device so the server
    ends the session at once; a real gateway switched off leaves that to the server's session
    timeout, and the next run would then wait out the reset (docs/protocol.md §4.15 #6)."""

    def __post_init__(self) -> None:
        if not self.devices:
            raise ValueError(
                f"car {self.car!r}: at least one device is needed (a status triggers the connect)"
            )
        keys = [device.key for device in self.devices]
        if len(set(keys)) != len(keys):
            raise ValueError(f"car {self.car!r}: devices must differ in module, type or role")
        if not self.closed_loop and self.rate_hz <= 0:
            raise ValueError("rate_hz must be > 0 in open-loop mode")
        if self.duration_s is not None and self.duration_s < 0:
            raise ValueError("duration_s must be >= 0")
        if self.max_statuses is not None and self.max_statuses < 0:
            raise ValueError("max_statuses must be >= 0")
        if self.start_delay_s < 0:
            raise ValueError("start_delay_s must be >= 0")
        if self.keep_commands < 0:
            raise ValueError("keep_commands must be >= 0")


def make_devices(
    count: int,
    *,
    module: int = DEFAULT_MODULE,
    device_type: int = DEFAULT_DEVICE_TYPE,
    role_prefix: str = DEFAULT_ROLE_PREFIX,
) -> tuple[Device, ...]:
    """``count`` devices ``<role_prefix>0..`` of one module and type (name = role)."""
    if count < 1:
        raise ValueError("a car needs at least one device")
    return tuple(Device(module, device_type, f"{role_prefix}{i}", f"{role_prefix}{i}") for i in range(count))


class JsonStatusData:
    """Default status payload: compact JSON with car, device role and sequence number.

    ``size`` pads the JSON (a ``pad`` field) to at least that many bytes, for
    benchmarks with realistic status sizes.
    """

    def __init__(self, car: str, size: int = 0) -> None:
        self.car = car
        self.size = size

    def __call__(self, device: Device, seq: int) -> bytes:
        fields: dict[str, object] = {"car": self.car, "device": device.role, "seq": seq}
        data = json.dumps(fields, separators=(",", ":")).encode()
        if len(data) >= self.size:
            return data
        fields["pad"] = ""
        unpadded = len(json.dumps(fields, separators=(",", ":")).encode())
        fields["pad"] = "x" * max(0, self.size - unpadded)
        return json.dumps(fields, separators=(",", ":")).encode()


def validate_names(company: str, cars: Sequence[str]) -> None:
    """Reject names that would change the topic structure (``/``, wildcards)."""
    for name in (company, *cars):
        if any(ch in name for ch in "/+#") or "\x00" in name:
            raise ValueError(f"invalid company or car name {name!r}: must not contain '/', '+', '#' or NUL")
