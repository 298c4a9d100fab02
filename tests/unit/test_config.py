"""Configuration loading: docs/protocol.md §6.1-§6.7, checklist §8.1 items 1-16 and 23.

Items 17 and 18 (library vanishing after validation, module number mismatch) are checked by
the module loader, not by the configuration: see the skipped tests at the end.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from external_server.config import (
    ConfigError,
    ConfigFileNotFoundError,
    ModuleSettings,
    ServerConfig,
    check_secret_references,
    load_config,
    normalise,
    redacted_summary,
    resolve_module_config,
)
from external_server.config.fields import BrokerHost, Name, Port, Seconds
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ("config.json", "seed-example.json", "legacy-example.json")
LIB = "build/modules/libexample.so"

Json = dict[str, Any]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the shipped example configs and a stand-in module library."""
    (tmp_path / "build" / "modules").mkdir(parents=True)
    (tmp_path / LIB).write_bytes(b"")
    (tmp_path / "config").mkdir()
    for name in EXAMPLES:
        shutil.copy(REPO / "config" / name, tmp_path / "config" / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def module(lib: str = LIB, **extra: Any) -> Json:
    return {"lib_path": lib, "config": {}, **extra}


def current(**overrides: Any) -> Json:
    """A valid current-format (2.2.4) config; relies on the workdir fixture for the library."""
    data: Json = {
        "company_name": "acme",
        "external_communication": {
            "protocol": "MQTT",
            "server_address": "127.0.0.1",
            "server_port": 1883,
            "timeout_ms": 30000,
        },
        "timeout": 30,
        "send_invalid_command": False,
        "sleep_duration_after_connection_refused": 0.5,
        "common_modules": {"1000": module()},
        "cars": {"car_a": {}},
        "logging": {"console": {"level": "INFO", "use": True}, "file": {"level": "INFO", "use": False}},
    }
    data.update(overrides)
    return data


def changed(edit: Callable[[Json], None]) -> Json:
    data = current()
    edit(data)
    return data


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        normalise(data)
    return str(caught.value)


# --- the three shapes -------------------------------------------------------------------


def test_three_shapes_load_to_the_same_model(workdir: Path) -> None:
    """§6.7/§10 item 12: current, seed-README and legacy files describe one setup -> equal models."""
    loaded = [load_config(workdir / "config" / name) for name in EXAMPLES]
    assert loaded[0] == loaded[1] == loaded[2]
    config = loaded[0]
    assert config.company_name == "acme"
    assert (config.broker.host, config.broker.port, config.broker.tls) == ("127.0.0.1", 1883, None)
    assert (config.response_timeout_s, config.session_timeout_s, config.reconnect_delay_s) == (30, 30, 0.5)
    assert config.send_invalid_command is False
    assert list(config.cars) == ["car_a", "car_b"]
    assert config.common_modules[1000].config == {"echo_every": 1}
    assert config.common_modules[1000].lib_path == workdir / LIB
    assert config.logging.console.use and not config.logging.file.use
    assert config.load_warnings == ()


def test_example_config_has_the_documented_values() -> None:
    """config/config.json is the documented example: current format, console INFO, no file log."""
    data = json.loads((REPO / "config" / "config.json").read_text())
    assert data["external_communication"]["timeout_ms"] == 30000
    assert data["common_modules"]["1000"]["lib_path"] == LIB
    assert data["logging"]["file"]["use"] is False


def test_legacy_integration_suite_config_is_accepted(workdir: Path) -> None:
    """Item 23: the integration suite's legacy file (mqtt_*, log-path/verbose) loads."""
    data = {
        "logging": {"log-path": str(workdir), "verbose": True},
        "mqtt_address": "172.17.0.1",
        "mqtt_port": 1883,
        "mqtt_timeout": 5,
        "timeout": 2,
        "send_invalid_command": False,
        "sleep_duration_after_connection_refused": 1,
        "common_modules": {
            "1": module(config={"api_url": "http://http-api:8080/v2/protocol", "api_key": "K"})
        },
        "company_name": "company_x",
        "cars": {"car_a": {"specific_modules": {}}},
    }
    config = normalise(data)
    assert config.session_timeout_s == 5
    assert config.response_timeout_s == 2
    assert config.logging.console.level == config.logging.file.level == "DEBUG"
    assert config.logging.file.use and config.logging.file.path == workdir


def test_legacy_logging_without_existing_directory_falls_back_to_console(workdir: Path) -> None:
    """Decision: a legacy log-path that is not a directory disables file logging, with a warning."""
    data = changed(lambda d: d.update(logging={"log-path": "/nonexistent/log", "verbose": False}))
    config = normalise(data)
    assert config.logging.console.use and config.logging.console.level == "INFO"
    assert not config.logging.file.use
    assert any("log-path" in warning for warning in config.load_warnings)
    assert not normalise(changed(lambda d: d.update(logging={"verbose": True}))).logging.file.use


def test_older_general_settings_section_is_read_as_legacy_logging(workdir: Path) -> None:
    """Older suite files put log-path/verbose under 'general-settings' instead of 'logging'."""
    data = current(**{"general-settings": {"log-path": "", "verbose": True}})
    del data["logging"]
    assert normalise(data).logging.console.level == "DEBUG"


def test_external_communication_wins_over_mqtt_keys(workdir: Path) -> None:
    """Both broker shapes present: external_communication is used, mqtt_* ignored (warned)."""
    config = normalise(current(mqtt_address="not a host", mqtt_port=-1))
    assert config.broker.host == "127.0.0.1"
    assert any("mqtt_address" in warning for warning in config.load_warnings)


def test_legacy_broker_keys_are_all_required(workdir: Path) -> None:
    data = changed(lambda d: d.pop("external_communication"))
    data["mqtt_address"] = "mosquitto"
    message = error_of(data)
    assert "mqtt_port: field required" in message and "mqtt_timeout: field required" in message


def test_session_timeout_is_timeout_ms_over_1000(workdir: Path) -> None:
    data = changed(lambda d: d["external_communication"].update(timeout_ms=1500))
    assert normalise(data).session_timeout_s == 1.5


def test_tls_paths_in_file_are_only_defaults(workdir: Path) -> None:
    """§3.2/§10 item 11: ca_certs_file/cert_file/key_file do not turn TLS on by themselves."""
    data = changed(lambda d: d["external_communication"].update(ca_certs_file="ca.pem", cert_file="c.pem"))
    config = normalise(data)
    assert config.broker.tls is None
    assert config.broker.tls_defaults.ca == Path("ca.pem")
    assert config.broker.tls_defaults.key is None


def test_unknown_keys_are_ignored_at_every_level(workdir: Path) -> None:
    """§6.1: unknown keys are ignored at every level."""
    data = current(extra=1)
    data["external_communication"]["extra"] = 1
    data["common_modules"]["1000"]["extra"] = 1
    data["cars"]["car_a"]["extra"] = 1
    data["logging"]["extra"] = 1
    data["logging"]["console"]["extra"] = 1
    assert normalise(data) == normalise(current())


# --- checklist §8.1 ---------------------------------------------------------------------


def test_item_01_empty_cars_is_rejected(workdir: Path) -> None:
    """Item 1: an empty cars object fails validation."""
    assert "Cars must contain at least 1 car" in error_of(current(cars={}))


@pytest.mark.parametrize("cars", [{"car_a": {}}, {"car_a": {}, "car_b": {"specific_modules": {}}}])
def test_item_02_one_or_two_cars_with_common_modules(workdir: Path, cars: Json) -> None:
    """Item 2: one car / two cars with common modules are accepted."""
    assert list(normalise(current(cars=cars)).cars) == list(cars)


def test_item_03_no_modules_at_all_is_rejected(workdir: Path) -> None:
    """Item 3: common_modules empty and cars without specific_modules fail."""
    message = error_of(current(common_modules={}, cars={"car_a": {}, "car_b": {}}))
    assert "Modules must contain at least 1 module for each car" in message


@pytest.mark.parametrize("ids", [["1"], ["1", "2", "1000"]])
def test_item_04_valid_common_modules(workdir: Path, ids: list[str]) -> None:
    """Item 4: one or several valid common modules are accepted, in file order."""
    config = normalise(current(common_modules={i: module() for i in ids}))
    assert list(config.common_modules) == [int(i) for i in ids]


def test_item_05_only_one_car_with_specific_module_is_rejected(workdir: Path) -> None:
    """Item 5: no common modules and only one of two cars with a specific module fails."""
    cars = {"car_a": {"specific_modules": {"1": module()}}, "car_b": {}}
    message = error_of(current(common_modules={}, cars=cars))
    assert "at least 1 module for each car" in message and "car_b" in message


def test_item_06_same_specific_id_in_two_cars(workdir: Path) -> None:
    """Item 6: both cars defining specific module "1" is fine."""
    cars = {"car_a": {"specific_modules": {"1": module()}}, "car_b": {"specific_modules": {"1": module()}}}
    config = normalise(current(common_modules={}, cars=cars))
    assert [mid for mid, _ in config.modules_for("car_b")] == [1]


def test_item_07_common_plus_specific(workdir: Path) -> None:
    """Item 7: common "1", a car without modules and a car with specific "2" are accepted."""
    cars = {"car_a": {}, "car_b": {"specific_modules": {"2": module()}}}
    config = normalise(current(common_modules={"1": module()}, cars=cars))
    assert [mid for mid, _ in config.modules_for("car_a")] == [1]
    assert [mid for mid, _ in config.modules_for("car_b")] == [2, 1]  # specific first, then common


def test_item_08_module_both_common_and_specific_is_rejected(workdir: Path) -> None:
    """Item 8: module id "1" both common and car-specific fails."""
    cars = {"car_a": {"specific_modules": {"1": module()}}}
    message = error_of(current(common_modules={"1": module()}, cars=cars))
    assert "either globally or per car, but not both" in message and "[1]" in message


def test_item_09_all_fields_valid(workdir: Path) -> None:
    """Item 9: a config with every field valid builds without error."""
    assert isinstance(normalise(current()), ServerConfig)


REQUIRED: list[tuple[str, ...]] = [
    ("company_name",),
    ("external_communication",),
    ("external_communication", "protocol"),
    ("external_communication", "server_address"),
    ("external_communication", "server_port"),
    ("external_communication", "timeout_ms"),
    ("timeout",),
    ("send_invalid_command",),
    ("sleep_duration_after_connection_refused",),
    ("common_modules",),
    ("common_modules", "1000", "lib_path"),
    ("common_modules", "1000", "config"),
    ("cars",),
    ("logging",),
    ("logging", "console"),
    ("logging", "file"),
    ("logging", "console", "level"),
    ("logging", "file", "use"),
]


@pytest.mark.parametrize("path", REQUIRED, ids=".".join)
def test_item_09_any_missing_field_is_an_error_naming_it(workdir: Path, path: tuple[str, ...]) -> None:
    """Item 9: when any single required field is missing there is an error, naming the field."""
    data = current()
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    assert f"{'.'.join(path)}: field required" in error_of(data)


VALID_NAMES = ["valid_name", "valid_name_2", "valid_2", "valid_2_name", "", "0"]
INVALID_NAMES = ["InvalidName", "invalid-name", "invalid name", "invalid_name!", "a/b", "a+", "#"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_item_10_valid_company_and_car_names(workdir: Path, name: str) -> None:
    """Item 10: valid company and car names are accepted."""
    config = normalise(current(company_name=name, cars={name: {}}))
    assert config.company_name == name and list(config.cars) == [name]


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_item_10_invalid_names_rejected_at_load(workdir: Path, name: str) -> None:
    """Item 10 + §10 item 10: invalid company names (and, by our decision, car names) fail at load."""
    assert error_of(current(company_name=name)).startswith("company_name: must match")
    assert f"cars.{name} (key): must match" in error_of(current(cars={name: {}}))


@given(st.from_regex(r"[a-z0-9_]*", fullmatch=True))
def test_item_10_property_names_of_the_alphabet_are_valid(name: str) -> None:
    """Item 10 (property): every string over [a-z0-9_] is a valid name."""
    assert TypeAdapter(Name).validate_python(name) == name


@given(st.text(min_size=1).filter(lambda s: any(c not in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in s)))
def test_item_10_property_other_characters_are_invalid(name: str) -> None:
    """Item 10 (property): any other character makes a name invalid."""
    with pytest.raises(ValidationError):
        TypeAdapter(Name).validate_python(name)


@pytest.mark.parametrize(
    "address", ["", " ", "host:1883", "my host", "http://host.x", "-bad", "a..b", "[::1]"]
)
def test_item_11_bad_broker_addresses_rejected_at_load(workdir: Path, address: str) -> None:
    """Item 11 + §10 item 10: an empty (or otherwise invalid) broker address fails at load."""
    data = changed(lambda d: d["external_communication"].update(server_address=address))
    assert "external_communication.server_address: must" in error_of(data)


@pytest.mark.parametrize(
    "address",
    ["localhost", "mosquitto", "127.0.0.1", "my.broker.example.com", "::1", "fe80::1", "mqtt_broker"],
)
def test_item_11_good_broker_addresses(address: str) -> None:
    """Host names (RFC 1123, plus '_' as Docker uses it), IPv4 and IPv6 are accepted."""
    assert TypeAdapter(BrokerHost).validate_python(address) == address


@given(st.ip_addresses())
def test_item_11_property_every_ip_address_is_accepted(address: object) -> None:
    assert TypeAdapter(BrokerHost).validate_python(str(address)) == str(address)


@given(
    st.from_regex(
        r"([a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\.){0,3}[a-z]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True
    )
)
def test_item_11_property_rfc1123_host_names_are_accepted(host: str) -> None:
    assert TypeAdapter(BrokerHost).validate_python(host) == host


@pytest.mark.parametrize("address", ["0", "127.1", "999.1.1.1", "1.2.3.4.5"])
def test_item_11_numeric_names_must_be_ip_addresses(address: str) -> None:
    """Decision: all-numeric names are ambiguous (inet_aton reads '127.1'); only real IPs pass."""
    with pytest.raises(ValidationError):
        TypeAdapter(BrokerHost).validate_python(address)


@pytest.mark.parametrize(("port", "expected"), [(0, 0), (1, 1), (1000, 1000), ("1883", 1883), (65535, 65535)])
def test_item_12_valid_ports(workdir: Path, port: object, expected: int) -> None:
    """Item 12: ports 0, 1, 1000 and "1883" are accepted."""
    data = changed(lambda d: d["external_communication"].update(server_port=port))
    assert normalise(data).broker.port == expected


@pytest.mark.parametrize("port", [-1, -1000, 0.1, "", 65536, True, None])
def test_item_12_invalid_ports(workdir: Path, port: object) -> None:
    """Item 12: ports -1, -1000, 0.1 and "" (and out of range, bool, null) are rejected."""
    data = changed(lambda d: d["external_communication"].update(server_port=port))
    assert error_of(data).startswith("external_communication.server_port:")


@given(st.integers())
def test_item_12_property_port_range(port: int) -> None:
    """Item 12 (property): exactly 0..65535 is a port."""
    adapter = TypeAdapter(Port)
    if 0 <= port <= 65535:
        assert adapter.validate_python(port) == port
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(port)


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (1, 1), (0.1, 0.1), (1000, 1000), ("1883", 1883)])
def test_item_13_valid_timeouts(workdir: Path, value: object, expected: float) -> None:
    """Item 13: timeouts 0, 1, 0.1, 1000 and "1883" are accepted (T and legacy S)."""
    assert normalise(current(timeout=value)).response_timeout_s == expected
    legacy = changed(lambda d: d.pop("external_communication"))
    legacy.update(mqtt_address="localhost", mqtt_port=1883, mqtt_timeout=value)
    assert normalise(legacy).session_timeout_s == expected


