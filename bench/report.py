"""Final table, target verdicts, JSON file and PNG plot of a benchmark run."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .measure import StepResult

KB = 1024.0

ROW_COLUMNS = (
    "scenario",
    "cars",
    "rate/car",
    "ans/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "srv p99 ms",
    "server CPU %",
    "loop CPU %",
    "RSS MB",
    "threads",
    "resets",
    "sim CPU %",
    "broker CPU %",
    "other CPU %",
)
CONNECT_COLUMNS = (
    "scenario",
    "cars",
    "all connected s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "failures",
    "retries",
    "server CPU %",
    "sim procs",
    "conns",
)


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    passed: bool | None
    figure: str

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "N/A "}[self.passed]
        return f"{mark}  {self.target}: {self.figure}"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _bound(value: float | None) -> str:
    """A histogram bucket's upper bound, as ``<=N``."""
    return "-" if value is None else f"<={value:g}"


def _scenario_name(result: StepResult) -> str:
    return f"{result.plan.scenario} {result.plan.label}"


def _row(result: StepResult) -> tuple[str, ...]:
    plan, lat = result.plan, result.latency
    flags = " ERR" if result.error else ""
    return (
        _scenario_name(result) + flags,
        str(plan.cars),
        "closed" if plan.closed_loop else f"{plan.rate_hz:g}",
        _num(result.answered_per_s, 0),
        _num(lat.p50_ms, 2),
        _num(lat.p99_ms, 2),
        _num(lat.p999_ms, 2),
        _bound(result.server_latency.get("p99_le_ms")),
        _num(result.server_cpu),
        _num(result.threads_cpu.main_percent if result.threads_cpu else None),
        _num(result.rss_kb / KB if result.rss_kb else None),
        str(result.threads or "-"),
        str(result.abnormal_resets + sum(result.drops.values())),
        _num(result.sim_cpu_total),
        _num(result.broker_cpu),
        _num(result.foreign_cpu),
    )


def _connect_row(result: StepResult) -> tuple[str, ...]:
    con = result.connect
    return (
        _scenario_name(result),
        f"{result.connected}/{result.plan.cars}",
        _num(result.connect_all_s, 2),
        _num(con.p50_ms, 0),
        _num(con.p99_ms, 0),
        _num(con.max_ms, 0),
        str(result.connect_failures),
        str(result.retries),
        _num(result.server_connect_cpu),
        str(result.workers),
        str(result.connections),
    )


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def tables(results: Sequence[StepResult]) -> str:
    parts = [render(ROW_COLUMNS, [_row(r) for r in results if r.plan.window_s > 0])]
    fleets = [r for r in results if r.plan.scenario in ("c", "d")]
    if fleets:
        parts.append("connect phase (time from start to normal communication, per car):")
        parts.append(render(CONNECT_COLUMNS, [_connect_row(r) for r in fleets]))
    return "\n\n".join(parts)


NOISY_CPU_PERCENT = 20.0


def noise_line(results: Sequence[StepResult]) -> str | None:
    """A warning when processes outside the benchmark used the CPUs during measuring windows."""
    noisy = [r for r in results if (r.foreign_cpu or 0.0) > NOISY_CPU_PERCENT]
    if not noisy:
        return None
    worst = max(noisy, key=lambda r: r.foreign_cpu or 0.0)
    return (
        f"WARNING: other processes used the CPUs during {len(noisy)} of {len(results)} step(s) "
        f"(up to {_num(worst.foreign_cpu, 0)} % of a core in {_scenario_name(worst)}, load average "
        f"{_num(worst.load_average)}): those figures are disturbed; rerun on a quiet machine."
    )


def loop_lines(results: Sequence[StepResult]) -> str | None:
    """Where the server's time went, per step: its event-loop thread vs its other threads."""
    lines = []
    for result in results:
        split = result.threads_cpu
        if split is None or result.plan.scenario not in ("b", "c"):
            continue
        lines.append(
            f"  {_scenario_name(result)}: loop thread on CPU {split.main_percent:.0f} %, runnable "
            f"{_num(split.main_runqueue_percent, 0)} %, blocked {_num(split.main_waiting_percent, 0)} % "
            f"({_num(split.main_voluntary_switches_per_s, 0)} voluntary switches/s); other threads "
            f"{split.others_percent:.0f} % (busiest {split.busiest_other_percent:.1f} %); "
            f"server-measured mean {_num(result.server_latency.get('mean_ms'), 2)} ms, "
            f"p99 {_bound(result.server_latency.get('p99_le_ms'))} ms"
        )
    if not lines:
        return None
    return (
        "server threads (event loop = main thread; blocked = epoll idle or waiting for the GIL):\n"
        + "\n".join(lines)
    )


