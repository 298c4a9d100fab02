"""Helpers of the multi-car, TLS, outage, bad-input and process tests.

Two parts:

* the real server as a subprocess (``python -m external_server ...``) with its
  output in files, signalled and ended only by its own PID;
* car-side scripts on a :class:`CarClient`: a strict connect sequence, one that
  retries with a fresh session id (for a server that may be between sessions),
  and reads that skip messages of other sessions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from external_server.device import Device
from external_server.simulator.car_client import CarClient, UnexpectedMessageError
from external_server.wire import ExternalProtocol_pb2 as ext

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
HTTP_ARGS = ("--http-host", "127.0.0.1", "--http-port", "0")
"""Every server process gets these: the status endpoint on loopback, on a free port."""

# ---- the server as a subprocess ------------------------------------------------------


def server_python() -> str:
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def server_command(*args: str) -> list[str]:
    return [server_python(), "-m", "external_server", *args]


def write_config(path: Path, document: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


@dataclass
class ServerProcess:
    """One server process started by a test; its stdout/stderr go to files in ``workdir``."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout_s: float = 10.0, *, count: int = 1) -> bool:
        """True once ``text`` occurs ``count`` times in stderr; False on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stderr().count(text) >= count:
                return True
            if not self.running:
                return self.stderr().count(text) >= count
            time.sleep(0.05)
        return False

    async def wait_for_output_async(self, text: str, timeout_s: float = 10.0, *, count: int = 1) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stderr().count(text) >= count:
                return True
            if not self.running:
                return self.stderr().count(text) >= count
            await asyncio.sleep(0.05)
        return False

    def send_signal(self, signum: signal.Signals) -> None:
        if self.running:
            os.kill(self.pid, signum)

    def wait(self, timeout_s: float = 20.0) -> int:
        return self.process.wait(timeout_s)

    async def wait_async(self, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while self.running:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.process.args, timeout_s)
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not end; only this PID is ever signalled."""
        if not self.running:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)


def start_server_process(workdir: Path, *args: str, name: str = "server") -> ServerProcess:
    """Start ``python -m external_server <args>`` in ``workdir`` (not waiting for anything)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stdout_path = workdir / f"{name}.stdout"
    stderr_path = workdir / f"{name}.stderr"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            server_command(*args),
            cwd=workdir,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return ServerProcess(process, stdout_path, stderr_path)


@dataclass
class ServerProcesses:
    """Every process a test started, stopped at teardown."""

    started: list[ServerProcess] = field(default_factory=list)

    def start(self, workdir: Path, *args: str, name: str = "server") -> ServerProcess:
        process = start_server_process(workdir, *args, name=name)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()


@dataclass(frozen=True, slots=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


def run_server_to_exit(workdir: Path, *args: str, timeout_s: float = 30.0) -> Finished:
    """Run the server expecting it to end by itself (startup errors); kill it on timeout."""
    process = start_server_process(workdir, *args, name="run")
    try:
        returncode = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.stop()
        raise AssertionError(f"server did not exit within {timeout_s} s: {process.stderr()}") from None
    return Finished(returncode, process.stdout(), process.stderr())


# ---- car-side scripts ------------------------------------------------------------------

_session_numbers = itertools.count(1)


def fresh_session_id(prefix: str = "s") -> str:
    return f"{prefix}{next(_session_numbers):05d}"


def session_of(message: ext.ExternalServer) -> str:
    member = message.WhichOneof("MessageType")
    if member is None:
        return ""
    value: str = getattr(message, member).sessionId
    return value


def kind_of(message: ext.ExternalServer) -> str:
    return message.WhichOneof("MessageType") or "unknown"


async def next_of_session(
    car: CarClient, session_id: str, kind: str, timeout_s: float = 5.0
) -> ext.ExternalServer:
    """The next message of ``session_id`` (others are skipped); it must be ``kind``."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        message = await car.receive(max(remaining, 0.0)) if remaining > 0 else None
        if message is None:
            raise UnexpectedMessageError(
                f"{car.car}: expected {kind} of session {session_id}, got nothing within {timeout_s} s"
            )
        if session_of(message) != session_id:
            continue
        if kind_of(message) != kind:
            raise UnexpectedMessageError(f"{car.car}: expected {kind}, got {kind_of(message)}: {message}")
        return message


async def connect_sequence(
    car: CarClient,
    session_id: str,
    devices: Sequence[Device],
    *,
    status_data: Callable[[Device], bytes] = lambda device: b"{}",
    timeout_s: float = 5.0,
    skip_other_sessions: bool = False,
) -> list[ext.Command]:
    """Connect, first statuses 1..n, answer the n first commands OK; returns the commands.

    Strict by default: the next message must be the expected one.
    """

    async def read(kind: str) -> ext.ExternalServer:
        if skip_other_sessions:
            return await next_of_session(car, session_id, kind, timeout_s)
        message = await car.expect(kind, timeout_s)
        assert session_of(message) == session_id, message
        return message

    car.send_connect(session_id, devices)
    response = await read("connectResponse")
    assert response.connectResponse.type == ext.ConnectResponse.OK
    for counter, device in enumerate(devices, start=1):
        car.send_status(session_id, ext.Status.CONNECTING, counter, device, status_data(device))
    for counter in range(1, len(devices) + 1):
        answer = await read("statusResponse")
        assert answer.statusResponse.messageCounter == counter
    commands = [(await read("command")).command for _ in devices]
    for command in commands:
        car.send_command_response(session_id, command.messageCounter)
    return commands


async def connect_with_retry(
    car: CarClient,
    devices: Sequence[Device],
    *,
    prefix: str = "r",
    attempts: int = 6,
    timeout_s: float = 2.0,
    status_data: Callable[[Device], bytes] = lambda device: b"{}",
) -> tuple[str, list[ext.Command]]:
    """A connect sequence with a fresh session id per attempt, for a server that may be busy.

    A server between sessions (clean-up, pause D, a failing phase) may drop a
    Connect; like the gateway, try again with a new session id.
    """
    failures: list[str] = []
    for _ in range(attempts):
        session_id = fresh_session_id(prefix)
        car.clear()
        try:
            commands = await connect_sequence(
                car,
                session_id,
                devices,
                status_data=status_data,
                timeout_s=timeout_s,
                skip_other_sessions=True,
            )
        except UnexpectedMessageError as exc:
            failures.append(str(exc))
            continue
        return session_id, commands
    raise AssertionError(f"{car.car}: no connect sequence completed in {attempts} attempts: {failures}")


async def expect_status_response(
    car: CarClient, session_id: str, counter: int, timeout_s: float = 5.0
) -> ext.StatusResponse:
    """The next message must be the StatusResponse of ``counter`` in ``session_id``."""
    message = await car.expect("statusResponse", timeout_s)
    response = message.statusResponse
    assert (response.sessionId, response.messageCounter) == (session_id, counter), message
    return response


def iter_messages(car: CarClient) -> Iterator[ext.ExternalServer]:
    """Everything received so far and not taken (the queue is emptied)."""
    yield from car.clear()