@pytest.mark.parametrize("value", [-1, -1000, "", True, None, float("inf"), float("nan")])
def test_item_13_invalid_timeouts(workdir: Path, value: object) -> None:
    """Item 13: timeouts -1, -1000 and "" (and bool, null, inf, nan) are rejected."""
    assert error_of(current(timeout=value)).startswith("timeout:")


@pytest.mark.parametrize("value", [-1, "", 0.5, True])
def test_item_13_invalid_timeout_ms(workdir: Path, value: object) -> None:
    """Item 13: timeout_ms (S in ms) is an integer >= 0."""
    data = changed(lambda d: d["external_communication"].update(timeout_ms=value))
    assert error_of(data).startswith("external_communication.timeout_ms:")


@pytest.mark.parametrize("value", [0, 1, 1000, 0.1])
def test_item_14_valid_sleep_durations(workdir: Path, value: float) -> None:
    """Item 14: sleep durations 0, 1, 1000 and 0.1 are accepted."""
    config = normalise(current(sleep_duration_after_connection_refused=value))
    assert config.reconnect_delay_s == value


@pytest.mark.parametrize("value", [-1, -1000, ""])
def test_item_14_invalid_sleep_durations(workdir: Path, value: object) -> None:
    """Item 14: sleep durations -1, -1000 and "" are rejected."""
    message = error_of(current(sleep_duration_after_connection_refused=value))
    assert message.startswith("sleep_duration_after_connection_refused:")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_items_13_14_property_non_negative_seconds(value: float) -> None:
    adapter = TypeAdapter(Seconds)
    if value >= 0:
        assert adapter.validate_python(value) == value
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


