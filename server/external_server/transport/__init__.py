"""MQTT transport: the only place that talks to aiomqtt (see ``mqtt.py``)."""

from .mqtt import BrokerAddress, MqttConnection, PublishError
from .topics import CarTopics

__all__ = ["BrokerAddress", "CarTopics", "MqttConnection", "PublishError"]