def memory_per_car(results: Sequence[StepResult], idle_kb: int | None) -> list[dict[str, Any]]:
    """Per N: (RSS at N - idle RSS) / N, and the increment per car since the previous N."""
    rows: list[dict[str, Any]] = []
    previous: tuple[int, int] | None = None
    for result in results:
        if result.plan.scenario != "c" or not result.rss_kb:
            continue
        cars = result.plan.cars
        row: dict[str, Any] = {"cars": cars, "rss_kb": result.rss_kb}
        if idle_kb is not None:
            row["per_car_kb"] = (result.rss_kb - idle_kb) / cars
        if result.rss_configured_kb and idle_kb is not None:
            row["configured_per_car_kb"] = (result.rss_configured_kb - idle_kb) / cars
            row["traffic_per_car_kb"] = (result.rss_kb - result.rss_configured_kb) / cars
        if previous is not None and cars > previous[0]:
            row["increment_per_car_kb"] = (result.rss_kb - previous[1]) / (cars - previous[0])
        previous = (cars, result.rss_kb)
        rows.append(row)
    return rows


def memory_lines(rows: Sequence[dict[str, Any]], idle_kb: int | None) -> str:
    idle = _num(idle_kb / KB if idle_kb else None)
    lines = [f"memory: idle server (1 car, module 1000 loaded) RSS {idle} MB"]
    for row in rows:
        lines.append(
            f"  N={row['cars']}: RSS {row['rss_kb'] / KB:.1f} MB, per car {_num(row.get('per_car_kb'))} KB"
            f" (configured {_num(row.get('configured_per_car_kb'))} + traffic "
            f"{_num(row.get('traffic_per_car_kb'))}), increment since previous N "
            f"{_num(row.get('increment_per_car_kb'))} KB/car"
        )
    return "\n".join(lines)


def verdicts(results: Sequence[StepResult], memory: Sequence[dict[str, Any]]) -> list[Verdict]:
    out: list[Verdict] = []
    fleet = [r for r in results if r.plan.scenario == "c" and r.plan.cars == 2000]
    target = "2,000 cars x 1 status/s: p99 < 50 ms and server CPU < 100 %"
    if fleet:
        r = fleet[0]
        p99, cpu = r.latency.p99_ms, r.server_cpu
        ok = (
            p99 is not None
            and p99 < 50.0
            and cpu is not None
            and cpu < 100.0
            and r.connected == 2000
            and not r.abnormal_resets
        )
        figure = f"p99 {_num(p99, 2)} ms, server CPU {_num(cpu)} %, connected {r.connected}/2000"
        out.append(Verdict(target, ok, figure + f", resets {r.abnormal_resets}"))
    else:
        out.append(Verdict(target, None, "not measured (scenario c without N=2000)"))
    closed = [r for r in results if r.plan.scenario == "b" and r.plan.closed_loop]
    target = "one car >= 3,000 statuses/s closed loop, no reset"
    if closed:
        r = closed[0]
        resets = r.abnormal_resets + sum(r.drops.values())
        ok = r.answered_per_s >= 3000.0 and resets == 0 and not r.error
        out.append(Verdict(target, ok, f"{r.answered_per_s:.0f} statuses/s, resets {resets}"))
    else:
        out.append(Verdict(target, None, "not measured (scenario b)"))
    target = "memory per car <= 100 KB beyond the module's own"
    sized = [row for row in memory if "per_car_kb" in row]
    if sized:
        row = max(sized, key=lambda item: item["cars"])
        ok = row["per_car_kb"] <= 100.0
        out.append(Verdict(target, ok, f"{row['per_car_kb']:.1f} KB/car at N={row['cars']}"))
    else:
        out.append(Verdict(target, None, "not measured (scenario c)"))
    return out


def ramp_summary(
    results: Sequence[StepResult],
    lag_ms: float,
    holds: Callable[[StepResult, float], bool],
    keeps_up: Callable[[StepResult], bool],
) -> str | None:
    ramp = [r for r in results if r.plan.scenario == "b" and not r.plan.closed_loop]
    if not ramp:
        return None
    held = [r.plan.rate_hz for r in ramp if holds(r, lag_ms)]
    kept = [r.plan.rate_hz for r in ramp if keeps_up(r)]
    tried = ", ".join(f"{r.plan.rate_hz:g}" for r in ramp)
    text = (
        f"open-loop ramp ({tried} statuses/s): highest rate held without lag (no reset, >= 97 % "
        f"answered, p99 <= {lag_ms:g} ms): {_best(held)}; highest rate kept up (no reset, >= 97 % "
        f"answered, any latency): {_best(kept)}"
    )
    short = [r for r in ramp if r.sent_per_s < 0.97 * r.plan.rate_hz]
    if short:
        text += "; the simulator sent less than asked at " + ", ".join(
            f"{r.plan.rate_hz:g}/s ({r.sent_per_s:.0f}/s sent)" for r in short
        )
    return text


def _best(rates: Sequence[float]) -> str:
    return f"{max(rates):g}/s" if rates else "none"


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