def test_item_15_empty_module_map_for_a_car_is_rejected(workdir: Path) -> None:
    """Item 15: a car whose effective module map is empty is rejected."""
    message = error_of(current(common_modules={}, cars={"car_a": {"specific_modules": {}}}))
    assert "Modules must contain at least 1 module for each car" in message


def test_item_16_module_with_existing_library_and_empty_config(workdir: Path) -> None:
    """Item 16: an existing library with config {} is valid; timeout_ms defaults to 1000."""
    settings = normalise(current()).common_modules[1000]
    assert settings.config == {} and settings.command_wait_timeout_ms == 1000
    assert settings.lib_path.is_absolute()  # relative paths are taken from the working directory


def test_item_16_missing_library_error_names_the_field(workdir: Path) -> None:
    """Item 16: a non-existing path is a validation error naming the field."""
    data = current(common_modules={}, cars={"car_a": {"specific_modules": {"1000": module("missing.so")}}})
    assert error_of(data) == "cars.car_a.specific_modules.1000.lib_path: file not found: missing.so"


def test_item_16_library_path_must_be_a_file(workdir: Path) -> None:
    assert "lib_path: not a file" in error_of(current(common_modules={"1": module("build")}))
    assert "lib_path: must not be empty" in error_of(current(common_modules={"1": module("")}))


