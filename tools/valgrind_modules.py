"""Run the example module under valgrind memcheck and fail on memory errors or leaks in it.

A ctypes-driven scenario (connect, statuses with echo, command files, wait, pop,
ack, disconnect, destroy; a failing init; destroy with a blocked waiter) runs in
a Python process under ``valgrind --leak-check=full`` with PYTHONMALLOC=malloc.
Only records that mention the module ``.so`` in any of their stacks count (so
Python's own noise never fails the run); among those, every memory error and
every "definitely lost" / "indirectly lost" leak is a failure.

A self-check runs the same scenario against ``libexample_leaky.so`` (built with
-DEXAMPLE_INJECT_LEAK) and fails unless that leak IS flagged, so a checker that
silently stopped seeing anything cannot pass.

Exit 0 with a one-line summary when clean; 1 on findings or a broken run. With
no valgrind installed: exit 1 when FLEET_REQUIRE_REAL_PARTS=1 (CI), else skip.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_SRC = ROOT / "lib" / "modules" / "example"
MODULES_OUT = ROOT / "build" / "modules"
CLEAN_LIB = MODULES_OUT / "libexample.so"
LEAKY_LIB = MODULES_OUT / "libexample_leaky.so"
LEAK_KINDS = frozenset({"Leak_DefinitelyLost", "Leak_IndirectlyLost"})
IGNORED_KINDS = frozenset({"Leak_PossiblyLost", "Leak_StillReachable"})
RUN_TIMEOUT_S = 300
MAX_FRAMES_SHOWN = 16


# ---- report parsing -----------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One valgrind <error> record."""

    kind: str
    what: str
    frames: tuple[str, ...]
    objects: frozenset[str]

    def mentions(self, library: Path) -> bool:
        real = os.path.realpath(library)
        return any(obj == real or os.path.basename(obj) == library.name for obj in self.objects)

    def render(self) -> str:
        shown = [f"      {frame}" for frame in self.frames[:MAX_FRAMES_SHOWN]]
        if len(self.frames) > MAX_FRAMES_SHOWN:
            shown.append(f"      ... {len(self.frames) - MAX_FRAMES_SHOWN} more frame(s)")
        return "\n".join([f"  [{self.kind}] {self.what}", *shown])


def _frame_text(frame: ET.Element) -> str:
    fn = frame.findtext("fn") or "???"
    where = frame.findtext("file")
    if where:
        return f"{fn} ({where}:{frame.findtext('line') or '?'})"
    return f"{fn} ({frame.findtext('obj') or '?'})"


def parse_report(xml_text: str) -> list[Record]:
    """Every <error> of a valgrind --xml=yes report; raises ET.ParseError if truncated."""
    records = []
    for error in ET.fromstring(xml_text).iter("error"):
        what = error.findtext("what") or error.findtext("xwhat/text") or ""
        frames = tuple(_frame_text(frame) for frame in error.iter("frame"))
        objects = frozenset(obj.text or "" for obj in error.iter("obj"))
        records.append(Record(error.findtext("kind") or "?", what.strip(), frames, objects))
    return records


def findings(records: list[Record], library: Path) -> tuple[list[Record], int]:
    """(failing records of the module, number of records ignored as not ours or not failing)."""
    failing = [r for r in records if r.kind not in IGNORED_KINDS and r.mentions(library)]
    return failing, len(records) - len(failing)


# ---- running valgrind ----------------------------------------------------------


@dataclass(frozen=True)
class Run:
    library: Path
    returncode: int
    records: list[Record]
    output: str


