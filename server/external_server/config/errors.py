"""One error type for every configuration problem, with messages that name the field."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic_core import ErrorDetails

_PREFIXES = ("Value error, ", "Assertion failed, ")


class ConfigError(ValueError):
    """The configuration cannot be used; ``str()`` is the user-facing explanation."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)


class ConfigFileNotFoundError(ConfigError):
    """The config path does not name a readable file (reported apart from 'Invalid config')."""


def field_path(loc: Iterable[int | str]) -> str:
    """Dotted path of a pydantic location; a dict key that failed is marked '(key)'."""
    parts: list[str] = []
    key = False
    for item in loc:
        if item == "[key]":
            key = True
        else:
            parts.append(str(item))
    path = ".".join(parts)
    return f"{path} (key)" if key else path


def describe_error(error: ErrorDetails, prefix: Sequence[int | str] = ()) -> str:
    """``path: message`` without pydantic's decoration and without the offending input."""
    message = error["msg"]
    for decoration in _PREFIXES:
        message = message.removeprefix(decoration)
    if error["type"] == "missing":
        message = "field required"
    path = field_path((*prefix, *error["loc"]))
    return f"{path}: {message}" if path else message


def config_error(problems: Sequence[str]) -> ConfigError:
    """Fold several problems into one error, one line per problem."""
    return ConfigError("; ".join(problems), problems)