# Items 17 and 18 are checked at server construction: tests/unit/test_server_build.py.


# --- further rules of §6.3-§6.5 ------------------------------------------------------------


@pytest.mark.parametrize(("key", "number"), [("0", 0), ("007", 7), ("1000", 1000)])
def test_module_ids_are_digit_strings_converted_to_int(workdir: Path, key: str, number: int) -> None:
    assert list(normalise(current(common_modules={key: module()})).common_modules) == [number]


@pytest.mark.parametrize("key", ["x", "-1", "1.0", " 1", "", "\uff11"])  # last: FULLWIDTH DIGIT ONE
def test_invalid_module_ids(workdir: Path, key: str) -> None:
    assert f"common_modules.{key} (key): module id must consist of digits" in error_of(
        current(common_modules={key: module()})
    )


def test_module_ids_denoting_the_same_number_are_rejected(workdir: Path) -> None:
    """Decision: '1' and '01' would silently collapse into one module; refuse."""
    assert "both denote module 1" in error_of(current(common_modules={"1": module(), "01": module()}))


def test_module_config_values(workdir: Path) -> None:
    """§6.3: str and int kept, bool -> 1/0, whole floats -> int; file order kept."""
    values = {"s": "text", "i": 10, "t": True, "f": False, "w": 2.0}
    config = normalise(current(common_modules={"1": module(config=values)}))
    assert config.common_modules[1].config == {"s": "text", "i": 10, "t": 1, "f": 0, "w": 2}
    assert list(config.common_modules[1].config) == ["s", "i", "t", "f", "w"]


