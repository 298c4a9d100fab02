"""Configuration: the file shapes of docs/protocol.md §6, normalised into one frozen model."""

from .errors import ConfigError, ConfigFileNotFoundError
from .loading import load_config, redacted_summary
from .models import (
    BrokerSettings,
    CarSettings,
    FileHandlerSettings,
    HandlerSettings,
    LoggingSettings,
    ModuleSettings,
    ServerConfig,
    TlsDefaults,
    TlsFiles,
)
from .secrets import check_secret_references, resolve_module_config
from .shapes import normalise

__all__ = [
    "BrokerSettings",
    "CarSettings",
    "ConfigError",
    "ConfigFileNotFoundError",
    "FileHandlerSettings",
    "HandlerSettings",
    "LoggingSettings",
    "ModuleSettings",
    "ServerConfig",
    "TlsDefaults",
    "TlsFiles",
    "check_secret_references",
    "load_config",
    "normalise",
    "redacted_summary",
    "resolve_module_config",
]
