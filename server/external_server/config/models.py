"""The normalised configuration the server uses (frozen, fully typed).

Every shape of docs/protocol.md §6 (current, seed-README and legacy) is turned into
:class:`ServerConfig` by :func:`external_server.config.shapes.normalise`. The models here
carry the field-level rules themselves, so a ServerConfig built in code is checked
exactly like one loaded from a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .fields import (
    MODULE_ID_RE,
    BrokerHost,
    Level,
    LibraryPath,
    ModuleConfigValue,
    ModuleId,
    Name,
    OptionalPath,
    Port,
    Seconds,
    WaitMilliseconds,
)

DEFAULT_COMMAND_WAIT_TIMEOUT_MS = 1000


class _Frozen(BaseModel):
    """Immutable; unknown keys are ignored at every level (docs/protocol.md §6.1)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class TlsFiles(_Frozen):
    """Mutual TLS: CA to verify the broker, our certificate and its key."""

    ca: Path
    cert: Path
    key: Path


class TlsDefaults(_Frozen):
    """TLS paths from the config file; used only for what ``--tls`` leaves out (§10 item 11)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class BrokerSettings(_Frozen):
    host: BrokerHost
    port: Port
    # The effective TLS setting (None = plain TCP). Never set by the file alone: the CLI
    # decides (reference behaviour), see external_server.cli.resolve_tls.
    tls: TlsFiles | None = None
    tls_defaults: TlsDefaults = TlsDefaults()


class ModuleSettings(_Frozen):
    """One module entry; ``config`` may hold secret references (see config.secrets)."""

    lib_path: LibraryPath
    config: dict[str, ModuleConfigValue]
    command_wait_timeout_ms: WaitMilliseconds = Field(
        default=DEFAULT_COMMAND_WAIT_TIMEOUT_MS,
        validation_alias=AliasChoices("timeout_ms", "command_wait_timeout_ms"),
    )


def _distinct_module_ids(value: object) -> object:
    """'1' and '01' are the same module: refuse instead of silently keeping one."""
    if not isinstance(value, dict):
        return value
    seen: dict[int, str] = {}
    for key in value:
        if isinstance(key, str) and MODULE_ID_RE.fullmatch(key):
            number = int(key)
            if number in seen:
                raise ValueError(f"module ids '{seen[number]}' and '{key}' both denote module {number}")
            seen[number] = key
    return value


ModuleMap = Annotated[dict[ModuleId, ModuleSettings], BeforeValidator(_distinct_module_ids)]


class CarSettings(_Frozen):
    specific_modules: ModuleMap = Field(default_factory=dict)


class HandlerSettings(_Frozen):
    level: Level
    use: bool
    path: OptionalPath = None


class FileHandlerSettings(HandlerSettings):
    """The file handler: when used, ``path`` must be an existing directory."""

    path: OptionalPath = Field(default=None, validate_default=True)

    @field_validator("path")
    @classmethod
    def _existing_directory(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("use") is not True:
            return value
        if value is None:
            raise ValueError("required (an existing directory) when file logging is used")
        if not value.is_dir():
            raise ValueError(f"not an existing directory: {value}")
        return value.absolute()


class LoggingSettings(_Frozen):
    console: HandlerSettings
    file: FileHandlerSettings


class ServerConfig(_Frozen):
    """Everything the server needs; names of the symbols T, S, D follow docs/protocol.md §0."""

    company_name: Name
    broker: BrokerSettings
    response_timeout_s: Seconds  # T
    session_timeout_s: Seconds  # S
    reconnect_delay_s: Seconds  # D
    send_invalid_command: bool
    common_modules: ModuleMap
    cars: dict[Name, CarSettings]
    logging: LoggingSettings
    # Notes from loading (e.g. an ignored legacy log directory), logged once logging is up.
    load_warnings: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ServerConfig:
        """docs/protocol.md §6.5."""
        if not self.cars:
            raise ValueError("cars: Cars must contain at least 1 car.")
        without = [car for car in self.cars if not self.modules_for(car)]
        if without:
            raise ValueError(
                "cars: Modules must contain at least 1 module for each car "
                f"(no module for: {', '.join(repr(car) for car in without)})."
            )
        both = sorted(
            {
                module_id
                for car in self.cars.values()
                for module_id in car.specific_modules
                if module_id in self.common_modules
            }
        )
        if both:
            raise ValueError(
                "Each module can be configured either globally or per car, but not both. "
                f"IDs of modules defined both globally and per car: {both}"
            )
        return self

    def modules_for(self, car: str) -> list[tuple[int, ModuleSettings]]:
        """The car's module set: its specific modules, then the common ones, each in file order."""
        specific = self.cars[car].specific_modules
        return [*specific.items(), *self.common_modules.items()]