@pytest.mark.parametrize("value", [1.5, None, {"a": 1}, [1]])
def test_module_config_rejects_non_scalar_values(workdir: Path, value: object) -> None:
    message = error_of(current(common_modules={"1": module(config={"bad": value})}))
    assert message.startswith("common_modules.1.config.bad: must be a string or an integer")


@pytest.mark.parametrize(("value", "ok"), [(1, True), (5000, True), (0, False), (-1, False), (1.5, False)])
def test_module_timeout_ms(workdir: Path, value: object, ok: bool) -> None:
    """§6.3: module timeout_ms (Wm) is an integer >= 1."""
    data = current(common_modules={"1": module(timeout_ms=value)})
    if ok:
        assert normalise(data).common_modules[1].command_wait_timeout_ms == value
    else:
        assert error_of(data).startswith("common_modules.1.timeout_ms:")


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), ("yes", True), ("no", False), (0, False), (1, True)]
)
def test_send_invalid_command_is_a_lax_bool(workdir: Path, value: object, expected: bool) -> None:
    assert normalise(current(send_invalid_command=value)).send_invalid_command is expected


def test_send_invalid_command_rejects_other_values(workdir: Path) -> None:
    assert error_of(current(send_invalid_command="maybe")).startswith("send_invalid_command:")


