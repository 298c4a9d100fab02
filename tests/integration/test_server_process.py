"""The real server process: ``python -m external_server`` (docs/protocol.md §6.8, §6.9, items 20, 21, 23).

SIGTERM and SIGINT stop it cleanly (disconnect notification for a connected car, exit
code 0, "Stopped." logged); a startup error is one clear message and exit code 1,
never a traceback; the legacy config file with ``-c`` serves a car.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from external_server.app import CompanyServer, StartupError
from external_server.cli import CliOptions
from external_server.config.loading import load_config
from external_server.device import Device
from external_server.simulator.car_client import CarClient
from external_server.wire import ExternalProtocol_pb2 as ext
from harness import COMPANY, server_config_document
from mosquitto_broker import MosquittoBroker
from process_helpers import (
    HTTP_ARGS,
    ServerProcesses,
    connect_with_retry,
    next_of_session,
    run_server_to_exit,
    write_config,
)
from support.example_module import EXAMPLE_SO
from support.waiting import free_port

DEVICE = Device(1000, 0, "test", "T")
CONNECTED_LOG = "Connected to MQTT broker"


@pytest.fixture
def processes() -> Iterator[ServerProcesses]:
    started = ServerProcesses()
    try:
        yield started
    finally:
        started.stop_all()


def _config(tmp_path: Path, broker_port: int, modules: dict[str, Any] | None = None) -> Path:
    document = server_config_document(broker_port=broker_port, cars={"car_a": {"1000": {}}})
    if modules is not None:
        document["cars"]["car_a"]["specific_modules"] = modules
    return write_config(tmp_path / "config.json", document)


def _module(**config: object) -> dict[str, Any]:
    return {"lib_path": str(EXAMPLE_SO), "config": config, "timeout_ms": 50}


async def _serve_one_session(car: CarClient) -> str:
    session_id, _ = await connect_with_retry(car, [DEVICE])
    car.send_status(session_id, ext.Status.RUNNING, 2, DEVICE, b"{}")
    answer = await next_of_session(car, session_id, "statusResponse")
    assert answer.statusResponse.messageCounter == 2
    return session_id


@pytest.mark.broker
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_cleanly(
    signum: signal.Signals, mosquitto: MosquittoBroker, tmp_path: Path, processes: ServerProcesses
) -> None:
    """§6.9 (SIGTERM like Ctrl-C): the connected car gets a disconnect notification, exit code 0."""
    config = _config(tmp_path, mosquitto.port)
    server = processes.start(tmp_path, "-c", str(config), *HTTP_ARGS)
    assert await server.wait_for_output_async(CONNECTED_LOG, 15.0), server.stderr()
    async with CarClient(mosquitto.address, COMPANY, "car_a") as car:
        await _serve_one_session(car)
        car.clear()
        server.send_signal(signum)
        assert await car.receive_disconnect_notification(10.0)
        assert await server.wait_async(20.0) == 0
    output = server.stderr()
    assert "Stopped." in output
    assert "Traceback" not in output


def _single_message(stderr: str, prefix: str) -> str:
    """The one plain (not log-formatted) line of stderr; log lines start with "[<timestamp>]"."""
    assert "Traceback" not in stderr, stderr
    plain = [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert len(plain) == 1, stderr
    assert plain[0].startswith(prefix), stderr
    return plain[0]


def test_module_file_missing_is_an_invalid_config(tmp_path: Path) -> None:
    """Items 16/17 at process level: config validation names the field; exit 1."""
    config = _config(tmp_path, free_port(), {"1000": {**_module(), "lib_path": str(tmp_path / "gone.so")}})
    result = run_server_to_exit(tmp_path, "-c", str(config), *HTTP_ARGS)
    assert result.returncode == 1
    message = _single_message(result.stderr, "Invalid config")
    assert "lib_path" in message and "gone.so" in message


def test_module_file_disappearing_after_validation(tmp_path: Path) -> None:
    """Item 17: the library passes config validation, then is gone when the server is built."""
    library = tmp_path / "libcopy.so"
    shutil.copyfile(EXAMPLE_SO, library)
    config_path = _config(tmp_path, free_port(), {"1000": {**_module(), "lib_path": str(library)}})
    config = load_config(config_path)
    library.unlink()
    server = CompanyServer(config, CliOptions(config_path=config_path, http_host="127.0.0.1", http_port=0))
    with pytest.raises(StartupError, match=r"libcopy\.so") as raised:
        server.build()
    assert "not found" in str(raised.value).lower() or "no such file" in str(raised.value).lower()


def test_module_number_mismatch(tmp_path: Path) -> None:
    """Item 18: the example module (1000) configured under key "1001"."""
    config = _config(tmp_path, free_port(), {"1001": _module()})
    result = run_server_to_exit(tmp_path, "-c", str(config), *HTTP_ARGS)
    assert result.returncode == 1
    message = _single_message(result.stderr, "Startup failed")
    assert "does not match" in message and "1001" in message


def test_init_returning_null(tmp_path: Path) -> None:
    """§5.6: ``init`` returns NULL for an invalid config value (example module: echo_every "x")."""
    config = _config(tmp_path, free_port(), {"1000": _module(echo_every="x")})
    result = run_server_to_exit(tmp_path, "-c", str(config), *HTTP_ARGS)
    assert result.returncode == 1
    message = _single_message(result.stderr, "Startup failed")
    assert "init" in message and "1000" in message


def test_startup_error_with_console_logging_off_is_one_line(tmp_path: Path) -> None:
    """With only file logging, stderr holds exactly the one message; the log file has it too."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    document = server_config_document(broker_port=free_port(), cars={"car_a": {"1000": {}}}, log_path=log_dir)
    document["logging"]["console"]["use"] = False
    document["cars"]["car_a"]["specific_modules"] = {"1001": _module()}
    config = write_config(tmp_path / "config.json", document)
    result = run_server_to_exit(tmp_path, "-c", str(config), *HTTP_ARGS)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "does not match" in result.stderr
    assert "does not match" in (log_dir / "external_server.log").read_text()


