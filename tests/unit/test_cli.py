"""Command line and startup (docs/protocol.md §6.8, §6.9; checklist §8.1 items 19-23)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from external_server import cli
from external_server.cli import CliError, CliOptions, main, parse_args, resolve_tls
from external_server.config import ServerConfig, TlsDefaults
from external_server.logging_setup import reset_logging

REPO = Path(__file__).resolve().parents[2]
LIB = "build/modules/libexample.so"
ALL_TLS = (
    "ca certificate (--ca), PEM encoded client certificate (--cert), "
    "private key to PEM encoded client certificate (--key)"
)


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    yield
    reset_logging()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped example configs, a stand-in library and TLS files in a fresh working directory."""
    (tmp_path / "build" / "modules").mkdir(parents=True)
    (tmp_path / LIB).write_bytes(b"")
    shutil.copytree(REPO / "config", tmp_path / "config")
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    monkeypatch.chdir(tmp_path)
    return tmp_path


class FakeApp:
    """Stands in for external_server.app so main() can be driven without a broker."""

    def __init__(self, result: int | None = 0, error: BaseException | None = None) -> None:
        self.calls: list[tuple[ServerConfig, CliOptions]] = []
        self.result = result
        self.error = error

    def run(self, config: ServerConfig, options: CliOptions) -> int | None:
        self.calls.append((config, options))
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> FakeApp:
    fake = FakeApp()
    module = types.ModuleType(cli.APP_MODULE)
    module.run = fake.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, cli.APP_MODULE, module)
    return fake


def write_config(directory: Path, name: str = "custom.json", **changes: Any) -> Path:
    data = json.loads((directory / "config" / "config.json").read_text())
    data.update(changes)
    path = directory / name
    path.write_text(json.dumps(data))
    return path


# --- parse_args ----------------------------------------------------------------------------


def test_item_19_config_path_alone_means_tls_off() -> None:
    """Item 19: an existing config path as the only argument is accepted and TLS is off."""
    options = parse_args(["config/config.json"])
    assert options == CliOptions(config_path=Path("config/config.json"), tls=False)


@pytest.mark.parametrize("argv", [["-c", "x.json"], ["--config", "x.json"], ["--config=x.json"], ["x.json"]])
def test_config_option_and_positional_forms(argv: list[str]) -> None:
    """§6.7/§10 item 12: the old -c/--config option and the 2.2 positional path both work."""
    assert parse_args(argv).config_path == Path("x.json")


def test_default_config_path() -> None:
    assert parse_args([]).config_path == Path("./config/config.json")


def test_config_given_twice_is_an_error() -> None:
    with pytest.raises(CliError, match="not both"):
        parse_args(["a.json", "-c", "b.json"])


def test_tls_flags() -> None:
    assert parse_args(["--tls"]).tls is True
    assert parse_args(["--tls", "--no-tls"]).tls is False
    assert parse_args(["--no-tls"]).tls is False


def test_http_port() -> None:
    assert parse_args(["--http-port", "8080"]).http_port == 8080
    assert parse_args([]).http_port is None
    for bad in ("-1", "65536", "x"):
        with pytest.raises(CliError, match="http-port"):
            parse_args(["--http-port", bad])


def test_unknown_argument_is_a_cli_error() -> None:
    with pytest.raises(CliError, match="unrecognized arguments: --bogus"):
        parse_args(["--bogus"])


# --- TLS (§6.8, §10 item 11) -----------------------------------------------------------------


def test_item_21_tls_without_files_lists_all_three() -> None:
    """Item 21: --tls without --ca/--cert/--key lists all three."""
    with pytest.raises(CliError) as caught:
        resolve_tls(parse_args(["--tls"]))
    assert str(caught.value) == f"Invalid arguments. TLS requires additional parameters: {ALL_TLS}"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        (["--cert", "c", "--key", "k"], "ca certificate (--ca)"),
        (["--ca", "a", "--key", "k"], "PEM encoded client certificate (--cert)"),
        (["--ca", "a", "--cert", "c"], "private key to PEM encoded client certificate (--key)"),
    ],
)
def test_item_21_exactly_one_missing_is_listed_alone(given: list[str], missing: str) -> None:
    """Item 21: with exactly one missing, only that one is listed."""
    with pytest.raises(CliError) as caught:
        resolve_tls(parse_args(["--tls", *given]))
    assert str(caught.value) == f"Invalid arguments. TLS requires additional parameters: {missing}"


