"""Fleet simulator: the car side (Module Gateway external client) of the Fleet Protocol.

A product feature, not only a test helper: ``fleet-simulator`` plays N cars x
M devices against a broker for ``make run``, benchmarks, cluster tests and
deployment smoke tests. Layers, from low to high:

* :class:`SharedConnection` — one MQTT connection routed by topic, shared by cars;
* :class:`CarClient` — a scriptable car endpoint for tests (send anything, receive in order);
* :class:`SimulatedGateway` — the gateway behaviour of docs/protocol.md §4.15 for one car;
* :class:`Fleet` — many gateways, with a :class:`FleetSummary` (latency percentiles, counts, CPU).
"""

from .car_client import CarClient, CarClientGroup, UnexpectedMessageError, create_car_clients
from .config import GatewayConfig, GatewayTimings, JsonStatusData, make_devices
from .connection import SharedConnection
from .fleet import Fleet, FleetConfig, car_names, running_gateway
from .gateway import GatewayState, ReceivedCommand, SimulatedGateway
from .messages import new_session_id
from .stats import GatewayStats, LatencySummary
from .summary import CarSummary, FleetSummary

__all__ = [
    "CarClient",
    "CarClientGroup",
    "CarSummary",
    "Fleet",
    "FleetConfig",
    "FleetSummary",
    "GatewayConfig",
    "GatewayState",
    "GatewayStats",
    "GatewayTimings",
    "JsonStatusData",
    "LatencySummary",
    "ReceivedCommand",
    "SharedConnection",
    "SimulatedGateway",
    "UnexpectedMessageError",
    "car_names",
    "create_car_clients",
    "make_devices",
    "new_session_id",
    "running_gateway",
]