def test_config_path_that_does_not_exist(tmp_path: Path) -> None:
    """Item 20."""
    result = run_server_to_exit(tmp_path, "-c", str(tmp_path / "nowhere.json"), *HTTP_ARGS)
    assert result.returncode == 1
    message = _single_message(result.stderr, "")
    assert "not found" in message and "nowhere.json" in message


TLS_NAMES = {
    "--ca": "ca certificate (--ca)",
    "--cert": "PEM encoded client certificate (--cert)",
    "--key": "private key to PEM encoded client certificate (--key)",
}


@pytest.mark.parametrize(
    "given",
    [(), ("--ca",), ("--cert",), ("--key",), ("--ca", "--cert"), ("--cert", "--key"), ("--ca", "--key")],
    ids=lambda given: "given:" + ("+".join(g.strip("-") for g in given) or "none"),
)
def test_tls_without_its_parameters(given: tuple[str, ...], tmp_path: Path) -> None:
    """Item 21: every missing parameter is listed (and only those), exit 1."""
    config = _config(tmp_path, free_port())
    existing = tmp_path / "some.pem"
    existing.write_text("not used")
    args = [arg for option in given for arg in (option, str(existing))]
    result = run_server_to_exit(tmp_path, "-c", str(config), "--tls", *args, *HTTP_ARGS)
    assert result.returncode == 1
    message = _single_message(result.stderr, "Invalid arguments. TLS requires additional parameters:")
    for option, name in TLS_NAMES.items():
        assert (name in message) == (option not in given), message


@pytest.mark.broker
async def test_legacy_config_with_dash_c_serves_a_car(
    mosquitto: MosquittoBroker, tmp_path: Path, processes: ServerProcesses
) -> None:
    """Item 23: the integration suite's config shape (mqtt_address/mqtt_port/mqtt_timeout,
    logging.log-path/verbose) and ``-c`` run a server that serves a car."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    legacy = {
        "company_name": COMPANY,
        "mqtt_address": "127.0.0.1",
        "mqtt_port": mosquitto.port,
        "mqtt_timeout": 5,
        "timeout": 1,
        "send_invalid_command": False,
        "sleep_duration_after_connection_refused": 0.1,
        "logging": {"log-path": str(log_dir), "verbose": True},
        "common_modules": {"1000": {"lib_path": str(EXAMPLE_SO), "config": {}}},
        "cars": {"car_a": {}},
    }
    config = tmp_path / "legacy.json"
    config.write_text(json.dumps(legacy))
    server = processes.start(tmp_path, "-c", str(config), *HTTP_ARGS)
    assert await server.wait_for_output_async(CONNECTED_LOG, 15.0), server.stderr()
    async with CarClient(mosquitto.address, COMPANY, "car_a") as car:
        session_id = await _serve_one_session(car)
    assert server.running
    log_file = (log_dir / "external_server.log").read_text()
    assert session_id in log_file  # verbose → DEBUG/INFO lines in <log-path>/external_server.log
    server.send_signal(signal.SIGTERM)
    assert await server.wait_async(20.0) == 0
