"""TEST DOUBLE of the Fleet Protocol HTTP API (docs/http-bridge.md §1), for the fleet_http module tests.

This is not the real API (bringauto/fleet-protocol-http-api) and not product code:
it is an in-process aiohttp server, written from the spec, that reproduces the
behaviour the bridge modules rely on, so the C modules can be tested on a
loopback port without the real server, its database or Keycloak:

* base path ``/v2/protocol``; ``api_key`` query auth (401 without, with a wrong
  key, or together with an ``Authorization: Bearer`` header); 415 for a POST body
  that is not ``application/json``; company/car names must match ``^[0-9a-z_]+$``;
* Message schema validation (400 problem objects); server-side millisecond
  timestamps that overwrite the client's; the same-millisecond duplicate 400;
* ``POST /status`` (STATUS / STATUS_ERROR only): a device's first status since
  the double (re)started makes the car and device "available" and purges every
  stored command of that device;
* ``POST /command`` (COMMAND only): 404 unless the car and every addressed device
  (module, type, role) are available; wakes **all** command waiters of the car,
  each receiving only that POST's messages (returned if the last has
  ``timestamp >= since``, else ``[]``);
* ``GET /command`` and ``GET /status`` with inclusive ``since`` and ``wait``: an
  immediate answer when stored messages match, else a long poll of ``t_api_s``
  seconds; 404 ``[]`` for an unknown car (commands: also after a wait timeout for
  a car still unknown; statuses: after any wait timeout);
* ``GET /cars`` and ``GET /available-devices``; responses with sorted keys.

Runs in a background thread with its own event loop (``start()`` / ``stop()``),
so blocking ctypes calls in the test thread never stall it. ``stop()`` then
``start()`` is an API restart on the same port: stored messages stay (as in
SQLite mode) but the connected-car cache starts empty. Test-only extras:
``request_log``, ``fail_next()`` (5xx injection), ``freeze_clock()`` and
``freeze_clock_until_duplicate()``; :class:`UnresponsiveHost` is a socket that
accepts TCP connections but never answers.

``python tests/support/http_api_double.py --port 0 --t-api 1`` serves it in its
own process (prints the base URL); tools/valgrind_fleet_http.py uses that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BASE_PATH = "/v2/protocol"
DEFAULT_API_KEY = "DefaultKey"
HOST = "127.0.0.1"
NAME_RE = re.compile(r"^[0-9a-z_]+$")
ROLE_RE = re.compile(r"^[a-z0-9_]+$")
STATUS_TYPES = frozenset({"STATUS", "STATUS_ERROR"})
COMMAND_TYPE = "COMMAND"
ENCODINGS = frozenset({"JSON", "BASE64"})
DUPLICATE_TEXT = "Some of the messages are identical to those sent previously, including their timestamps."

Json = Any
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_response(body: Json, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body, sort_keys=True), status=status, content_type="application/json")


def _problem(status: int, title: str, detail: str) -> web.Response:
    return _json_response({"detail": detail, "status": status, "title": title, "type": "about:blank"}, status)


class _BadRequest(Exception):
    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status

    def response(self) -> web.Response:
        if self.status == 400:
            return _problem(400, "Bad Request", self.detail)
        return _json_response(self.detail, self.status)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def device_key(device_id: dict[str, Any]) -> str:
    """The API's device identity: module, type and role (the name is not part of it)."""
    return f"{device_id['module_id']}_{device_id['type']}_{device_id['role']}"


def _validate_message(message: object, allowed_types: frozenset[str]) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise _BadRequest("message is not an object")
    if "timestamp" in message and not _is_int(message["timestamp"]):
        raise _BadRequest("'timestamp' is not an integer")
    device = message.get("device_id")
    if not isinstance(device, dict):
        raise _BadRequest("'device_id' is a required property")
    for key in ("module_id", "type"):
        if not _is_int(device.get(key)) or device[key] < 0:
            raise _BadRequest(f"'{key}' must be an integer >= 0")
    if not isinstance(device.get("role"), str) or not ROLE_RE.match(device["role"]):
        raise _BadRequest("'role' does not match '^[a-z0-9_]+$'")
    if not isinstance(device.get("name"), str):
        raise _BadRequest("'name' is a required property")
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise _BadRequest("'payload' is a required property")
    if payload.get("message_type") not in {"STATUS", "STATUS_ERROR", "COMMAND"}:
        raise _BadRequest("'message_type' is not one of STATUS, STATUS_ERROR, COMMAND")
    if payload.get("encoding") not in ENCODINGS:
        raise _BadRequest("'encoding' is not one of JSON, BASE64")
    if "data" not in payload or not isinstance(payload["data"], dict | list | str):
        raise _BadRequest("'data' must be an object, an array or a string")
    if payload["message_type"] not in allowed_types:
        raise _BadRequest(f"message_type {payload['message_type']} is not allowed here")
    return {
        "device_id": {k: device[k] for k in ("module_id", "type", "role", "name")},
        "payload": {k: payload[k] for k in ("message_type", "encoding", "data")},
    }