def start(library: Path, report: Path) -> subprocess.Popen[str]:
    command = [
        "valgrind",
        "--tool=memcheck",
        "--leak-check=full",
        "--show-leak-kinds=definite,indirect",
        "--errors-for-leak-kinds=definite,indirect",
        "--num-callers=40",
        "--xml=yes",
        f"--xml-file={report}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--scenario",
        str(library),
    ]
    env = {**os.environ, "PYTHONMALLOC": "malloc"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(library: Path, report: Path, process: subprocess.Popen[str]) -> Run:
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    try:
        records = parse_report(report.read_text())
    except (OSError, ET.ParseError) as exc:
        return Run(library, process.returncode or 1, [], f"{output}\nunreadable valgrind report: {exc}")
    return Run(library, process.returncode, records, output)


def build() -> None:
    subprocess.run(
        ["make", "--no-print-directory", "-C", str(MODULE_SRC), f"OUT={MODULES_OUT}", "all", "leaky"],
        check=True,
    )


def check(self_check: bool) -> int:
    if shutil.which("valgrind") is None:
        if os.environ.get("FLEET_REQUIRE_REAL_PARTS") == "1":
            print("valgrind_modules: FAIL: valgrind is not installed (FLEET_REQUIRE_REAL_PARTS=1)")
            return 1
        print("valgrind_modules: SKIPPED: valgrind is not installed")
        return 0
    try:
        build()
    except subprocess.CalledProcessError as exc:
        print(f"valgrind_modules: FAIL: building the module failed ({exc})")
        return 1
    started = time.monotonic()
    libraries = [CLEAN_LIB, LEAKY_LIB] if self_check else [CLEAN_LIB]
    with tempfile.TemporaryDirectory(prefix="valgrind-modules-") as tmp:
        reports = [Path(tmp) / f"{lib.stem}.xml" for lib in libraries]
        processes = [start(lib, report) for lib, report in zip(libraries, reports, strict=True)]
        runs = [finish(lib, rep, proc) for lib, rep, proc in zip(libraries, reports, processes, strict=True)]
    elapsed = time.monotonic() - started
    return judge(runs[0], runs[1] if self_check else None, elapsed)


def judge(clean: Run, leaky: Run | None, elapsed: float) -> int:
    status = 0
    if clean.returncode != 0:
        print(f"valgrind_modules: FAIL: scenario on {clean.library.name} exited {clean.returncode}:")
        print(clean.output)
        status = 1
    failing, ignored = findings(clean.records, clean.library)
    if failing:
        print(f"valgrind_modules: FAIL: {len(failing)} record(s) in {clean.library.name}:")
        for record in failing:
            print(record.render())
        status = 1
    self_check_note = "self-check skipped"
    if leaky is not None:
        flagged, _ = findings(leaky.records, leaky.library)
        leaks = [r for r in flagged if r.kind in LEAK_KINDS]
        if leaky.returncode != 0 or not leaks:
            print(
                f"valgrind_modules: FAIL: self-check: the leaky build was not flagged "
                f"(exit {leaky.returncode}, {len(leaks)} leak record(s)); the checker cannot be trusted"
            )
            print(leaky.output)
            status = 1
        else:
            self_check_note = f"self-check flagged {len(leaks)} leak record(s) in {leaky.library.name}"
    if status == 0:
        print(
            f"valgrind_modules: OK: {clean.library.name} clean (0 errors, 0 leaks; "
            f"{ignored} record(s) outside the module ignored); {self_check_note}; {elapsed:.0f}s"
        )
    return status


# ---- the scenario (runs inside valgrind) -----------------------------------------


class _Counters(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "statuses",
            "error_messages",
            "acks",
            "connects",
            "disconnects",
            "commands_queued",
            "commands_popped",
            "bad_command_files",
            "devices",
            "queued",
        )
    ]


