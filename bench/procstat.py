"""CPU, memory and thread figures of a process from ``/proc`` (Linux only)."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass, replace

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One reading of a process: CPU seconds so far (user+system), memory and threads."""

    at: float
    cpu_s: float
    rss_kb: int
    hwm_kb: int
    threads: int


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # fields 14 and 15 of proc(5)


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds per thread id of ``pid`` from ``schedstat`` (exact run time; the tick-sampled
    per-thread ``stat`` figures under-count many short-running threads)."""
    result: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return result
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                result[int(tid)] = int(handle.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return result


def status_fields(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict (values stripped)."""
    result: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            result[key] = value.strip()
    return result


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def sample(pid: int) -> ProcSample | None:
    """A reading of ``pid``, or None when it is gone."""
    try:
        cpu = cpu_seconds(pid)
        fields = status_fields(pid)
    except (OSError, ValueError, IndexError):
        return None
    return ProcSample(
        at=time.monotonic(),
        cpu_s=cpu,
        rss_kb=_kb(fields.get("VmRSS")),
        hwm_kb=_kb(fields.get("VmHWM")),
        threads=int(fields.get("Threads", "0")),
    )


def pin(pid: int, cpus: frozenset[int] | None) -> None:
    """Restrict ``pid`` (and the threads it starts afterwards) to ``cpus``; no-op for None."""
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


def cpu_percent(first: ProcSample | None, last: ProcSample | None) -> float | None:
    """CPU between two readings as a percentage of one core."""
    if first is None or last is None or last.at <= first.at:
        return None
    return 100.0 * (last.cpu_s - first.cpu_s) / (last.at - first.at)


def self_cpu_seconds() -> float:
    """CPU seconds of the calling process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class MainThread:
    """Scheduler counters of a process's main thread (the event loop of an asyncio server)."""

    on_cpu_ns: int
    runqueue_ns: int
    voluntary_switches: int
    involuntary_switches: int


def main_thread(pid: int) -> MainThread | None:
    """``schedstat`` and context switches of the thread ``pid`` of ``pid``."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as handle:
            on_cpu, runqueue, _ = (int(field) for field in handle.read().split())
        fields = status_fields(pid)
        return MainThread(
            on_cpu,
            runqueue,
            int(fields.get("voluntary_ctxt_switches", "0")),
            int(fields.get("nonvoluntary_ctxt_switches", "0")),
        )
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ThreadSplit:
    """A window's CPU split between the main thread (the event loop) and all other threads.

    ``main_waiting_percent`` is the share of wall time the main thread was neither running
    nor runnable: blocked (in ``epoll_wait`` when idle, or waiting for the GIL).
    """

    main_percent: float
    others_percent: float
    busiest_other_percent: float
    main_runqueue_percent: float | None = None
    main_waiting_percent: float | None = None
    main_voluntary_switches_per_s: float | None = None
    main_involuntary_switches_per_s: float | None = None


def thread_split(
    pid: int,
    first: dict[int, float],
    last: dict[int, float],
    seconds: float,
    main: tuple[MainThread | None, MainThread | None] = (None, None),
) -> ThreadSplit | None:
    if seconds <= 0 or pid not in first or pid not in last:
        return None
    others = [last[tid] - first.get(tid, 0.0) for tid in last if tid != pid]
    split = ThreadSplit(
        main_percent=100.0 * (last[pid] - first[pid]) / seconds,
        others_percent=100.0 * sum(others) / seconds,
        busiest_other_percent=100.0 * max(others, default=0.0) / seconds,
    )
    before, after = main
    if before is None or after is None:
        return split
    wall_ns = seconds * 1e9
    on_cpu = 100.0 * (after.on_cpu_ns - before.on_cpu_ns) / wall_ns
    runqueue = 100.0 * (after.runqueue_ns - before.runqueue_ns) / wall_ns
    return replace(
        split,
        main_runqueue_percent=runqueue,
        main_waiting_percent=max(0.0, 100.0 - on_cpu - runqueue),
        main_voluntary_switches_per_s=(after.voluntary_switches - before.voluntary_switches) / seconds,
        main_involuntary_switches_per_s=(after.involuntary_switches - before.involuntary_switches) / seconds,
    )


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy so far (``/proc/stat``: total - idle - iowait)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


def load_average() -> float:
    """The 1-minute load average."""
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])
