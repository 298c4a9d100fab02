"""PNG plot (matplotlib, Agg canvas, no GUI) of latency and CPU versus number of cars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

from .measure import StepResult


def plot(path: Path, results: Sequence[StepResult]) -> bool:
    """Latency p50/p99/p99.9 and server CPU versus number of cars (scenario c); False without data."""
    rows = [r for r in results if r.plan.scenario == "c" and r.latency.count]
    if not rows:
        return False
    cars = [r.plan.cars for r in rows]
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for label, values, style in (
        ("p50", [r.latency.p50_ms for r in rows], "o-"),
        ("p99", [r.latency.p99_ms for r in rows], "s-"),
        ("p99.9", [r.latency.p999_ms for r in rows], "^--"),
    ):
        left.plot(cars, values, style, label=label)
    left.axhline(50.0, color="red", linewidth=0.8, linestyle=":", label="target p99 50 ms")
    left.set_xscale("log")
    left.set_yscale("log")
    left.yaxis.set_major_formatter(ScalarFormatter())
    left.yaxis.set_minor_formatter(NullFormatter())
    left.set_xlabel("cars (1 status/s each)")
    left.set_ylabel("status → StatusResponse latency (ms)")
    left.set_title("Latency vs number of cars")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    right.plot(cars, [r.server_cpu or 0.0 for r in rows], "o-", label="server CPU %")
    right.plot(cars, [r.sim_cpu_total or 0.0 for r in rows], "s--", label="simulators CPU %")
    right.plot(cars, [r.broker_cpu or 0.0 for r in rows], "^:", label="broker CPU %")
    right.axhline(100.0, color="red", linewidth=0.8, linestyle=":", label="one core")
    right.set_xscale("log")
    right.set_xlabel("cars (1 status/s each)")
    right.set_ylabel("% of one core")
    right.set_title("CPU vs number of cars")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    for axis in (left, right):
        axis.xaxis.set_major_locator(FixedLocator(cars))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.xaxis.set_major_formatter(ScalarFormatter())
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True
