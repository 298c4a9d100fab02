"""``python -m bench.run``: run the scenarios, print the table, write JSON and a PNG plot.

Exit codes: 0 = every step ran (whatever the targets say), 1 = a step failed to run, a server
did not start or died, the run was interrupted or cut short; 2 = bad usage or modules not built.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from . import plot, report
from .broker import Broker
from .scenarios import FULL, QUICK, SCENARIOS, Run, holds, keeps_up, pinned, with_beyond
from .server import EXAMPLE_SO, ROOT

log = logging.getLogger("bench")
DEFAULT_OUT = ROOT / "bench" / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.run", description="Benchmarks of the External Server against a private mosquitto."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke version, < 2 minutes (CI)")
    size.add_argument("--full", action="store_true", help="the whole matrix (default)")
    parser.add_argument("--scenarios", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for JSON, PNG and logs")
    parser.add_argument(
        "--beyond", action="store_true", help="(c) go on with 3000, 4000, 5000 cars while the target holds"
    )
    parser.add_argument("--fleet-sizes", help="(c) comma-separated car counts instead of the matrix's")
    parser.add_argument("--storm-sizes", help="(d) comma-separated car counts instead of the matrix's")
    parser.add_argument("--lag-ms", type=float, help="(b) p99 above this means responses lag (default 100)")
    parser.add_argument(
        "--module-wait-ms",
        type=int,
        help="timeout_ms of module 1000 in the server config: how often each car's waiting thread "
        "wakes up (default 1000, as config/config.json)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the server to the first CPU and the broker and simulators to the others",
    )
    parser.add_argument(
        "--max-minutes", type=float, help="stop the whole run after this long (default 3 quick, 45 full)"
    )
    return parser


def _counts(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    return tuple(int(part) for part in text.split(",") if part.strip())


def _scenarios(text: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown or not chosen:
        parser.error(f"--scenarios: choose from a,b,c,d (got {text!r})")
    return chosen


async def _run_all(run: Run, chosen: Sequence[str], budget_s: float) -> bool:
    """Run the chosen scenarios in a,b,c,d order; False when the time budget ran out."""
    try:
        async with asyncio.timeout(budget_s):
            for name in sorted(chosen):
                log.info("scenario %s", name)
                await SCENARIOS[name](run)
    except TimeoutError:
        run.notes.append(f"time budget of {budget_s / 60:g} min exhausted: the run was cut short")
        return False
    return True


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: the same clean stop of every started process as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = _scenarios(args.scenarios, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not EXAMPLE_SO.is_file():
        print(f"bench: {EXAMPLE_SO} is missing; run `make modules` first", file=sys.stderr)
        return 2
    matrix = QUICK if args.quick else FULL
    if args.beyond:
        matrix = with_beyond(matrix)
    if sizes := _counts(args.fleet_sizes):
        matrix = replace(matrix, fleet_sizes=sizes)
    if sizes := _counts(args.storm_sizes):
        matrix = replace(matrix, storm_sizes=sizes)
    if args.module_wait_ms:
        matrix = replace(matrix, module_wait_ms=args.module_wait_ms)
    if args.lag_ms:
        matrix = replace(matrix, lag_ms=args.lag_ms)
    if args.pin:
        matrix = pinned(matrix, frozenset(os.sched_getaffinity(0)))
    budget_s = 60.0 * (args.max_minutes or (3.0 if args.quick else 45.0))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out: Path = args.out.resolve()
    workdir = out / f"logs-{stamp}"
    broker = Broker(workdir, cpus=matrix.load_cpus)
    broker.start()
    run = Run(workdir, broker, matrix)
    started = time.monotonic()
    try:
        asyncio.run(_run_all(run, chosen, budget_s))
    except KeyboardInterrupt:
        run.notes.append("interrupted")
    finally:
        run.stop_leftovers()
        broker.stop()
    elapsed = time.monotonic() - started
    return _report(run, out, stamp, "quick" if args.quick else "full", chosen, elapsed)


def _report(run: Run, out: Path, stamp: str, mode: str, chosen: Sequence[str], elapsed: float) -> int:
    memory = report.memory_per_car(run.results, run.idle_rss_kb)
    verdicts = report.verdicts(run.results, memory)
    lines = [f"bench ({mode}, scenarios {','.join(chosen)}): {elapsed:.0f} s", "", report.tables(run.results)]
    ramp = report.ramp_summary(run.results, run.matrix.lag_ms, holds, keeps_up)
    if ramp:
        lines += ["", ramp]
    if noise := report.noise_line([r for r in run.results if r.plan.window_s > 0]):
        lines += ["", noise]
    if loops := report.loop_lines(run.results):
        lines += ["", loops]
    if memory or run.idle_rss_kb:
        lines += ["", report.memory_lines(memory, run.idle_rss_kb)]
    lines += ["", "targets of issue 5:", *(v.line() for v in verdicts)]
    if run.notes:
        lines += ["", "notes:", *(f"  {note}" for note in run.notes)]
    text = "\n".join(lines)
    print(text, flush=True)
    document = {
        "mode": mode,
        "server_cpus": sorted(run.matrix.server_cpus or []),
        "load_cpus": sorted(run.matrix.load_cpus or []),
        "scenarios": list(chosen),
        "started": stamp,
        "elapsed_s": elapsed,
        "machine": report.machine(),
        "logs": str(run.workdir),
        "idle_rss_kb": run.idle_rss_kb,
        "memory_per_car": memory,
        "targets": [{"target": v.target, "passed": v.passed, "figure": v.figure} for v in verdicts],
        "notes": run.notes,
        "steps": [result.to_dict() for result in run.results],
    }
    json_path = out / f"bench-{stamp}.json"
    report.write_json(json_path, document)
    (out / f"bench-{stamp}.txt").write_text(text + "\n")
    png_path = out / f"bench-{stamp}.png"
    plotted = plot.plot(png_path, run.results)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""), flush=True)
    broken = [r for r in run.results if r.error or not r.server_alive] or run.notes
    return 1 if broken else 0
