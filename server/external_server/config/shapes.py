"""The three file shapes of docs/protocol.md §6 and their mapping onto :class:`ServerConfig`.

A file is read along two independent axes, so every combination is accepted:

* broker: ``external_communication {protocol, server_address, server_port, timeout_ms, ...}``
  (current), or top-level ``mqtt_address``/``mqtt_port``/``mqtt_timeout`` [seconds]
  (seed README and legacy). ``external_communication`` wins when both are present;
  the ``mqtt_*`` keys are then ignored like any unknown key (with a load warning).
* logging: ``{console: H, file: H}`` (current and seed README), or the legacy
  ``{"log-path": str, "verbose": bool}`` (also under the older top-level key
  ``general-settings``). Legacy maps to a console handler plus a file handler in
  ``log-path``, both at DEBUG if verbose else INFO. A missing/empty ``log-path`` means
  console only; a ``log-path`` that is not an existing directory disables file logging
  with a load warning instead of failing, so legacy deployments (integration suite) start
  and a read-only root filesystem is never written to.

Everything else (company, timeouts, modules, cars) is common to all shapes. Every
problem found is reported at once, each with the path of the field in the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, config_error, describe_error
from .fields import BrokerHost, LogLevel, Milliseconds, Name, Port, Seconds
from .models import (
    BrokerSettings,
    CarSettings,
    FileHandlerSettings,
    HandlerSettings,
    LoggingSettings,
    ModuleMap,
    ServerConfig,
    TlsDefaults,
)

LEGACY_BROKER_KEYS = ("mqtt_address", "mqtt_port", "mqtt_timeout")
_CURRENT_LOGGING_KEYS = frozenset({"console", "file"})
_LEGACY_LOGGING_KEYS = frozenset({"log-path", "verbose"})
_LEGACY_LOGGING_SECTION = "general-settings"


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _CommonPart(_FileModel):
    company_name: Name
    timeout: Seconds
    send_invalid_command: bool
    sleep_duration_after_connection_refused: Seconds
    common_modules: ModuleMap
    cars: dict[Name, CarSettings]


class _ExternalCommunication(_FileModel):
    protocol: Literal["MQTT"]
    server_address: BrokerHost
    server_port: Port
    timeout_ms: Milliseconds
    ca_certs_file: str = ""
    cert_file: str = ""
    key_file: str = ""


class _CurrentBroker(_FileModel):
    external_communication: _ExternalCommunication


class _LegacyBroker(_FileModel):
    mqtt_address: BrokerHost
    mqtt_port: Port
    mqtt_timeout: Seconds


class _CurrentLogging(_FileModel):
    logging: LoggingSettings


class _LegacyLoggingSection(_FileModel):
    log_path: str = Field(default="", validation_alias="log-path")
    verbose: bool = False


class _LegacyLogging(_FileModel):
    logging: _LegacyLoggingSection = Field(validation_alias=AliasChoices("logging", _LEGACY_LOGGING_SECTION))


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: Mapping[str, object], problems: list[str]) -> _M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(describe_error(error) for error in exc.errors())
        return None


def _uses_legacy_broker(data: Mapping[str, object]) -> bool:
    return "external_communication" not in data and any(key in data for key in LEGACY_BROKER_KEYS)


def _uses_legacy_logging(data: Mapping[str, object]) -> bool:
    section = data.get("logging")
    if "logging" not in data:
        return _LEGACY_LOGGING_SECTION in data
    return (
        isinstance(section, dict)
        and not (_CURRENT_LOGGING_KEYS & section.keys())
        and bool(_LEGACY_LOGGING_KEYS & section.keys())
    )


def _path_or_none(text: str) -> Path | None:
    return Path(text) if text else None


def _broker(
    data: Mapping[str, object], problems: list[str], warnings: list[str]
) -> tuple[BrokerSettings, float] | None:
    """Broker settings and S (seconds) from whichever broker shape the file uses."""
    if _uses_legacy_broker(data):
        legacy = _validate(_LegacyBroker, data, problems)
        if legacy is None:
            return None
        return BrokerSettings(host=legacy.mqtt_address, port=legacy.mqtt_port), legacy.mqtt_timeout
    current = _validate(_CurrentBroker, data, problems)
    if current is None:
        return None
    ignored = [key for key in LEGACY_BROKER_KEYS if key in data]
    if ignored:
        warnings.append(f"{', '.join(ignored)} ignored: external_communication is used")
    block = current.external_communication
    tls_defaults = TlsDefaults(
        ca=_path_or_none(block.ca_certs_file),
        cert=_path_or_none(block.cert_file),
        key=_path_or_none(block.key_file),
    )
    broker = BrokerSettings(host=block.server_address, port=block.server_port, tls_defaults=tls_defaults)
    return broker, block.timeout_ms / 1000


def _legacy_logging(section: _LegacyLoggingSection, warnings: list[str]) -> LoggingSettings:
    level: LogLevel = "DEBUG" if section.verbose else "INFO"
    directory = Path(section.log_path) if section.log_path else None
    if directory is not None and not directory.is_dir():
        warnings.append(
            f"logging.log-path: not an existing directory, file logging disabled: {section.log_path}"
        )
        directory = None
    return LoggingSettings(
        console=HandlerSettings(level=level, use=True),
        file=FileHandlerSettings(level=level, use=directory is not None, path=directory),
    )


def _logging(data: Mapping[str, object], problems: list[str], warnings: list[str]) -> LoggingSettings | None:
    if _uses_legacy_logging(data):
        legacy = _validate(_LegacyLogging, data, problems)
        return None if legacy is None else _legacy_logging(legacy.logging, warnings)
    current = _validate(_CurrentLogging, data, problems)
    if current is None:
        return None
    section = data.get("logging")
    if isinstance(section, dict) and _LEGACY_LOGGING_KEYS & section.keys():
        warnings.append("logging: 'log-path'/'verbose' ignored: 'console'/'file' are used")
    return current.logging


def normalise(data: object) -> ServerConfig:
    """Validate a parsed config file of any supported shape; ConfigError lists every problem."""
    if not isinstance(data, dict):
        raise ConfigError("the config file must contain a JSON object")
    problems: list[str] = []
    warnings: list[str] = []
    common = _validate(_CommonPart, data, problems)
    broker = _broker(data, problems, warnings)
    logging_settings = _logging(data, problems, warnings)
    if common is None or broker is None or logging_settings is None:
        raise config_error(problems)
    broker_settings, session_timeout_s = broker
    try:
        return ServerConfig(
            company_name=common.company_name,
            broker=broker_settings,
            response_timeout_s=common.timeout,
            session_timeout_s=session_timeout_s,
            reconnect_delay_s=common.sleep_duration_after_connection_refused,
            send_invalid_command=common.send_invalid_command,
            common_modules=common.common_modules,
            cars=common.cars,
            logging=logging_settings,
            load_warnings=tuple(warnings),
        )
    except ValidationError as exc:
        raise config_error([describe_error(error) for error in exc.errors()]) from None
