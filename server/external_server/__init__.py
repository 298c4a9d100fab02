"""Fleet Protocol External Server: one company's cars over MQTT, modules through a C ABI."""

__version__ = "0.1.0"
