"""A private mosquitto on a free loopback port, tuned so the broker is not the bottleneck."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .procstat import pin

HOST = "127.0.0.1"
_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """One mosquitto process on ``127.0.0.1:<free port>``; only its own PID is ever signalled."""

    def __init__(self, workdir: Path, binary: str | None = None, cpus: frozenset[int] | None = None) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise RuntimeError("mosquitto not found (apt-get install mosquitto)")
        self.binary = found
        self.host = HOST
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.cpus = cpus

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            "max_connections -1",
            "max_inflight_messages 0",  # 0 = unlimited QoS 1 messages in flight per client
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "set_tcp_nodelay true",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")  # no privilege drop: the workdir stays usable
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start and wait until the port accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        pin(self.process.pid, self.cpus)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {self.log_tail()}")
            if port_accepts(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port}: {self.log_tail()}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate our process (kill if it does not exit) and reap it."""
        process, self.process = self.process, None
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
