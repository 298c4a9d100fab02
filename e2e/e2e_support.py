"""Helpers of the e2e scenario (e2e/test_e2e.py): kubectl, bounded polling, a recorder that
follows every pod's log while it lives, and the log analyses (per-car session gaps from the
simulator's log, per-car serving intervals from the server pods' logs, from the broker's log).

All times are seconds since the epoch. Log lines are read with ``kubectl logs --timestamps``, so
every pod's lines carry the container runtime's timestamp of the same node clock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# --- kubectl ------------------------------------------------------------------------------------------


def kubectl(
    *args: str, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["kubectl", *args], input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 180, interval: float = 1.0) -> T:
    """Poll ``fn`` until it returns something truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def parse_time(text: str) -> float:
    """RFC 3339 (kubectl --timestamps: nanoseconds, 'Z'; API objects: seconds) to epoch seconds."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    main, _, rest = text.partition(".")
    if rest:
        digits = re.match(r"\d+", rest)
        assert digits is not None, text
        fraction = digits.group(0)
        tz = rest[len(fraction) :]
        return dt.datetime.fromisoformat(main + tz).timestamp() + float("0." + fraction)
    return dt.datetime.fromisoformat(main).timestamp()


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


# --- the recorder -----------------------------------------------------------------------------------


@dataclass
class PodRecord:
    name: str
    uid: str
    labels: dict[str, str]
    ip: str = ""
    created: float = 0.0
    first_seen: float = 0.0
    last_seen: float = 0.0
    deleting_since: float | None = None
    gone_at: float | None = None
    container_started: float | None = None
    container_finished: float | None = None
    exit_code: int | None = None
    ready_at: float | None = None
    status_cars: set[str] = field(default_factory=set)
    #: every distinct terminated state seen: "reason/exitCode" (e.g. "Completed/0",
    #: "ContainerStatusUnknown/137": the kubelet lost the container's real end)
    terminations: set[str] = field(default_factory=set)
    log_path: Path | None = None

    @property
    def key(self) -> str:
        """Name and UID prefix: a StatefulSet's replacement pod has its predecessor's name."""
        return f"{self.name}/{self.uid[:8]}"

    @property
    def is_server(self) -> bool:
        return self.labels.get("app.kubernetes.io/name") == "external-server"


@dataclass
class Snapshot:
    at: float
    #: pod name -> (uid, deleting, phase)
    pods: dict[str, tuple[str, bool, str]]


class Recorder:
    """Polls the namespace's pods every ``interval`` s; follows each container's log into
    ``logdir/<pod>-<uid prefix>.log`` (``kubectl logs -f --timestamps``) and reads each ready server
    pod's ``/status`` once, to know which cars it serves. Pods are told apart by UID (a
    StatefulSet's replacement pod has its predecessor's name). Child processes are ended by PID."""

    def __init__(self, namespace: str, logdir: Path, interval: float = 1.0) -> None:
        self.ns = namespace
        self.logdir = logdir
        self.interval = interval
        #: by pod UID
        self.pods: dict[str, PodRecord] = {}
        self.snapshots: list[Snapshot] = []
        self.lock = threading.Lock()
        self._followers: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-recorder", daemon=True)
        self.errors: list[str] = []

    def start(self) -> Recorder:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for proc in list(self._followers.values()):
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                if proc.poll() is None:
                    proc.kill()

    def poll_now(self) -> None:
        """One poll from the test thread (the thread polls too)."""
        self._poll()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as exc:  # keep recording; the error shows in the report
                self.errors.append(f"{iso(time.time())} {exc!r}")
            self._stop.wait(self.interval)

    def _poll(self) -> None:
        result = kubectl("get", "pods", "-n", self.ns, "-o", "json", check=False, timeout=30)
        if result.returncode != 0:
            return
        now = time.time()
        items = json.loads(result.stdout)["items"]
        snap = Snapshot(at=now, pods={})
        follow: list[PodRecord] = []
        fetch: list[PodRecord] = []
        with self.lock:
            seen: set[str] = set()
            for pod in items:
                meta, status = pod["metadata"], pod.get("status") or {}
                name, uid = meta["name"], meta["uid"]
                seen.add(uid)
                rec = self.pods.get(uid)
                if rec is None:
                    rec = PodRecord(
                        name=name,
                        uid=uid,
                        labels=dict(meta.get("labels") or {}),
                        created=parse_time(meta["creationTimestamp"]),
                        first_seen=now,
                    )
                    self.pods[uid] = rec
                rec.last_seen = now
                rec.ip = status.get("podIP") or rec.ip
                deleting = bool(meta.get("deletionTimestamp"))
                if deleting and rec.deleting_since is None:
                    rec.deleting_since = now
                snap.pods[name] = (rec.uid, deleting, status.get("phase", ""))
                for cs in status.get("containerStatuses") or []:
                    state = cs.get("state") or {}
                    running = state.get("running")
                    term = state.get("terminated")
                    if running and running.get("startedAt"):
                        rec.container_started = parse_time(running["startedAt"])
                    if term:
                        if term.get("startedAt"):
                            rec.container_started = parse_time(term["startedAt"])
                        if term.get("finishedAt"):
                            rec.container_finished = parse_time(term["finishedAt"])
                        rec.exit_code = term.get("exitCode")
                        rec.terminations.add(f"{term.get('reason')}/{term.get('exitCode')}")
                    if cs.get("ready") and rec.ready_at is None:
                        rec.ready_at = now
                        if rec.is_server:
                            fetch.append(rec)
                broken = uid in self._followers and self._followers[uid].poll() not in (None, 0)
                if rec.container_started is not None and uid not in self._followers:
                    follow.append(rec)
                elif broken and not deleting and status.get("phase") == "Running":
                    follow.append(rec)  # the stream broke while the container runs: read again
            for uid, rec in self.pods.items():
                if uid not in seen and rec.gone_at is None:
                    rec.gone_at = now
            self.snapshots.append(snap)
        for rec in follow:
            self._follow(rec)
        for rec in fetch:
            doc = pod_status(self.ns, rec.name)
            if doc is not None:
                with self.lock:
                    rec.status_cars = set((doc.get("cars") or {}).keys())

    def _follow(self, rec: PodRecord) -> None:
        path = self.logdir / f"{rec.name}-{rec.uid[:8]}.log"
        old = self._followers.get(rec.uid)
        if old is not None and old.poll() is None:
            return
        handle = path.open("wb")
        proc = subprocess.Popen(
            ["kubectl", "logs", "-f", "--timestamps", "-n", self.ns, rec.name, "--all-containers"],
            stdout=handle,
            stderr=subprocess.DEVNULL,
        )
        handle.close()
        rec.log_path = path
        self._followers[rec.uid] = proc

    # --- queries ---------------------------------------------------------------------------------

    def server_pods(self, instance: str) -> list[PodRecord]:
        with self.lock:
            return [
                p
                for p in self.pods.values()
                if p.is_server and p.labels.get("app.kubernetes.io/instance") == instance
            ]

    def pods_named(self, prefix: str) -> list[PodRecord]:
        with self.lock:
            return [p for p in self.pods.values() if p.name.startswith(prefix)]

    def pod(self, uid: str) -> PodRecord | None:
        with self.lock:
            return self.pods.get(uid)

    def log_lines(self, rec: PodRecord) -> list[tuple[float, str]]:
        return read_log(rec.log_path) if rec.log_path is not None else []


def read_log(path: Path) -> list[tuple[float, str]]:
    """(timestamp, text) of each line of a ``kubectl logs --timestamps`` file."""
    out: list[tuple[float, str]] = []
    if not path.exists():
        return out
    for raw in path.read_text(errors="replace").splitlines():
        stamp, _, text = raw.partition(" ")
        try:
            out.append((parse_time(stamp), text))
        except ValueError:
            if out:  # a continuation (traceback) line
                out.append((out[-1][0], raw))
    return out


def pod_status(namespace: str, pod: str, port: int = 8080) -> dict[str, Any] | None:
    """A server pod's own ``GET /status`` through the API server's pod proxy."""
    result = kubectl(
        "get",
        "--raw",
        f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/status",
        check=False,
        timeout=20,
    )
    if result.returncode != 0:
        return None
    try:
        doc: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        return None
    return doc


# --- the simulator's log: sessions per car ------------------------------------------------------------

_SIM_CONNECTED = re.compile(r"(?P<car>[0-9a-z_]+): connected, session (?P<session>\S+), ")
_SIM_DROPPED = re.compile(r"(?P<car>[0-9a-z_]+): dropped session (?P<session>\S*) \((?P<reason>.*)\)\.$")


@dataclass(frozen=True)
class CarEvent:
    at: float
    car: str
    kind: str  # "connected" or "dropped"
    detail: str  # session id or drop reason


def simulator_events(lines: Iterable[tuple[float, str]]) -> list[CarEvent]:
    events: list[CarEvent] = []
    for at, text in lines:
        if m := _SIM_CONNECTED.search(text):
            events.append(CarEvent(at, m["car"], "connected", m["session"]))
        elif m := _SIM_DROPPED.search(text):
            events.append(CarEvent(at, m["car"], "dropped", m["reason"]))
    return events


def session_gaps(
    events: list[CarEvent], cars: Iterable[str], start: float, end: float
) -> dict[str, dict[str, Any]]:
    """Per car, within [start, end]: each drop and how long until the next connected session.

    ``gap_s`` is the total time without a session (None when a drop was not followed by a
    session before ``end``), ``drops`` the reasons."""
    out: dict[str, dict[str, Any]] = {}
    for car in cars:
        mine = [e for e in events if e.car == car and start <= e.at <= end]
        total = 0.0
        open_since: float | None = None
        reasons: list[str] = []
        for e in mine:
            if e.kind == "dropped":
                reasons.append(e.detail)
                if open_since is None:
                    open_since = e.at
            elif e.kind == "connected" and open_since is not None:
                total += e.at - open_since
                open_since = None
        out[car] = {
            "gap_s": None if open_since is not None else round(total, 3),
            "drops": reasons,
            "sessions_started": sum(1 for e in mine if e.kind == "connected"),
        }
    return out


# --- the server pods' logs: who served which car, when ---------------------------------------------

_SRV_CONNECTED = "Connected to MQTT broker"
_SRV_STOPPING = "Stopping: cleaning up"
_SRV_CAR = re.compile(r"\t\((?P<car>[0-9a-z_]+)\)\t")
_SRV_SESSION = re.compile(r"\t\((?P<car>[0-9a-z_]+)\)\tConnect sequence finished; normal communication")
_SRV_RESET = re.compile(r"\t\((?P<car>[0-9a-z_]+)\)\tSession reset")


@dataclass(frozen=True)
class Interval:
    pod: str
    car: str
    start: float
    end: float  # math.inf: still open at the end of the record

    def overlap(self, other: Interval) -> float:
        return min(self.end, other.end) - max(self.start, other.start)


def served_cars(rec: PodRecord, lines: list[tuple[float, str]]) -> set[str]:
    """The cars a server pod served: its /status, and every car its log names."""
    return set(rec.status_cars) | {m["car"] for _, text in lines if (m := _SRV_CAR.search(text))}


def serving_intervals(rec: PodRecord, lines: list[tuple[float, str]], now: float) -> list[Interval]:
    """When ``rec`` was subscribed for its cars: from its first 'Connected to MQTT broker' line to
    its 'Stopping:' line (after which it answers no car), or its last line when it died without
    one, or ``now`` while it still runs."""
    start = next((at for at, text in lines if _SRV_CONNECTED in text), None)
    if start is None:
        return []
    end = next((at for at, text in lines if _SRV_STOPPING in text), None)
    if end is None:
        end = lines[-1][0] if rec.gone_at is not None or rec.container_finished is not None else now
    cars = served_cars(rec, lines)
    return [Interval(rec.key, car, start, end) for car in sorted(cars)]


def session_intervals(rec: PodRecord, lines: list[tuple[float, str]], now: float) -> list[Interval]:
    """Normal-communication sessions a pod held, per car (from its own log)."""
    out: list[Interval] = []
    open_: dict[str, float] = {}
    stop_at: float | None = None
    for at, text in lines:
        if m := _SRV_SESSION.search(text):
            open_.setdefault(m["car"], at)
        elif m := _SRV_RESET.search(text):
            if m["car"] in open_:
                out.append(Interval(rec.key, m["car"], open_.pop(m["car"]), at))
        elif _SRV_STOPPING in text and stop_at is None:
            stop_at = at
    last = lines[-1][0] if lines else now
    end_all = stop_at if stop_at is not None else (last if rec.gone_at is not None else now)
    out.extend(Interval(rec.key, car, since, end_all) for car, since in open_.items())
    return out


def overlaps(intervals: Iterable[Interval], start: float, end: float) -> list[dict[str, Any]]:
    """Pairs of intervals of different pods for the same car that overlap within [start, end]."""
    clipped = [
        Interval(i.pod, i.car, max(i.start, start), min(i.end, end))
        for i in intervals
        if i.end > start and i.start < end
    ]
    found: list[dict[str, Any]] = []
    for n, a in enumerate(clipped):
        for b in clipped[n + 1 :]:
            if a.car == b.car and a.pod != b.pod and a.overlap(b) > 0:
                found.append(
                    {
                        "car": a.car,
                        "pods": [a.pod, b.pod],
                        "from": iso(max(a.start, b.start)),
                        "to": iso(min(a.end, b.end)),
                        "seconds": round(a.overlap(b), 3),
                    }
                )
    return found


# --- the broker's log ---------------------------------------------------------------------------------

_BROKER_NEW = re.compile(r"New client connected from (?P<ip>[0-9.]+):\d+ as (?P<id>\S+)")
_BROKER_GONE = re.compile(
    r"(?:Client (?P<id>\S+) (?:disconnected|closed its connection|has exceeded timeout)"
    r"|Socket error on client (?P<id2>\S+),|Client (?P<id3>\S+) already connected, closing old)"
)


def broker_connections(lines: list[tuple[float, str]], prefix: str, now: float) -> list[dict[str, Any]]:
    """MQTT connections of the server clients (client id starting with ``prefix``): id, IP, from, to."""
    out: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    for at, text in lines:
        if (m := _BROKER_NEW.search(text)) and m["id"].startswith(prefix):
            if m["id"] in open_:  # a take-over: the old connection ends now
                old = open_.pop(m["id"])
                old["to"], old["ended_by"] = at, "taken over"
                out.append(old)
            open_[m["id"]] = {"id": m["id"], "ip": m["ip"], "from": at, "to": None, "ended_by": None}
        elif m := _BROKER_GONE.search(text):
            cid = m["id"] or m["id2"] or m["id3"]
            if cid in open_:
                conn = open_.pop(cid)
                conn["to"], conn["ended_by"] = at, text.strip()[:80]
                out.append(conn)
    for conn in open_.values():
        conn["to"] = now
        out.append(conn)
    return sorted(out, key=lambda c: c["from"])


# --- figures -----------------------------------------------------------------------------------------


class Figures:
    """Measured figures, kept in ``path`` (JSON) as they are measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        print(f"FIGURE {key}: {json.dumps(value, sort_keys=True)}", flush=True)