def test_item_22_tls_with_all_files_keeps_the_paths(workdir: Path) -> None:
    """Item 22: --tls --ca --cert --key is accepted and the three paths are kept."""
    options = parse_args(["--tls", "--ca", "ca.pem", "--cert", "cert.pem", "--key", "key.pem"])
    assert (options.ca, options.cert, options.key) == (Path("ca.pem"), Path("cert.pem"), Path("key.pem"))
    files = resolve_tls(options)
    assert files is not None and (files.ca, files.cert, files.key) == (options.ca, options.cert, options.key)


def test_tls_files_must_exist(workdir: Path) -> None:
    options = parse_args(["--tls", "--ca", "ca.pem", "--cert", "nope.pem", "--key", "key.pem"])
    with pytest.raises(
        CliError, match=r"TLS file not found: PEM encoded client certificate \(--cert\): nope.pem"
    ):
        resolve_tls(options)


def test_tls_files_ignored_without_tls() -> None:
    assert resolve_tls(parse_args(["--ca", "x", "--cert", "y"])) is None


def test_config_tls_paths_fill_in_for_missing_flags(workdir: Path) -> None:
    """§10 item 11: config values are used when --tls is given without (some) paths; CLI wins."""
    defaults = TlsDefaults(ca=Path("ca.pem"), cert=Path("ca.pem"), key=Path("key.pem"))
    files = resolve_tls(parse_args(["--tls", "--cert", "cert.pem"]), defaults)
    assert files is not None
    assert (files.ca, files.cert, files.key) == (Path("ca.pem"), Path("cert.pem"), Path("key.pem"))


# --- main(): exit codes and messages (§6.9) --------------------------------------------------


def test_item_19_main_runs_the_app_with_tls_off(workdir: Path, app: FakeApp) -> None:
    """Item 19 via main(): the server is started with the loaded config, TLS off."""
    assert main(["config/config.json"]) == 0
    [(config, options)] = app.calls
    assert config.company_name == "acme" and config.broker.tls is None
    assert options.tls is False and options.ca is None


