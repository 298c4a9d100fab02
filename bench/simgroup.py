"""Several simulator worker processes (``bench.worker``) steered together from the orchestrator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .procstat import pin
from .server import ROOT
from .worker import WorkerSpec


class WorkerError(RuntimeError):
    """A worker did not answer as expected."""


@dataclass
class _Worker:
    spec: WorkerSpec
    process: asyncio.subprocess.Process
    log_path: Path
    last_line: str = ""

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((line + "\n").encode())
        await self.process.stdin.drain()

    async def expect(self, prefix: str, timeout_s: float) -> str:
        """The next line (must start with ``prefix``)."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                raw = await self.process.stdout.readline()
        except TimeoutError:
            raise WorkerError(f"worker {self.process.pid}: no {prefix!r} within {timeout_s:g} s") from None
        line = raw.decode().strip()
        self.last_line = line
        if not line.startswith(prefix):
            raise WorkerError(f"worker {self.process.pid}: expected {prefix!r}, got {line!r}")
        return line


@dataclass
class WorkerGroup:
    """``cars`` simulated cars split into processes of at most ``cars_per_worker`` cars."""

    workdir: Path
    name: str
    base: WorkerSpec
    cars_per_worker: int = 500
    cpus: frozenset[int] | None = None
    workers: list[_Worker] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self.workers]

    def _specs(self) -> list[WorkerSpec]:
        count = max(1, math.ceil(self.base.cars / self.cars_per_worker))
        per = math.ceil(self.base.cars / count)
        specs = []
        for index in range(count):
            first = index * per
            cars = min(per, self.base.cars - first)
            result = self.workdir / f"sim-{self.name}-{index}.json"
            specs.append(
                replace(self.base, first_car=self.base.first_car + first, cars=cars, result_path=str(result))
            )
        return specs

    async def start(self, timeout_s: float = 60.0) -> None:
        """Spawn every worker and wait until all have their MQTT connections up."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        for index, spec in enumerate(self._specs()):
            log_path = self.workdir / f"sim-{self.name}-{index}.log"
            with log_path.open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.worker",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    cwd=ROOT,
                    env=env,
                )
            pin(process.pid, self.cpus)
            worker = _Worker(spec, process, log_path)
            self.workers.append(worker)
            await worker.send(spec.to_json())
        await asyncio.gather(*(worker.expect("ready", timeout_s) for worker in self.workers))

    async def go(self) -> float:
        """Start every car now; the wall time sent to all workers."""
        now = time.time()
        await asyncio.gather(*(worker.send(f"go {now:.6f}") for worker in self.workers))
        return now

    async def wait_connected(self, timeout_s: float) -> tuple[int, float | None]:
        """(cars connected, wall time the last one connected — None if some never did)."""
        lines = await asyncio.gather(*(worker.expect("connected", timeout_s) for worker in self.workers))
        count, last = 0, 0.0
        complete = True
        for line in lines:
            _, n, when = line.split()
            count += int(n)
            if when == "timeout":
                complete = False
            else:
                last = max(last, float(when))
        return count, (last if complete else None)

    async def command(self, line: str, answer: str, timeout_s: float = 30.0) -> None:
        await asyncio.gather(*(worker.send(line) for worker in self.workers))
        await asyncio.gather(*(worker.expect(answer, timeout_s) for worker in self.workers))

    async def stop(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Stop every worker, collect the result files, kill (by PID) what did not end."""
        for worker in self.workers:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await worker.send("stop")
        for worker in self.workers:
            with contextlib.suppress(WorkerError, ConnectionError):
                await worker.expect("done", timeout_s)
        await self.kill()
        self.results = [_take_result(Path(worker.spec.result_path)) for worker in self.workers]
        return self.results

    async def kill(self) -> None:
        """Close stdin, wait briefly, then kill every worker still alive (our PIDs only)."""
        for worker in self.workers:
            if worker.process.stdin is not None and not worker.process.stdin.is_closing():
                worker.process.stdin.close()
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.process.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()


def _take_result(path: Path) -> dict[str, Any]:
    """Read and delete one worker's result file."""
    if not path.is_file():
        return {"error": f"no result file {path}"}
    document: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return document