def test_protocol_must_be_mqtt(workdir: Path) -> None:
    data = changed(lambda d: d["external_communication"].update(protocol="mqtt"))
    assert error_of(data).startswith("external_communication.protocol:")


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical"])
def test_logging_levels_are_case_insensitive(workdir: Path, level: str) -> None:
    data = changed(lambda d: d["logging"]["console"].update(level=level))
    assert normalise(data).logging.console.level == level.upper()


def test_unknown_logging_level_is_rejected(workdir: Path) -> None:
    data = changed(lambda d: d["logging"]["console"].update(level="verbose"))
    assert error_of(data).startswith("logging.console.level:")


def test_file_logging_needs_an_existing_directory(workdir: Path) -> None:
    """§6.4: with file.use the path must be an existing directory; unused, it is not checked."""
    missing = changed(lambda d: d["logging"]["file"].update(use=True, path="nolog"))
    assert error_of(missing) == "logging.file.path: not an existing directory: nolog"
    absent = changed(lambda d: d["logging"]["file"].update(use=True))
    assert error_of(absent).startswith("logging.file.path: required")
    (workdir / "log").mkdir()
    present = changed(lambda d: d["logging"]["file"].update(use=True, path="./log/"))
    assert normalise(present).logging.file.path == workdir / "log"
    unused = changed(lambda d: d["logging"]["file"].update(use=False, path="nolog"))
    assert not normalise(unused).logging.file.use


def test_all_problems_are_reported_together(workdir: Path) -> None:
    message = error_of(current(company_name="Bad", timeout=-1))
    assert "company_name:" in message and "timeout:" in message


def test_root_must_be_an_object() -> None:
    assert "JSON object" in error_of([1, 2])


# --- loading from disk -----------------------------------------------------------------------


def test_load_config_missing_file(workdir: Path) -> None:
    with pytest.raises(ConfigFileNotFoundError, match=r"Config file not found: nothing\.json"):
        load_config("nothing.json")


def test_load_config_invalid_json_names_the_position(workdir: Path) -> None:
    (workdir / "bad.json").write_text('{"company_name": "acme",\n  oops}')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 2 column 3"):
        load_config(workdir / "bad.json")


def test_load_config_warns_about_duplicate_keys(workdir: Path) -> None:
    text = json.dumps(current()).replace('"timeout": 30', '"timeout": 1, "timeout": 30')
    (workdir / "dup.json").write_text(text)
    config = load_config(workdir / "dup.json")
    assert config.response_timeout_s == 30
    assert any("duplicate JSON key 'timeout'" in warning for warning in config.load_warnings)


