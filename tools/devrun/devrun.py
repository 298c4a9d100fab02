"""``make run``: a broker, the server with the example config, and a simulated car, live.

Starts an embedded broker on a free loopback port unless ``--broker host:port``
is given, writes a copy of the config pointing at it, runs the server and the
fleet simulator (live progress) as child processes, and stops all three on
Ctrl-C (or SIGTERM). Once stopping has begun, further Ctrl-Cs are ignored so the
children are always stopped in order. Only processes started here are ended, by PID.

A development tool, not part of the server package: ``.venv/bin/python tools/devrun/devrun.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _spawn(name: str, command: list[str]) -> subprocess.Popen[bytes]:
    """A child in its own session: Ctrl-C reaches only us, and we stop children in order."""
    child = subprocess.Popen(command, start_new_session=True)
    print(f"devrun: started {name} (pid {child.pid})", flush=True)
    return child


class _Interrupted(Exception):
    """SIGTERM, handled like Ctrl-C."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Interrupted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("config/config.json"))
    parser.add_argument("--broker", help="host:port of an existing broker (default: embedded amqtt)")
    parser.add_argument("--cars", help="cars to simulate (default: the first car of the config)")
    parser.add_argument("--rate", type=float, default=2.0, help="statuses per second per car")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _on_sigterm)
    config = json.loads(args.config.read_text())
    children: list[subprocess.Popen[bytes]] = []
    python = sys.executable
    if args.broker:
        host, _, port_text = args.broker.rpartition(":")
        port = int(port_text)
    else:
        host, port = "127.0.0.1", free_port()
        broker = str(Path(__file__).with_name("devbroker.py"))
        children.append(_spawn("broker", [python, broker, "--host", host, "--port", str(port)]))
        if not wait_for_port(host, port, 15):
            print("embedded broker did not start", file=sys.stderr)
            return _stop(children, 1)
    config.setdefault("external_communication", {}).update({"server_address": host, "server_port": port})
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="external-server-", delete=False) as handle:
        json.dump(config, handle, indent=2)
        run_config = handle.name
    cars = args.cars or next(iter(config["cars"]))
    print(
        f"broker {host}:{port}; server config {run_config}; simulating car(s) {cars}; Ctrl-C to stop",
        flush=True,
    )
    http_port = free_port()
    print(
        f"server status: http://127.0.0.1:{http_port}/status  metrics: http://127.0.0.1:{http_port}/metrics"
    )
    children.append(
        _spawn(
            "server",
            [
                python,
                "-m",
                "external_server",
                "-c",
                run_config,
                "--http-host",
                "127.0.0.1",
                "--http-port",
                str(http_port),
            ],
        )
    )
    if not wait_for_port("127.0.0.1", http_port, 30):
        print("the server did not start", file=sys.stderr)
        return _stop(children, 1)
    children.append(
        _spawn(
            "simulator",
            [
                python,
                "-m",
                "external_server.simulator",
                "--broker",
                f"{host}:{port}",
                "--company",
                config["company_name"],
                "--cars",
                cars,
                "--rate",
                str(args.rate),
                "--live",
            ],
        )
    )
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        failed = [child.args for child in children if child.poll() not in (None, 0)]
        if failed:
            print(f"a component exited: {failed}", file=sys.stderr)
            return _stop(children, 1)
    except (KeyboardInterrupt, _Interrupted):
        pass
    finally:
        os.unlink(run_config)
    return _stop(children, 0)


def _stop(children: list[subprocess.Popen[bytes]], code: int) -> int:
    # A second Ctrl-C (or SIGTERM) must not cut the clean-up short and leave children running.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("devrun: stopping", flush=True)
    for child in reversed(children):  # simulator first, broker last
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
