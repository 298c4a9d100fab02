"""CPU, memory and thread figures of a process from ``/proc`` (Linux only)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

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
    return cpu_seconds_of(f"/proc/{pid}/stat")


def cpu_seconds_of(path: str) -> float:
    """utime + stime from a ``stat`` file of proc(5), in seconds."""
    with open(path) as handle:
        text = handle.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # fields 14 and 15 of proc(5)


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime per thread id of ``pid`` (threads that end in between are skipped)."""
    result: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return result
    for tid in tids:
        try:
            result[int(tid)] = cpu_seconds_of(f"/proc/{pid}/task/{tid}/stat")
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
class ThreadSplit:
    """CPU of a window split between the main thread (the event loop) and all other threads."""

    main_percent: float
    others_percent: float
    busiest_other_percent: float


def thread_split(
    pid: int, first: dict[int, float], last: dict[int, float], seconds: float
) -> ThreadSplit | None:
    if seconds <= 0 or pid not in first or pid not in last:
        return None
    others = [last[tid] - first.get(tid, 0.0) for tid in last if tid != pid]
    return ThreadSplit(
        main_percent=100.0 * (last[pid] - first[pid]) / seconds,
        others_percent=100.0 * sum(others) / seconds,
        busiest_other_percent=100.0 * max(others, default=0.0) / seconds,
    )
