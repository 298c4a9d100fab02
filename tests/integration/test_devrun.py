"""The README's first command (`make run` → tools/devrun/devrun.py), for real: embedded broker,
server and simulated car reach a live session, and Ctrl-C — pressed twice — stops all three."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEVRUN = ROOT / "tools" / "devrun" / "devrun.py"
EXAMPLE_SO = ROOT / "build" / "modules" / "libexample.so"
STARTED = re.compile(r"devrun: started (\w+) \(pid (\d+)\)")
ANSWERED = re.compile(r"statuses (\d+)/\d+ answered")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0) until reaped; devrun reaps its children, so check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _lines(process: subprocess.Popen[str]) -> Iterator[str]:
    """The output's lines; leaving a loop over it early does not close the pipe."""
    assert process.stdout is not None
    return iter(process.stdout.readline, "")


@pytest.mark.timeout(180)
def test_make_run_serves_a_car_and_two_ctrl_c_stop_every_child() -> None:
    pytest.importorskip("amqtt", reason="the embedded broker needs the 'broker' extra")
    assert EXAMPLE_SO.exists(), "build the modules first (make modules)"
    process = subprocess.Popen(
        [sys.executable, str(DEVRUN), "--config", "config/config.json", "--rate", "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # our Ctrl-C goes to devrun only, as a terminal's would
    )
    children: dict[str, int] = {}
    seen: list[str] = []
    try:
        for line in _lines(process):
            seen.append(line.rstrip())
            if started := STARTED.search(line):
                children[started[1]] = int(started[2])
            answered = ANSWERED.search(line)
            if answered and int(answered[1]) >= 3:
                break
        else:
            pytest.fail("devrun ended before the car was served:\n" + "\n".join(seen[-40:]))
        assert set(children) == {"broker", "server", "simulator"}
        process.send_signal(signal.SIGINT)
        second_sent = False
        for line in _lines(process):
            seen.append(line.rstrip())
            if not second_sent and "devrun: stopping" in line:
                # An impatient user presses Ctrl-C again while the children are being stopped.
                process.send_signal(signal.SIGINT)
                second_sent = True
        assert second_sent, "\n".join(seen[-40:])
        assert process.wait(60) == 0, "\n".join(seen[-40:])
        left = [name for name, pid in children.items() if _alive(pid)]
        assert left == [], f"still running after devrun exited: {left}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in children.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
