"""Reading a config file and describing a loaded config for the log."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError, ConfigFileNotFoundError
from .models import HandlerSettings, ModuleSettings, ServerConfig
from .shapes import normalise

JsonObject = dict[str, object]


def _pairs_hook(duplicates: list[str]) -> Callable[[list[tuple[str, object]]], JsonObject]:
    def hook(pairs: list[tuple[str, object]]) -> JsonObject:
        result: JsonObject = {}
        for key, value in pairs:
            if key in result:
                duplicates.append(key)
            result[key] = value
        return result

    return hook


def parse_json(text: str, source: str) -> tuple[object, list[str]]:
    """The document and the keys that appeared twice in one object (JSON: the last one wins)."""
    duplicates: list[str] = []
    try:
        data = json.loads(text, object_pairs_hook=_pairs_hook(duplicates))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    return data, duplicates


def load_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Read, validate and normalise a config file of any supported shape.

    Raises ConfigFileNotFoundError when there is no such file and ConfigError (message
    naming every bad field, never a traceback) when it cannot be used.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigFileNotFoundError(f"Config file not found: {file}") from None
    except IsADirectoryError:
        raise ConfigFileNotFoundError(f"Config path is a directory, not a file: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot be read: {exc}") from None
    data, duplicates = parse_json(text, str(file))
    config = normalise(data)
    if duplicates:
        notes = [f"duplicate JSON key '{key}': the last value is used" for key in dict.fromkeys(duplicates)]
        config = config.model_copy(update={"load_warnings": (*config.load_warnings, *notes)})
    return config


def _module_summary(module: ModuleSettings) -> JsonObject:
    # Module config values may be secrets: only their keys are shown (docs/protocol.md §6.9 step 4).
    return {
        "lib_path": str(module.lib_path),
        "command_wait_timeout_ms": module.command_wait_timeout_ms,
        "config_keys": list(module.config),
    }


def _handler_summary(handler: HandlerSettings) -> JsonObject:
    return {
        "level": handler.level,
        "use": handler.use,
        "path": None if handler.path is None else str(handler.path),
    }


def redacted_summary(config: ServerConfig) -> JsonObject:
    """A JSON-ready view of the config for the startup log, without module config values."""
    tls = config.broker.tls
    return {
        "company_name": config.company_name,
        "broker": {
            "host": config.broker.host,
            "port": config.broker.port,
            "tls": None if tls is None else {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)},
        },
        "response_timeout_s": config.response_timeout_s,
        "session_timeout_s": config.session_timeout_s,
        "reconnect_delay_s": config.reconnect_delay_s,
        "send_invalid_command": config.send_invalid_command,
        "common_modules": {str(mid): _module_summary(m) for mid, m in config.common_modules.items()},
        "cars": {
            car: {
                "specific_modules": {
                    str(mid): _module_summary(m) for mid, m in settings.specific_modules.items()
                }
            }
            for car, settings in config.cars.items()
        },
        "logging": {
            "console": _handler_summary(config.logging.console),
            "file": _handler_summary(config.logging.file),
        },
    }
