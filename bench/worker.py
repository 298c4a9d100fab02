"""One simulator process of a benchmark: a :class:`Fleet` steered by line commands on stdin.

Protocol (one line each): the orchestrator writes the spec (JSON), the worker
answers ``ready`` once its MQTT connections are up; then ``go <wall time>`` starts
every car (``connected <n> <wall time>`` once all are in normal communication, or
``connected <n> timeout``), ``mark`` and ``end`` bracket the measuring window
(answered by ``marked`` / ``ended``), and ``stop`` (or end of stdin) closes the fleet,
writes the result JSON to the spec's ``result_path`` and answers ``done``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from external_server.simulator import Fleet, FleetConfig, GatewayTimings
from external_server.transport import BrokerAddress

from .procstat import self_cpu_seconds


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one simulator process plays."""

    broker_host: str
    broker_port: int
    company: str
    first_car: int
    cars: int
    result_path: str
    cars_per_connection: int = 1
    rate_hz: float = 1.0
    closed_loop: bool = False
    stagger_s: float = 0.0
    connect_response_timeout_s: float = 5.0
    reconnect_delay_s: float = 10.0
    status_response_timeout_s: float = 30.0
    connect_wait_s: float = 60.0
    max_runtime_s: float = 600.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class _Mark:
    wall: float
    mono: float
    cpu_s: float
    samples: tuple[int, ...]
    sent: int
    answered: int
    timeouts: int
    drops: int


def _fleet(spec: WorkerSpec) -> Fleet:
    config = FleetConfig(
        broker=BrokerAddress(spec.broker_host, spec.broker_port),
        company=spec.company,
        cars=tuple(f"car_{i}" for i in range(spec.first_car, spec.first_car + spec.cars)),
        rate_hz=spec.rate_hz,
        closed_loop=spec.closed_loop,
        duration_s=None,
        cars_per_connection=spec.cars_per_connection,
        stagger_s=spec.stagger_s,
        timings=GatewayTimings(
            connect_response_timeout_s=spec.connect_response_timeout_s,
            status_response_timeout_s=spec.status_response_timeout_s,
            reconnect_delay_s=spec.reconnect_delay_s,
            drain_timeout_s=2.0,
        ),
    )
    return Fleet(config)


def _mark(fleet: Fleet) -> _Mark:
    stats = [gateway.stats for gateway in fleet.gateways]
    return _Mark(
        wall=time.time(),
        mono=time.monotonic(),
        cpu_s=self_cpu_seconds(),
        samples=tuple(len(s.latencies_s) for s in stats),
        sent=sum(s.statuses_sent for s in stats),
        answered=sum(s.statuses_answered for s in stats),
        timeouts=sum(s.status_timeouts for s in stats),
        drops=sum(sum(s.drops.values()) for s in stats),
    )


def _window(fleet: Fleet, start: _Mark | None, end: _Mark | None) -> dict[str, Any] | None:
    if start is None or end is None:
        return None
    latencies: list[float] = []
    for gateway, first, last in zip(fleet.gateways, start.samples, end.samples, strict=True):
        latencies.extend(gateway.stats.latencies_s[first:last])
    return {
        "start_wall": start.wall,
        "elapsed_s": end.mono - start.mono,
        "cpu_s": end.cpu_s - start.cpu_s,
        "sent": end.sent - start.sent,
        "answered": end.answered - start.answered,
        "timeouts": end.timeouts - start.timeouts,
        "drops": end.drops - start.drops,
        "latencies_s": latencies,
    }


class _Commands:
    """Lines from stdin, read by a daemon thread (never blocks interpreter exit)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._loop = loop
        threading.Thread(target=self._read, name="stdin", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, line.strip())
        self._loop.call_soon_threadsafe(self.queue.put_nowait, "stop")

    async def next(self) -> str:
        return await self.queue.get()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _watch_connect(fleet: Fleet, timeout_s: float, times: list[float | None]) -> None:
    async def one(index: int) -> None:
        if await fleet.gateways[index].wait_connected(timeout_s):
            times[index] = time.time()

    await asyncio.gather(*(one(i) for i in range(len(fleet.gateways))))


async def _serve(spec: WorkerSpec, commands: _Commands) -> dict[str, Any]:
    fleet = _fleet(spec)
    for connection in fleet.connections:
        await connection.start()
    ready = await asyncio.gather(*(c.wait_connected(30.0) for c in fleet.connections))
    _say("ready" if all(ready) else "broker-unreachable")
    connected_at: list[float | None] = [None] * len(fleet.gateways)
    go_wall: float | None = None
    start = end = None
    watcher: asyncio.Task[None] | None = None
    try:
        while True:
            command = await commands.next()
            if command.startswith("go"):
                parts = command.split()
                go_wall = float(parts[1]) if len(parts) > 1 else time.time()
                await fleet.start()
                watcher = asyncio.create_task(_watch_connect(fleet, spec.connect_wait_s, connected_at))
                watcher.add_done_callback(lambda _task: _report_connected(connected_at))
            elif command == "mark":
                start = _mark(fleet)
                _say("marked")
            elif command == "end":
                end = _mark(fleet)
                _say("ended")
            elif command == "stop":
                break
    finally:
        if watcher is not None:
            watcher.cancel()
        await fleet.close()
    summary = fleet.summary().to_dict()
    summary.pop("per_car", None)
    return {
        "spec": asdict(spec),
        "go_wall": go_wall,
        "connected_at": connected_at,
        "summary": summary,
        "window": _window(fleet, start, end),
    }


def _report_connected(connected_at: list[float | None]) -> None:
    done = [t for t in connected_at if t is not None]
    last = f"{max(done):.6f}" if len(done) == len(connected_at) else "timeout"
    _say(f"connected {len(done)} {last}")


async def _main(spec: WorkerSpec) -> None:
    commands = _Commands(asyncio.get_running_loop())
    try:
        async with asyncio.timeout(spec.max_runtime_s):
            result = await _serve(spec, commands)
    except TimeoutError:
        result = {"spec": asdict(spec), "error": f"worker exceeded {spec.max_runtime_s:g} s"}
    _write(Path(spec.result_path), result)
    _say("done")


def _write(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result))


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    spec = WorkerSpec.from_json(sys.stdin.readline())
    asyncio.run(_main(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
