"""Secret references in module config values, resolved only when a module is initialised.

Syntax (one, explicit): a module config value that is *exactly* one of

* ``${env:NAME}``  -> the value of environment variable ``NAME`` (``[A-Za-z_][A-Za-z0-9_]*``),
* ``${file:PATH}`` -> the contents of file ``PATH`` (UTF-8, trailing newlines stripped;
  a relative path is taken from the working directory),

is replaced; ``$${...}`` stands for the literal text ``${...}``. Anything else is a plain value.
Values are resolved late (never at load) so they never reach the logged configuration.
A reference whose variable or file is missing is a configuration error that names the
module and key, never the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import ConfigError

if TYPE_CHECKING:
    from .models import ModuleSettings, ServerConfig

_REFERENCE = re.compile(r"\$\{(?P<scheme>[A-Za-z]+):(?P<target>.*)\}", re.DOTALL)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

ConfigValue = str | int


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A parsed ``${scheme:target}`` reference."""

    scheme: Literal["env", "file"]
    target: str

    def describe(self) -> str:
        if self.scheme == "env":
            return f"environment variable '{self.target}'"
        return f"file '{self.target}'"


def parse_reference(value: str) -> SecretRef | None:
    """Return the reference ``value`` denotes, None for a plain value; ValueError if malformed."""
    match = _REFERENCE.fullmatch(value)
    if match is None:
        return None
    scheme, target = match["scheme"], match["target"]
    if scheme == "env":
        if not _ENV_NAME.fullmatch(target):
            raise ValueError("secret reference ${env:NAME} needs a variable name of [A-Za-z_][A-Za-z0-9_]*")
        return SecretRef("env", target)
    if scheme == "file":
        if not target:
            raise ValueError("secret reference ${file:PATH} needs a path")
        return SecretRef("file", target)
    raise ValueError(f"unknown secret reference scheme '{scheme}' (use ${{env:NAME}} or ${{file:PATH}})")


def check_value_syntax(value: ConfigValue) -> ConfigValue:
    """Reject malformed references at load time so a typo is not passed to a module verbatim."""
    if isinstance(value, str) and not value.startswith("$${"):
        parse_reference(value)
    return value


def _read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _resolve_value(
    value: ConfigValue,
    environ: Mapping[str, str],
    read_text: Callable[[str], str],
) -> ConfigValue:
    if not isinstance(value, str):
        return value
    if value.startswith("$${"):
        return value[1:]
    ref = parse_reference(value)
    if ref is None:
        return value
    if ref.scheme == "env":
        if ref.target not in environ:
            raise LookupError(f"{ref.describe()} is not set")
        return environ[ref.target]
    try:
        return read_text(ref.target).rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not found" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc})"
        raise LookupError(f"{ref.describe()} {reason}") from exc


def resolve_module_config(
    config: Mapping[str, ConfigValue],
    *,
    where: str,
    environ: Mapping[str, str] | None = None,
    read_text: Callable[[str], str] = _read_text,
) -> dict[str, ConfigValue]:
    """The module's config with every reference replaced; ``where`` names the module in errors.

    Raises ConfigError (a ValueError) listing every unresolved key; the message never
    contains a resolved value.
    """
    env = os.environ if environ is None else environ
    resolved: dict[str, ConfigValue] = {}
    problems: list[str] = []
    for key, value in config.items():
        try:
            resolved[key] = _resolve_value(value, env, read_text)
        except (LookupError, ValueError) as exc:
            problems.append(f"{where}.config.{key}: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))
    return resolved


def check_secret_references(
    config: ServerConfig,
    *,
    environ: Mapping[str, str] | None = None,
    read_text: Callable[[str], str] = _read_text,
) -> None:
    """Fail at startup, with every missing reference named, instead of at module init."""
    problems: list[str] = []
    sections: list[tuple[str, Mapping[int, ModuleSettings]]] = [("common_modules", config.common_modules)]
    sections += [
        (f"cars.{car}.specific_modules", car_settings.specific_modules)
        for car, car_settings in config.cars.items()
    ]
    for prefix, modules in sections:
        for module_id, module in modules.items():
            try:
                resolve_module_config(
                    module.config, where=f"{prefix}.{module_id}", environ=environ, read_text=read_text
                )
            except ConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))