@dataclass
class _Stored:
    company: str
    car: str
    kind: str  # "status" or "command"
    message: dict[str, Any]  # device_id, payload, timestamp


@dataclass
class RequestRecord:
    method: str
    route: str  # e.g. "GET /command"
    path: str
    query: dict[str, str]
    status: int
    started: float
    finished: float


@dataclass
class _Waiter:
    future: asyncio.Future[list[dict[str, Any]]]


@dataclass
class _State:
    """Everything the double stores. Guarded by FleetHttpApiDouble.lock (tests read it from their thread)."""

    messages: list[_Stored] = field(default_factory=list)
    keys: set[tuple[int, int, str, str, str, str]] = field(default_factory=set)
    # connected-car cache: (company, car) -> {device key: device_id}
    available: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)


class FleetHttpApiDouble:
    """The HTTP API test double; see the module docstring. Use as a context manager or start()/close()."""

    def __init__(
        self,
        *,
        t_api_s: float = 1.0,
        api_keys: tuple[str, ...] = (DEFAULT_API_KEY,),
        port: int = 0,
        host: str = HOST,
    ) -> None:
        self.t_api_s = t_api_s
        self.api_keys = set(api_keys)
        self.host = host
        self.port = port
        self.lock = threading.RLock()
        self.state = _State()
        self.request_log: list[RequestRecord] = []
        self.duplicate_rejections = 0
        self._frozen_ms: int | None = None
        self._freeze_until_duplicates = 0
        self._failures: list[tuple[str, int, int]] = []  # (route, remaining, status)
        self._waiters: dict[tuple[str, str, str], list[_Waiter]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---- lifecycle (called from the test thread) --------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{BASE_PATH}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def start(self) -> FleetHttpApiDouble:
        """Start serving (again): a restart keeps stored messages and forgets the connected cars."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="http-api-double", daemon=True
            )
            self._thread.start()
        with self.lock:
            self.state.available.clear()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop serving like a killed process: the port closes, open connections are dropped."""
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop.close()
            self._loop = None

    def __enter__(self) -> FleetHttpApiDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(BASE_PATH + "/status/{company}/{car}", self._post_status)
        app.router.add_get(BASE_PATH + "/status/{company}/{car}", self._get_status)
        app.router.add_post(BASE_PATH + "/command/{company}/{car}", self._post_command)
        app.router.add_get(BASE_PATH + "/command/{company}/{car}", self._get_command)
        app.router.add_get(BASE_PATH + "/cars", self._get_cars)
        app.router.add_get(BASE_PATH + "/available-devices/{company}/{car}", self._get_devices)
        # A killed process does not drain requests; 0 would mean "no limit" to aiohttp.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])
        self._runner = runner

    async def _shutdown(self) -> None:
        runner, self._runner = self._runner, None
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.future.cancel()
        self._waiters.clear()
        if runner is not None:
            await runner.cleanup()

    # ---- test controls --------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The server clock (Unix ms); frozen by freeze_clock_until_duplicate()."""
        with self.lock:
            if self._frozen_ms is not None:
                return self._frozen_ms
            return int(time.time() * 1000)

    def freeze_clock(self) -> None:
        """Stop the server clock: every POST gets the same millisecond until unfreeze_clock()."""
        with self.lock:
            self._frozen_ms = int(time.time() * 1000)
            self._freeze_until_duplicates = 0

    def unfreeze_clock(self) -> None:
        with self.lock:
            self._frozen_ms = None

    def freeze_clock_until_duplicate(self, rejections: int = 1) -> None:
        """Stop the clock now; it runs again once ``rejections`` same-ms duplicate 400s were answered."""
        with self.lock:
            self._frozen_ms = int(time.time() * 1000)
            self._freeze_until_duplicates = rejections

    def fail_next(self, route: str, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` requests of ``route`` (e.g. "POST /status") with ``status``."""
        with self.lock:
            self._failures.append((route, count, status))

    def count(self, route: str, status: int | None = None, since: float = 0.0) -> int:
        """Requests of ``route`` (e.g. "GET /command") started at or after ``since`` (time.monotonic())."""
        with self.lock:
            return sum(
                1
                for r in self.request_log
                if r.route == route and r.started >= since and (status is None or r.status == status)
            )

    def waiting(self, kind: str = "command", company: str = "", car: str = "") -> int:
        """Long polls of ``kind`` ("command" or "status") parked right now, for a car or for all.

        What a test waits for instead of sleeping until a poller "must be" inside its long poll.
        """
        parked = list(self._waiters.items())  # written on the double's loop; a copy is enough here
        return sum(
            sum(1 for waiter in waiters if not waiter.future.done())
            for (waiter_company, waiter_car, waiter_kind), waiters in parked
            if waiter_kind == kind and company in ("", waiter_company) and car in ("", waiter_car)
        )

    def stored(self, kind: str, company: str, car: str) -> list[dict[str, Any]]:
        """Stored statuses ("status") or commands ("command") of a car, in storage order (copies)."""
        with self.lock:
            return [
                json.loads(json.dumps(s.message))
                for s in self.state.messages
                if s.kind == kind and s.company == company and s.car == car
            ]

    # ---- HTTP plumbing ---------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        route = f"{request.method} /{request.path[len(BASE_PATH) + 1 :].split('/')[0]}"
        response: web.StreamResponse
        injected = self._injected_failure(route)
        if not request.path.startswith(BASE_PATH + "/"):
            response = _json_response("Not found", 404)
        elif injected is not None:
            response = _json_response("Injected failure (test double)", injected)
        else:
            response = self._auth(request) or await handler(request)
        with self.lock:
            self.request_log.append(
                RequestRecord(
                    request.method,
                    route,
                    request.path,
                    dict(request.query),
                    response.status,
                    started,
                    time.monotonic(),
                )
            )
        return response

    def _injected_failure(self, route: str) -> int | None:
        with self.lock:
            for index, (failing_route, remaining, status) in enumerate(self._failures):
                if failing_route == route and remaining > 0:
                    self._failures[index] = (failing_route, remaining - 1, status)
                    return status
        return None

    def _auth(self, request: web.Request) -> web.Response | None:
        key = request.query.get("api_key")
        if key is None:
            return _json_response("No authorization token provided", 401)
        if "Authorization" in request.headers:
            return _json_response("Use either api_key or a bearer token, not both", 401)
        if key not in self.api_keys:
            return _json_response("Provided apikey is not valid", 401)
        for name in ("company", "car"):
            value = request.match_info.get(name)
            if value is not None and not NAME_RE.match(value):
                return _problem(400, "Bad Request", f"'{value}' does not match '^[0-9a-z_]+$'")
        return None

    @staticmethod
    def _query(request: web.Request) -> tuple[int, bool]:
        since_text = request.query.get("since", "0")
        wait_text = request.query.get("wait", "false")
        try:
            since = int(since_text)
        except ValueError:
            raise _BadRequest(
                f"Wrong type, expected 'integer' for query parameter 'since': {since_text!r}"
            ) from None
        if wait_text.lower() not in {"true", "false"}:
            raise _BadRequest(f"Wrong type, expected 'boolean' for query parameter 'wait': {wait_text!r}")
        return since, wait_text.lower() == "true"

    async def _body(self, request: web.Request, allowed: frozenset[str]) -> list[dict[str, Any]]:
        if request.content_type != "application/json":
            raise _BadRequest(f"Invalid Content-type ({request.content_type}), expected JSON", 415)
        try:
            body = json.loads(await request.text())
        except ValueError as exc:
            raise _BadRequest(f"Request body is not valid JSON: {exc}") from exc
        if not isinstance(body, list):
            raise _BadRequest("Request body must be an array of messages")
        return [_validate_message(message, allowed) for message in body]

    def _stamp(
        self, company: str, car: str, kind: str, messages: list[dict[str, Any]]
    ) -> list[dict[str, Any]] | None:
        """Timestamp and store one POST atomically; None = same-millisecond duplicate (nothing stored)."""
        with self.lock:
            now = self.now_ms()
            keys = [
                (now, index, company, car, device_key(m["device_id"]), m["payload"]["message_type"])
                for index, m in enumerate(messages)
            ]
            if any(key in self.state.keys for key in keys):
                self.duplicate_rejections += 1
                if self._frozen_ms is not None and self._freeze_until_duplicates > 0:
                    self._freeze_until_duplicates -= 1
                    if self._freeze_until_duplicates <= 0:
                        self._frozen_ms = None
                return None
            stamped = [{**m, "timestamp": now} for m in messages]
            self.state.keys.update(keys)
            self.state.messages.extend(_Stored(company, car, kind, m) for m in stamped)
            return stamped

    def _wake(self, company: str, car: str, kind: str, messages: list[dict[str, Any]]) -> None:
        for waiter in self._waiters.pop((company, car, kind), []):
            if not waiter.future.done():
                waiter.future.set_result(messages)

    def _matching(self, company: str, car: str, kinds: set[str], since: int) -> list[dict[str, Any]]:
        with self.lock:
            found = [
                s.message
                for s in self.state.messages
                if s.company == company
                and s.car == car
                and s.message["payload"]["message_type"] in kinds
                and s.message["timestamp"] >= since
            ]
        return sorted(found, key=lambda m: int(m["timestamp"]))  # stable: array order for ties

    def _known(self, company: str, car: str) -> bool:
        with self.lock:
            return (company, car) in self.state.available

    async def _long_poll(self, company: str, car: str, kind: str, since: int) -> list[dict[str, Any]] | None:
        """Wait up to T_api for the next POST of this kind; its messages if the last is >= since."""
        assert self._loop is not None
        waiter = _Waiter(self._loop.create_future())
        self._waiters.setdefault((company, car, kind), []).append(waiter)
        try:
            messages = await asyncio.wait_for(waiter.future, self.t_api_s)
        except TimeoutError:
            waiters = self._waiters.get((company, car, kind), [])
            if waiter in waiters:
                waiters.remove(waiter)
            return None
        if messages and int(messages[-1]["timestamp"]) >= since:
            return messages
        return []

    # ---- endpoints -----------------------------------------------------------------------------

    async def _post_status(self, request: web.Request) -> web.Response:
        company, car = request.match_info["company"], request.match_info["car"]
        try:
            messages = await self._body(request, STATUS_TYPES)
        except _BadRequest as exc:
            return exc.response()
        if not messages:
            return _json_response("0 messages have been sent.")
        stamped = self._stamp(company, car, "status", messages)
        if stamped is None:
            return _json_response(DUPLICATE_TEXT, 400)
        warnings: list[str] = []
        with self.lock:
            devices = self.state.available.setdefault((company, car), {})
            for message in stamped:
                key = device_key(message["device_id"])
                if key not in devices:
                    devices[key] = message["device_id"]
                    before = len(self.state.messages)
                    self.state.messages = [
                        s
                        for s in self.state.messages
                        if not (
                            s.kind == "command"
                            and s.company == company
                            and s.car == car
                            and device_key(s.message["device_id"]) == key
                        )
                    ]
                    if len(self.state.messages) != before:
                        warnings.append(f"Commands of device '{key}' were deleted.")
        self._wake(company, car, "status", stamped)
        count = len(stamped)
        text = f"{count} message has been sent." if count == 1 else f"{count} messages have been sent."
        return _json_response(" ".join([text, *warnings]))

    async def _post_command(self, request: web.Request) -> web.Response:
        company, car = request.match_info["company"], request.match_info["car"]
        try:
            messages = await self._body(request, frozenset({COMMAND_TYPE}))
        except _BadRequest as exc:
            return exc.response()
        with self.lock:
            devices = self.state.available.get((company, car))
            if devices is None:
                return _json_response(f"Car '{car}' of company '{company}' is not available.", 404)
            for message in messages:
                key = device_key(message["device_id"])
                if key not in devices:
                    return _json_response(f"No device with id '{key}' is available.", 404)
        if not messages:
            return _json_response("0 messages have been sent.")
        stamped = self._stamp(company, car, "command", messages)
        if stamped is None:
            return _json_response(DUPLICATE_TEXT, 400)
        self._wake(company, car, "command", stamped)
        count = len(stamped)
        return _json_response(
            f"{count} message has been sent." if count == 1 else f"{count} messages have been sent."
        )

    async def _get_command(self, request: web.Request) -> web.Response:
        company, car = request.match_info["company"], request.match_info["car"]
        try:
            since, wait = self._query(request)
        except _BadRequest as exc:
            return exc.response()
        if self._known(company, car):
            found = self._matching(company, car, {COMMAND_TYPE}, since)
            if found:
                return _json_response(found)
        if wait:
            woken = await self._long_poll(company, car, "command", since)
            if woken is not None:
                return _json_response(woken)
        return _json_response([], 200 if self._known(company, car) else 404)

    async def _get_status(self, request: web.Request) -> web.Response:
        company, car = request.match_info["company"], request.match_info["car"]
        try:
            since, wait = self._query(request)
        except _BadRequest as exc:
            return exc.response()
        found = self._matching(company, car, set(STATUS_TYPES), since)
        if found:
            return _json_response(found)
        if not wait:
            return _json_response([], 200 if self._known(company, car) else 404)
        woken = await self._long_poll(company, car, "status", since)
        if woken is not None:
            return _json_response(woken)
        return _json_response([], 404)

    async def _get_cars(self, request: web.Request) -> web.Response:
        with self.lock:
            cars = [{"company_name": c, "car_name": v} for (c, v) in sorted(self.state.available)]
        return _json_response(cars)

    async def _get_devices(self, request: web.Request) -> web.Response:
        company, car = request.match_info["company"], request.match_info["car"]
        with self.lock:
            devices = self.state.available.get((company, car))
            if devices is None:
                return _json_response(f"Car '{car}' is not available.", 404)
            modules: dict[int, list[dict[str, Any]]] = {}
            for device in devices.values():
                modules.setdefault(int(device["module_id"]), []).append(device)
        wanted = request.query.get("module_id")
        if wanted is not None:
            try:
                module_id = int(wanted)
            except ValueError:
                return _problem(400, "Bad Request", "'module_id' must be an integer")
            if module_id not in modules:
                return _json_response(f"Module '{module_id}' is not available.", 404)
            return _json_response({"module_id": module_id, "device_list": modules[module_id]})
        return _json_response([{"module_id": m, "device_list": d} for m, d in sorted(modules.items())])

    # ---- a small synchronous client for tests ----------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        query: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> tuple[int, Json]:
        """One HTTP request to the double (``path`` below /v2/protocol); (status, decoded JSON body)."""
        return http_request(
            self.base_url, method, path, body, api_key=api_key, query=query, timeout_s=timeout_s
        )

    def post_commands(self, company: str, car: str, messages: list[Json]) -> tuple[int, Json]:
        """POST /command like a careful client: a same-millisecond duplicate 400 is posted again."""
        return self._post_retrying(f"/command/{company}/{car}", messages)

    def post_status(self, company: str, car: str, messages: list[Json]) -> tuple[int, Json]:
        return self._post_retrying(f"/status/{company}/{car}", messages)

    def _post_retrying(self, path: str, messages: list[Json]) -> tuple[int, Json]:
        for _ in range(5):
            status, body = self.request("POST", path, messages)
            if not (status == 400 and body == DUPLICATE_TEXT):
                break
            time.sleep(0.002)
        return status, body


def http_request(
    base_url: str,
    method: str,
    path: str,
    body: Json | None = None,
    *,
    api_key: str | None = DEFAULT_API_KEY,
    query: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, Json]:
    """A plain urllib request against an API base URL; (status, decoded JSON body or None)."""
    params = dict(query or {})
    if api_key is not None:
        params["api_key"] = api_key
    url = base_url + path
    if params:
        url += "?" + "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in params.items())
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), _decode(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), _decode(exc.read())


def _decode(raw: bytes) -> Json:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def message(
    module_id: int,
    device_type: int,
    role: str,
    name: str,
    data: Json,
    *,
    message_type: str = COMMAND_TYPE,
    encoding: str = "JSON",
) -> dict[str, Any]:
    """A Message body element (docs/http-bridge.md §1.2)."""
    return {
        "device_id": {"module_id": module_id, "type": device_type, "role": role, "name": name},
        "payload": {"message_type": message_type, "encoding": encoding, "data": data},
    }


class UnresponsiveHost:
    """A loopback port whose kernel completes TCP handshakes but whose owner never reads or answers."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((HOST, 0))
        self._socket.listen(64)
        self.port = int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}{BASE_PATH}"

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> UnresponsiveHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the Fleet Protocol HTTP API test double.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--t-api", type=float, default=1.0, help="long-poll timeout T_api in seconds")
    args = parser.parse_args(argv)
    double = FleetHttpApiDouble(t_api_s=args.t_api, port=args.port)
    double.start()
    print(double.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        double.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
