"""One line per second of what the fleet is doing (what ``make run`` shows the user).

Latency percentiles in a line cover only the statuses answered since the
previous line, so a line shows the present, not the average of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TextIO

from .fleet import Fleet
from .stats import LatencySummary


class LiveProgress:
    """Prints :meth:`line` every ``interval_s`` until stopped."""

    def __init__(self, fleet: Fleet, *, stream: TextIO | None = None, interval_s: float = 1.0) -> None:
        self._fleet = fleet
        self._stream = stream or sys.stdout
        self._interval_s = interval_s
        self._seen = [0] * len(fleet.gateways)
        self._last_answered = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleet-simulator:live")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            print(self.line(), file=self._stream, flush=True)

    def line(self) -> str:
        """Snapshot since the previous call: connection state, counts, recent latency."""
        gateways = self._fleet.gateways
        window: list[float] = []
        for index, gateway in enumerate(gateways):
            samples = gateway.stats.latencies_s
            window.extend(samples[self._seen[index] :])
            self._seen[index] = len(samples)
        recent = LatencySummary.from_samples(window)
        sent = sum(gateway.stats.statuses_sent for gateway in gateways)
        answered = sum(gateway.stats.statuses_answered for gateway in gateways)
        rate = (answered - self._last_answered) / self._interval_s
        self._last_answered = answered
        commands = sum(gateway.stats.commands_received for gateway in gateways)
        reconnects = sum(gateway.stats.reconnects for gateway in gateways)
        timeouts = sum(gateway.stats.status_timeouts for gateway in gateways)
        if len(gateways) == 1:
            gateway = gateways[0]
            who = f"{gateway.car} {gateway.state.value}"
            if gateway.session_id:
                who += f" session {gateway.session_id}"
        else:
            who = f"{self._fleet.connected_count()}/{len(gateways)} cars connected"
        latency = (
            f"p50 {recent.p50_ms:.2f} ms p99 {recent.p99_ms:.2f} ms"
            if recent.p50_ms is not None and recent.p99_ms is not None
            else "p50 - p99 -"
        )
        return (
            f"[{self._fleet.elapsed_s:7.1f}s] {who} | statuses {answered}/{sent} answered ({rate:.1f}/s)"
            f" | commands {commands} | latency {latency} | reconnects {reconnects} timeouts {timeouts}"
        )