def test_config_is_frozen(workdir: Path) -> None:
    config = normalise(current())
    with pytest.raises(ValidationError):
        config.company_name = "other"


def test_config_can_be_built_in_code(workdir: Path) -> None:
    """The normalised model checks its own fields, so other code may construct it directly."""
    settings = ModuleSettings(lib_path=Path(LIB), config={"k": "v"}, command_wait_timeout_ms=5)
    assert settings.command_wait_timeout_ms == 5
    with pytest.raises(ValidationError):
        ModuleSettings(lib_path=Path("missing.so"), config={})


# --- secrets and the logged summary ----------------------------------------------------------


def secret_config(workdir: Path, **values: Any) -> ServerConfig:
    return normalise(current(common_modules={"1000": module(config=values)}))


def test_env_and_file_references_are_resolved(workdir: Path) -> None:
    (workdir / "token").write_text("from-file\n")
    config = secret_config(
        workdir, a="${env:API_KEY}", b="${file:token}", c="$${env:API_KEY}", d=3, e="plain"
    )
    resolved = resolve_module_config(
        config.common_modules[1000].config, where="common_modules.1000", environ={"API_KEY": "s3cret"}
    )
    assert resolved == {"a": "s3cret", "b": "from-file", "c": "${env:API_KEY}", "d": 3, "e": "plain"}
    # Loading itself never resolves: the model still holds the reference.
    assert config.common_modules[1000].config["a"] == "${env:API_KEY}"


def test_missing_references_name_module_and_key_not_value(workdir: Path) -> None:
    config = secret_config(workdir, api_key="${env:NOT_SET_ANYWHERE}", cert="${file:/nonexistent/x}", ok="v")
    with pytest.raises(ConfigError) as caught:
        check_secret_references(config, environ={})
    message = str(caught.value)
    assert "common_modules.1000.config.api_key: environment variable 'NOT_SET_ANYWHERE' is not set" in message
    assert "common_modules.1000.config.cert: file '/nonexistent/x' not found" in message


def test_references_in_car_specific_modules_are_checked(workdir: Path) -> None:
    cars = {"car_a": {"specific_modules": {"7": module(config={"k": "${env:MISSING_X}"})}}}
    config = normalise(current(cars=cars))
    with pytest.raises(ConfigError, match=r"cars\.car_a\.specific_modules\.7\.config\.k"):
        check_secret_references(config, environ={})
    check_secret_references(config, environ={"MISSING_X": "1"})


def test_resolution_uses_the_process_environment(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_TEST_TOKEN", "tok")
    assert resolve_module_config({"k": "${env:FLEET_TEST_TOKEN}"}, where="m") == {"k": "tok"}


@pytest.mark.parametrize("value", ["${env:}", "${env:1X}", "${file:}", "${vault:x}", "${ENV:X}"])
def test_malformed_references_are_rejected_at_load(workdir: Path, value: str) -> None:
    message = error_of(current(common_modules={"1": module(config={"k": value})}))
    assert message.startswith("common_modules.1.config.k:")


def test_redacted_summary_excludes_module_config(workdir: Path) -> None:
    """§6.9 step 4: the logged config leaves module config objects out (only their keys)."""
    config = secret_config(workdir, api_key="literal-secret", url="http://x")
    summary = redacted_summary(config)
    text = json.dumps(summary)
    assert "literal-secret" not in text and "http://x" not in text
    assert summary["common_modules"] == {
        "1000": {
            "lib_path": str(workdir / LIB),
            "command_wait_timeout_ms": 1000,
            "config_keys": ["api_key", "url"],
        }
    }
    assert summary["broker"] == {"host": "127.0.0.1", "port": 1883, "tls": None}


def test_modules_for_keeps_file_order(workdir: Path) -> None:
    cars = {"car_b": {"specific_modules": {"9": module(), "3": module()}}, "car_a": {}}
    config = normalise(current(common_modules={"5": module(), "2": module()}, cars=cars))
    assert list(config.cars) == ["car_b", "car_a"]
    assert [mid for mid, _ in config.modules_for("car_b")] == [9, 3, 5, 2]
    assert copy.deepcopy(config) == config
