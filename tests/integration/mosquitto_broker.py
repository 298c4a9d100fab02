"""A real mosquitto broker for integration tests, on a free loopback port.

Tests may stop and start it mid-session (same port each time). Only the PID
started here is ever signalled.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from external_server.transport import BrokerAddress
from support.waiting import free_port

HOST = "127.0.0.1"
_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """One mosquitto process: ``start()``, ``stop()``, ``host``, ``port``, ``address``."""

    def __init__(
        self, binary: str, workdir: Path, port: int | None = None, listener_options: Sequence[str] = ()
    ) -> None:
        self.binary = binary
        self.host = HOST
        self.port = port or free_port()
        self.workdir = workdir
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.listener_options = tuple(listener_options)
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            *self.listener_options,
            "allow_anonymous true",
            "persistence false",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "set_tcp_nodelay true",  # latency is measured through it: no Nagle delay on small messages
        ]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")  # stay root: no privilege drop, workdir stays usable
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start (or restart on the same port) and wait until the port accepts connections."""
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}: {self.log_tail()}")
            if port_accepts(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"mosquitto did not accept connections on {self.host}:{self.port}: {self.log_tail()}"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate our process (kill if it does not exit) and wait for it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_mosquitto(
    tmp_path: Path, *, name: str = "mosquitto", listener_options: Sequence[str] = ()
) -> Iterator[MosquittoBroker]:
    """A fresh broker under ``tmp_path / name`` for a fixture; fails in CI, skips elsewhere, when missing.

    ``listener_options`` go right after the ``listener`` line (TLS files, ``require_certificate``).
    """
    binary = find_mosquitto()
    if binary is None:
        reason = "mosquitto is not installed (apt-get install mosquitto)"
        if os.environ.get("FLEET_REQUIRE_REAL_PARTS") == "1":
            pytest.fail(f"{reason}; FLEET_REQUIRE_REAL_PARTS=1 requires it")
        pytest.skip(reason)
    workdir = tmp_path / name
    workdir.mkdir()
    broker = MosquittoBroker(binary, workdir, listener_options=listener_options)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