def test_item_20_missing_config_file(workdir: Path, app: FakeApp, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 20: a non-existing config path ends with a 'file not found' message and exit 1."""
    assert main(["nothing.json"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "Config file not found: nothing.json"
    assert app.calls == []


def test_default_config_path_is_used(workdir: Path, app: FakeApp) -> None:
    assert main([]) == 0 and len(app.calls) == 1


def test_item_21_through_main(workdir: Path, app: FakeApp, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 21 via main(): exit code 1, all three parameters listed."""
    assert main(["config/config.json", "--tls"]) == 1
    assert (
        capsys.readouterr().err.strip() == f"Invalid arguments. TLS requires additional parameters: {ALL_TLS}"
    )
    assert app.calls == []


def test_item_22_through_main(workdir: Path, app: FakeApp) -> None:
    """Item 22 via main(): the TLS paths reach the server, in the options and in the config."""
    argv = ["-c", "config/config.json", "--tls", "--ca", "ca.pem", "--cert", "cert.pem", "--key", "key.pem"]
    assert main(argv) == 0
    [(config, options)] = app.calls
    assert options.tls and (options.ca, options.cert, options.key) == (
        Path("ca.pem"),
        Path("cert.pem"),
        Path("key.pem"),
    )
    assert config.broker.tls is not None and config.broker.tls.key == Path("key.pem")


def test_tls_paths_from_the_config_file_reach_the_server(workdir: Path, app: FakeApp) -> None:
    data = json.loads((workdir / "config" / "config.json").read_text())
    data["external_communication"].update(ca_certs_file="ca.pem", cert_file="cert.pem", key_file="key.pem")
    (workdir / "tls.json").write_text(json.dumps(data))
    assert main(["tls.json", "--tls"]) == 0
    [(config, options)] = app.calls
    assert options.ca == Path("ca.pem") and config.broker.tls is not None
    assert main(["tls.json"]) == 0  # paths in the file alone do not enable TLS
    assert app.calls[1][0].broker.tls is None and not app.calls[1][1].tls


def test_ca_cert_key_without_tls_are_ignored(workdir: Path, app: FakeApp) -> None:
    assert main(["config/config.json", "--ca", "missing.pem"]) == 0
    [(config, options)] = app.calls
    assert options.ca is None and config.broker.tls is None


def test_invalid_config_message_and_exit_code(
    workdir: Path, app: FakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    """§6.9 step 2: ``Invalid config: <details>`` naming the field, exit 1, no traceback."""
    path = write_config(workdir, company_name="Bad-Name")
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Invalid config: company_name: must match")
    assert "Traceback" not in err and app.calls == []


def test_invalid_json_is_an_invalid_config(
    workdir: Path, app: FakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "broken.json").write_text("{")
    assert main(["broken.json"]) == 1
    assert capsys.readouterr().err.startswith("Invalid config: broken.json: invalid JSON")


def test_bad_arguments_exit_1(workdir: Path, app: FakeApp, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bogus"]) == 1
    assert "unrecognized arguments" in capsys.readouterr().err


def test_item_23_legacy_config_with_dash_c_runs(workdir: Path, app: FakeApp) -> None:
    """Item 23: the legacy config file started with ``-c <path>`` runs the server."""
    assert main(["-c", "config/legacy-example.json"]) == 0
    [(config, _)] = app.calls
    assert config.session_timeout_s == 30 and list(config.cars) == ["car_a", "car_b"]


def test_missing_secret_is_an_invalid_config(
    workdir: Path, app: FakeApp, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEET_TEST_UNSET", raising=False)
    modules = {"1000": {"lib_path": LIB, "config": {"api_key": "${env:FLEET_TEST_UNSET}"}}}
    path = write_config(workdir, common_modules=modules)
    assert main([str(path)]) == 1
    expected = "common_modules.1000.config.api_key: environment variable 'FLEET_TEST_UNSET' is not set"
    assert capsys.readouterr().err.strip() == f"Invalid config: {expected}"


def test_secret_values_and_module_config_are_never_logged(
    workdir: Path, app: FakeApp, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """§6.9 step 4 + design: the logged config excludes module config, secrets never appear."""
    monkeypatch.setenv("FLEET_TEST_SECRET", "top-secret-value")
    modules = {
        "1000": {"lib_path": LIB, "config": {"api_key": "${env:FLEET_TEST_SECRET}", "plain": "visible?"}}
    }
    logging_section = {"console": {"level": "debug", "use": True}, "file": {"level": "debug", "use": False}}
    path = write_config(workdir, common_modules=modules, logging=logging_section)
    assert main([str(path)]) == 0
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Loaded config:" in captured.err and '"config_keys": ["api_key", "plain"]' in captured.err
    assert "top-secret-value" not in output and "visible?" not in output and "FLEET_TEST_SECRET" not in output


def test_load_warnings_are_logged(workdir: Path, app: FakeApp, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(workdir, logging={"log-path": "/nonexistent/log", "verbose": True})
    assert main([str(path)]) == 0
    assert "file logging disabled" in capsys.readouterr().err


def test_app_exit_code_is_returned(workdir: Path, app: FakeApp) -> None:
    app.result = 1
    assert main(["config/config.json"]) == 1
    app.result = None
    assert main(["config/config.json"]) == 0


def test_keyboard_interrupt_exits_0(workdir: Path, app: FakeApp) -> None:
    app.error = KeyboardInterrupt()
    assert main(["config/config.json"]) == 0


def test_other_missing_modules_are_not_hidden(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_import(name: str) -> types.ModuleType:
        raise ModuleNotFoundError("No module named 'aiomqtt'", name="aiomqtt")

    monkeypatch.setattr(importlib, "import_module", broken_import)
    with pytest.raises(ModuleNotFoundError):
        main(["config/config.json"])


def test_python_dash_m_entry_point(workdir: Path) -> None:
    """``python -m external_server``: clear message and exit 1, no traceback; --help exits 0."""
    missing = subprocess.run(
        [sys.executable, "-m", "external_server", "-c", "nothing.json"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Config file not found: nothing.json"
    usage = subprocess.run(
        [sys.executable, "-m", "external_server", "--help"], check=False, capture_output=True, text=True
    )
    assert usage.returncode == 0 and "--http-port" in usage.stdout