def scenario(library_path: Path) -> int:
    """Round-trip commands through every ABI call; exits non-zero if the module misbehaves."""
    from external_server.device import Device  # noqa: PLC0415 - only the scenario needs the package
    from external_server.modules import (  # noqa: PLC0415
        NOT_OK,
        OK,
        TIMEOUT_OCCURRED,
        DisconnectType,
        ModuleInitError,
        ModuleLibrary,
        build_init_config,
    )
    from external_server.modules.abi import Buffer  # noqa: PLC0415

    library = ModuleLibrary.load(library_path)
    get_counters = library.cdll["example_get_counters"]
    get_counters.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Counters)]

    def expect(condition: bool, message: str) -> None:
        if not condition:
            raise AssertionError(message)

    try:
        library.init(build_init_config("c", "v", {"echo_every": "nope"}))
        expect(False, "init accepted an invalid value")
    except ModuleInitError:
        pass

    buffer = Buffer()
    expect(library.functions.allocate(ctypes.byref(buffer), 32) == OK, "allocate")
    library.functions.deallocate(ctypes.byref(buffer))

    with tempfile.TemporaryDirectory(prefix="valgrind-cmd-") as command_dir:
        config: dict[str, str | int] = {
            "supported_device_types": "0,1",
            "echo_every": 2,
            "command_on_connect": "hello",
            "command_dir": command_dir,
            "command_dir_poll_ms": 5,
            "reject_roles": "refused",
        }
        context = library.init(build_init_config("c", "v", config))
        expect(library.is_device_type_supported(1), "type 1 supported")
        devices = [Device(1000, index % 2, f"role{index}", f"name {index}") for index in range(3)]
        lock = threading.Lock()
        stop = threading.Event()
        popped: list[bytes] = []

        def worker() -> None:
            while not stop.is_set():
                if context.wait_for_command(10) != OK:
                    continue
                while True:
                    with lock:
                        command = context.pop_command()
                        if command.device is not None:
                            popped.append(command.data)
                            context.command_ack(command.data, command.device)
                    if command.remaining <= 0:
                        break

        thread = threading.Thread(target=worker)
        thread.start()
        with lock:
            expect(context.device_connected(Device(1000, 0, "refused")) == NOT_OK, "reject_roles")
            for device in devices:
                expect(context.device_connected(device) == OK, "connect")
        for index in range(60):
            with lock:
                device = devices[index % 3]
                expect(context.forward_status(f"status {index}".encode() * 8, device) == OK, "status")
                if index % 10 == 0:
                    context.forward_error_message(b"error text", device)
        for index in range(3):
            temporary = Path(command_dir) / f".{index}.tmp"
            temporary.write_bytes(f"1000 0 role0 name 0\nfile command {index}".encode())
            os.rename(temporary, Path(command_dir) / f"{index:03}.cmd")
        (Path(command_dir) / "bad.cmd").write_bytes(b"garbage")
        deadline = time.monotonic() + 60
        while len(popped) < 3 + 30 + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join()
        expect(len(popped) == 36, f"popped {len(popped)} commands, expected 36")
        with lock:
            expect(context.device_disconnected(DisconnectType.ANNOUNCED, devices[0]) == OK, "disconnect")
            expect(context.device_disconnected(DisconnectType.ANNOUNCED, devices[0]) == NOT_OK, "unknown")
            expect(context.pop_command().remaining == NOT_OK, "empty queue")
            context.forward_status(b"left queued for destroy", devices[1])
            context.forward_status(b"left queued for destroy", devices[1])
            counters = _Counters()
            get_counters(context.pointer, ctypes.byref(counters))
            expect(counters.queued == 1 and counters.devices == 2, "devices and a command left for destroy")
            expect(counters.bad_command_files == 1, "malformed file counted")
            expect(context.destroy() == OK and context.destroy() == OK, "destroy")

        second = library.init(build_init_config("c", "w", {}))
        results: list[int] = []
        waiter = threading.Thread(target=lambda: results.append(second.wait_for_command(30_000)))
        waiter.start()
        time.sleep(0.2)
        expect(second.destroy() == OK, "destroy with a blocked waiter")
        waiter.join()
        expect(results != [TIMEOUT_OCCURRED] and len(results) == 1, "waiter woken by destroy")
    print("scenario ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", type=Path, help="internal: run the scenario in this process")
    parser.add_argument("--no-self-check", action="store_true", help="skip the leaky-build self-check")
    args = parser.parse_args(argv)
    if args.scenario is not None:
        return scenario(args.scenario)
    return check(self_check=not args.no_self_check)


if __name__ == "__main__":
    sys.exit(main())
