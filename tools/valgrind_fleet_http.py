"""Run the fleet_http modules under valgrind memcheck; fail on memory errors or leaks in them.

The HTTP API test double (tests/support/http_api_double.py) is started in its own
process (not under valgrind); a ctypes-driven scenario then runs inside
``valgrind --leak-check=full`` with PYTHONMALLOC=malloc and loads all three
libraries (mission, io, transparent): failing inits, statuses (valid, invalid,
not JSON, BASE64 fallback), commands (valid, invalid, other modules', one left
queued at destroy), wait/pop/ack, device (dis)connects, destroy during a long
poll with a blocked waiter, a refused port (retries, circuit breaker), an
unresponsive port, a wrong api_key and a car the API never saw.

Findings are judged like tools/valgrind_modules.py (its report parser is
reused): only records that mention a fleet_http ``.so`` in a stack count; every
memory error and every definitely/indirectly lost block there is a failure. A
self-check runs the transparent part against ``libfleet_http_transparent_leaky.so``
(built with -DFLEET_HTTP_INJECT_LEAK) and fails unless that leak IS flagged.

Exit 0 with a one-line summary when clean; 1 on findings or a broken run. With no
valgrind, or the modules skipped for missing -dev packages: exit 1 when
FLEET_REQUIRE_REAL_PARTS=1 (CI), else print SKIPPED and exit 0.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(ROOT / "tests"))

from valgrind_modules import LEAK_KINDS, Record, parse_report  # noqa: E402

MODULE_SRC = ROOT / "lib" / "modules" / "fleet_http"
MODULES_OUT = ROOT / "build" / "modules"
CLEAN_LIBS = [MODULES_OUT / f"libfleet_http_{name}.so" for name in ("mission", "io", "transparent")]
LEAKY_LIB = MODULES_OUT / "libfleet_http_transparent_leaky.so"
DOUBLE = ROOT / "tests" / "support" / "http_api_double.py"
IGNORED_KINDS = frozenset({"Leak_PossiblyLost", "Leak_StillReachable"})
RUN_TIMEOUT_S = 600
NAME = "valgrind_fleet_http"


def _mentions(record: Record, libraries: list[Path]) -> bool:
    return any(record.mentions(library) for library in libraries)


def _findings(records: list[Record], libraries: list[Path]) -> tuple[list[Record], int]:
    failing = [r for r in records if r.kind not in IGNORED_KINDS and _mentions(r, libraries)]
    return failing, len(records) - len(failing)


def _require_real_parts() -> bool:
    return os.environ.get("FLEET_REQUIRE_REAL_PARTS") == "1"


def _skip_or_fail(reason: str) -> int:
    if _require_real_parts():
        print(f"{NAME}: FAIL: {reason} (FLEET_REQUIRE_REAL_PARTS=1)")
        return 1
    print(f"{NAME}: SKIPPED: {reason}")
    return 0


def _build() -> str:
    run = subprocess.run(
        ["make", "--no-print-directory", "-C", str(MODULE_SRC), f"OUT={MODULES_OUT}", "all", "leaky"],
        check=True,
        capture_output=True,
        text=True,
    )
    return run.stdout + run.stderr


def _start_double() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, str(DOUBLE), "--port", "0", "--t-api", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise RuntimeError(f"the HTTP API test double did not start (printed {url!r})")
    return process, url


def _valgrind(libraries: list[Path], api_url: str, car_prefix: str, report: Path) -> subprocess.Popen[str]:
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
        api_url,
        car_prefix,
        *map(str, libraries),
    ]
    env = {**os.environ, "PYTHONMALLOC": "malloc"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check(self_check: bool) -> int:
    if shutil.which("valgrind") is None:
        return _skip_or_fail("valgrind is not installed")
    try:
        output = _build()
    except subprocess.CalledProcessError as exc:
        print(f"{NAME}: FAIL: building the modules failed:\n{exc.stdout}{exc.stderr}")
        return 1
    if "skipping fleet_http" in output:
        return _skip_or_fail(output.strip())
    started = time.monotonic()
    double, api_url = _start_double()
    try:
        with tempfile.TemporaryDirectory(prefix="valgrind-fleet-http-") as tmp:
            clean_report, leaky_report = Path(tmp) / "clean.xml", Path(tmp) / "leaky.xml"
            clean = _valgrind(CLEAN_LIBS, api_url, "clean", clean_report)
            leaky = _valgrind([LEAKY_LIB], api_url, "leaky", leaky_report) if self_check else None
            status = _judge_clean(clean, clean_report)
            note = "self-check skipped"
            if leaky is not None:
                ok, note = _judge_leaky(leaky, leaky_report)
                status |= 0 if ok else 1
    finally:
        double.terminate()
        double.wait(10)
    if status == 0:
        names = ", ".join(lib.name for lib in CLEAN_LIBS)
        print(f"{NAME}: OK: {names} clean; {note}; {time.monotonic() - started:.0f}s")
    return status


def _collect(process: subprocess.Popen[str], report: Path) -> tuple[int, list[Record], str]:
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return 1, [], f"{output}\ntimed out after {RUN_TIMEOUT_S} s"
    try:
        return process.returncode, parse_report(report.read_text()), output
    except Exception as exc:  # a truncated report is a broken run, reported as such
        return process.returncode or 1, [], f"{output}\nunreadable valgrind report: {exc}"


def _judge_clean(process: subprocess.Popen[str], report: Path) -> int:
    returncode, records, output = _collect(process, report)
    status = 0
    if returncode != 0:
        print(f"{NAME}: FAIL: scenario exited {returncode}:\n{output}")
        status = 1
    failing, _ = _findings(records, CLEAN_LIBS)
    if failing:
        print(f"{NAME}: FAIL: {len(failing)} record(s) in the fleet_http modules:")
        for record in failing:
            print(record.render())
        status = 1
    return status


def _judge_leaky(process: subprocess.Popen[str], report: Path) -> tuple[bool, str]:
    returncode, records, output = _collect(process, report)
    flagged, _ = _findings(records, [LEAKY_LIB])
    leaks = [r for r in flagged if r.kind in LEAK_KINDS]
    if returncode != 0 or not leaks:
        print(
            f"{NAME}: FAIL: self-check: the leaky build was not flagged (exit {returncode}, "
            f"{len(leaks)} leak record(s)); the checker cannot be trusted\n{output}"
        )
        return False, ""
    return True, f"self-check flagged {len(leaks)} leak record(s) in {LEAKY_LIB.name}"


# ---- the scenario (runs inside valgrind) ------------------------------------------------------------


def scenario(api_url: str, car_prefix: str, libraries: list[Path]) -> int:
    from external_server.device import Device  # noqa: PLC0415 - only the scenario needs the package
    from external_server.modules import (  # noqa: PLC0415
        NOT_OK,
        OK,
        TIMEOUT_OCCURRED,
        ModuleInitError,
        ModuleLibrary,
        build_init_config,
    )
    from external_server.modules.abi import Buffer  # noqa: PLC0415
    from support.fleet_http_module import Stats, module_config  # noqa: PLC0415
    from support.http_api_double import http_request, message  # noqa: PLC0415

    def expect(condition: bool, text: str) -> None:
        if not condition:
            raise AssertionError(text)

    def stats_of(context: object) -> Stats:
        out = Stats()
        function = context.library.cdll["fleet_http_get_stats"]  # type: ignore[attr-defined]
        function.argtypes = [ctypes.c_void_p, ctypes.POINTER(Stats)]
        function(context.pointer, ctypes.byref(out))  # type: ignore[attr-defined]
        return out

    def wait_for(predicate: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():  # type: ignore[operator]
            expect(time.monotonic() < deadline, f"{what} not reached within {timeout_s} s")
            time.sleep(0.05)

    def post(car: str, body: list[object]) -> int:
        for _ in range(5):
            status, _ = http_request(api_url, "POST", f"/command/company_x/{car}", body)
            if status != 400:
                return status
            time.sleep(0.005)
        return status

    statuses = {1: b'{"state":"DRIVE","telemetry":{"speed":1.5},"nextStop":{"name":"a"}}', 2: b"[[1],[0],{}]"}
    commands: dict[int, object] = {
        1: {"action": "STOP", "stops": [{"name": "a"}], "route": "r"},
        2: [{"outNum": 1, "actType": 2, "x": 1}],
    }
    invalid: dict[int, object] = {1: {"action": "JUMP"}, 2: [{"outNum": "x"}]}
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # refused from now on
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never answers
    silent_port = silent.getsockname()[1]

    for index, path in enumerate(libraries):
        library = ModuleLibrary.load(path)
        module_id = library.get_module_number()
        device = Device(module_id, 1, "vg_device", "Valgrind")
        car = f"{car_prefix}_{index}"
        try:
            library.init(build_init_config("company_x", car, module_config("ftp://x", api_key="k")))
            expect(False, "init accepted ftp://")
        except ModuleInitError:
            pass
        buffer = Buffer()
        expect(library.functions.allocate(ctypes.byref(buffer), 16) == OK, "allocate")
        library.functions.deallocate(ctypes.byref(buffer))

        extra = {"status_base64_fallback": "1"} if module_id == 3 else {}
        context = library.init(build_init_config("company_x", car, module_config(api_url, **extra)))
        expect(context.device_connected(device) == OK, "connect")
        status = statuses.get(module_id, b'{"a":[1,2.5,"x"]}')
        expect(context.forward_status(status, device) == OK, "status")
        expect(context.forward_error_message(b'{"finishedStops":[]}', device) == OK, "error message")
        expect(context.forward_status(b"{bad", device) == (OK if module_id == 3 else NOT_OK), "bad status")
        expect(context.forward_status(b"{}", Device(module_id, 1, "Bad Role", "")) == NOT_OK, "bad role")
        wait_for(lambda c=context: stats_of(c).primed == 1, 60, "primed")
        body = [
            message(module_id, 1, "vg_device", "Valgrind", commands.get(module_id, {"k": [1, "v"]})),
            message(module_id, 1, "vg_device", "Valgrind", invalid.get(module_id, "string command")),
            message(module_id + 10, 1, "vg_device", "Other module", "ignored"),
            message(module_id, 1, "vg_device", "Valgrind", commands.get(module_id, "last")),
        ]
        other_status = message(module_id + 10, 1, "vg_device", "Other module", {}, message_type="STATUS")
        expect(http_request(api_url, "POST", f"/status/company_x/{car}", [other_status])[0] == 200, "status")
        expect(post(car, body) == 200, "command POST")
        popped = 0
        deadline = time.monotonic() + 60
        while popped < (3 if module_id == 3 else 2) and time.monotonic() < deadline:
            if context.wait_for_command(200) == OK:
                while True:
                    command = context.pop_command()
                    if not command.ok:
                        break
                    popped += 1
                    expect(context.command_ack(command.data, device) == OK, "ack")
                    if command.remaining == 0:
                        break
        expect(popped == (3 if module_id == 3 else 2), f"popped {popped}")
        expect(context.pop_command().remaining == NOT_OK, "empty pop")
        expect(context.device_disconnected(0, device) == OK, "disconnect")
        expect(context.device_disconnected(0, device) == NOT_OK, "unknown disconnect")
        expect(context.device_connected(device) == OK, "connect again (left for destroy)")
        expect(post(car, body[:1]) == 200, "command left queued")
        wait_for(lambda c=context: stats_of(c).queued == 1, 60, "a command queued for destroy")
        time.sleep(0.5)  # the poller is back in a long poll
        results: list[int] = []

        def wait_long(c: object = context, out: list[int] = results) -> None:
            out.append(c.wait_for_command(60_000))  # type: ignore[attr-defined]

        waiter = threading.Thread(target=wait_long)
        waiter.start()
        time.sleep(0.2)
        context.destroy()  # waiter returns OK (a command is queued) or CONTEXT_INCORRECT
        waiter.join(60)
        expect(len(results) == 1, "waiter returned")

        for url, key in (
            (f"http://127.0.0.1:{dead_port}/v2/protocol", "DefaultKey"),
            (f"http://127.0.0.1:{silent_port}/v2/protocol", "DefaultKey"),
            (api_url, "WrongKey"),
        ):
            config = module_config(url, api_key=key, status_timeout_ms="1500", circuit_breaker_failures="1")
            other = library.init(build_init_config("company_x", f"{car}_x", config))
            for _ in range(2):
                expect(other.forward_status(status, device) == NOT_OK, "failing status")
            expect(other.wait_for_command(300) == TIMEOUT_OCCURRED, "failing wait")
            other.destroy()
        unknown = library.init(build_init_config("company_x", f"{car}_unknown", module_config(api_url)))
        expect(unknown.wait_for_command(700) == TIMEOUT_OCCURRED, "unknown car")
        unknown.destroy()
    silent.close()
    print("scenario ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", nargs="+", metavar="ARG", help="internal: api_url car_prefix lib...")
    parser.add_argument("--no-self-check", action="store_true", help="skip the leaky-build self-check")
    args = parser.parse_args(argv)
    if args.scenario is not None:
        api_url, car_prefix, *libraries = args.scenario
        return scenario(api_url, car_prefix, [Path(lib) for lib in libraries])
    return check(self_check=not args.no_self_check)


if __name__ == "__main__":
    sys.exit(main())
