"""Reusable field types: each encodes one rule of docs/protocol.md §6 (and the load-time checks
docs/design.md moves forward from server construction)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator

from .secrets import check_value_syntax

NAME_RE = re.compile(r"[a-z0-9_]*")
MODULE_ID_RE = re.compile(r"[0-9]+")
# RFC 1123 label; '_' is also allowed because Docker/Compose service names use it and the
# reference accepted it.
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_HOST_MAX = 253
C_INT_MAX = 2**31 - 1
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_name(value: str) -> str:
    """Company and car names become MQTT topic levels: no '/', '+', '#', no upper case."""
    if not NAME_RE.fullmatch(value):
        raise ValueError("must match ^[a-z0-9_]*$ (lower-case letters, digits and '_')")
    return value


def check_broker_host(value: str) -> str:
    """An IPv4/IPv6 address or an RFC 1123 host name; no scheme, no port, no brackets."""
    if not value:
        raise ValueError("must not be empty")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    labels = value.split(".")
    valid = len(value) <= _HOST_MAX and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)
    if not valid or all(label.isdigit() for label in labels):
        raise ValueError("must be a host name (RFC 1123) or an IP address, without scheme, port or spaces")
    return value


def _not_bool(value: object) -> object:
    """JSON true/false must not silently become 1/0 for a port or a timeout."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def _module_id(value: object) -> object:
    if isinstance(value, str):
        if not MODULE_ID_RE.fullmatch(value):
            raise ValueError("module id must consist of digits only (^\\d+$)")
        return int(value)
    return value


def _module_config_value(value: object) -> str | int:
    """str or int only; bool -> 1/0, whole floats -> int (as the reference's validator does)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError("must be a string or an integer (numbers with a fraction are not allowed)")
    if isinstance(value, str):
        return check_value_syntax(value)
    kind = "null" if value is None else type(value).__name__
    raise ValueError(f"must be a string or an integer, not {kind}")


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _non_empty_path(value: object) -> object:
    if value == "":
        raise ValueError("must not be empty")
    return value


def _existing_file(value: Path) -> Path:
    """Relative paths are taken from the working directory (as the reference does)."""
    if not value.exists():
        raise ValueError(f"file not found: {value}")
    if not value.is_file():
        raise ValueError(f"not a file: {value}")
    return value.absolute()


def _empty_is_none(value: object) -> object:
    return None if value == "" else value


Name = Annotated[str, AfterValidator(check_name)]
BrokerHost = Annotated[str, AfterValidator(check_broker_host)]
Port = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=65535)]
Seconds = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, allow_inf_nan=False)]
Milliseconds = Annotated[int, BeforeValidator(_not_bool), Field(ge=0)]
WaitMilliseconds = Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=C_INT_MAX)]
ModuleId = Annotated[int, BeforeValidator(_module_id), Field(ge=0)]
ModuleConfigValue = Annotated[str | int, PlainValidator(_module_config_value)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Level = Annotated[LogLevel, BeforeValidator(_upper)]
LibraryPath = Annotated[Path, BeforeValidator(_non_empty_path), AfterValidator(_existing_file)]
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_none)]
