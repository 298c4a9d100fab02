"""The HTTP API test double itself (tests/support/http_api_double.py) against docs/http-bridge.md §1.

The fleet_http module tests trust the double as their oracle, so the semantics
they rely on are pinned here: auth, validation, server timestamps, inclusive
since, long polls and wake-ups, 404s for unknown cars, the same-millisecond
duplicate, the purge on a device's first status and the restart behaviour.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.http_api_double import DUPLICATE_TEXT, FleetHttpApiDouble, http_request, message
from support.waiting import wait_until_blocking

T_API_S = 0.4
CAR = "/command/company_x/car_a"
STATUS = "/status/company_x/car_a"


def status_of(role: str = "dev", module: int = 3, data: Any = None) -> dict[str, Any]:
    return message(module, 1, role, "Dev", {} if data is None else data, message_type="STATUS")


def command_of(data: Any, role: str = "dev", module: int = 3) -> dict[str, Any]:
    return message(module, 1, role, "Dev", data)


@pytest.fixture
def api() -> Iterator[FleetHttpApiDouble]:
    with FleetHttpApiDouble(t_api_s=T_API_S) as double:
        yield double


def test_auth(api: FleetHttpApiDouble) -> None:
    assert api.request("GET", CAR, api_key=None) == (401, "No authorization token provided")
    assert api.request("GET", CAR, api_key="nope") == (401, "Provided apikey is not valid")
    assert http_request(api.base_url, "GET", "/cars")[0] == 200
    assert http_request(api.base_url.replace("/v2/protocol", ""), "GET", "/cars")[0] == 404


def test_query_and_body_validation(api: FleetHttpApiDouble) -> None:
    for query in ({"wait": "1"}, {"wait": ""}, {"since": "1.5"}, {"since": "abc"}):
        assert api.request("GET", CAR, query=query)[0] == 400
    assert api.request("GET", CAR, query={"wait": "TRUE", "since": "-5"})[0] == 404  # unknown car
    for bad in (
        status_of(data=42),
        status_of(data=None) | {"payload": {"message_type": "STATUS", "encoding": "json", "data": {}}},
        status_of(role="Upper"),
        status_of(role=""),
        command_of({}),  # a COMMAND on /status
    ):
        assert api.request("POST", STATUS, [bad])[0] == 400
    assert api.request("POST", "/status/Company_X/car_a", [status_of()])[0] == 400
    assert api.request("POST", STATUS, [])[0] == 200


def test_status_post_stamps_with_server_milliseconds(api: FleetHttpApiDouble) -> None:
    before = int(time.time() * 1000)
    body = [status_of(data={"a": 1}) | {"timestamp": 5}]
    assert api.request("POST", STATUS, body) == (200, "1 message has been sent.")
    status, found = api.request("GET", STATUS, query={"since": str(before)})
    assert status == 200
    assert found[0]["timestamp"] >= before
    assert found[0]["payload"]["data"] == {"a": 1}


def test_same_millisecond_duplicate(api: FleetHttpApiDouble) -> None:
    api.freeze_clock()
    assert api.request("POST", STATUS, [status_of(data={"n": 1})])[0] == 200
    assert api.request("POST", STATUS, [status_of(data={"n": 2})]) == (400, DUPLICATE_TEXT)
    assert api.request("POST", STATUS, [status_of(role="other")])[0] == 200  # another device
    error = status_of() | {"payload": {"message_type": "STATUS_ERROR", "encoding": "JSON", "data": {}}}
    assert api.request("POST", STATUS, [error])[0] == 200  # STATUS and STATUS_ERROR never collide
    api.unfreeze_clock()
    assert api.duplicate_rejections == 1


def test_unknown_car_and_device(api: FleetHttpApiDouble) -> None:
    assert api.request("GET", CAR) == (404, [])
    started = time.monotonic()
    assert api.request("GET", CAR, query={"wait": "true"}) == (404, [])
    assert time.monotonic() - started >= T_API_S - 0.05
    assert api.request("POST", CAR, [command_of("x")])[0] == 404
    api.post_status("company_x", "car_a", [status_of()])
    assert api.request("GET", CAR) == (200, [])
    assert api.request("POST", CAR, [command_of("x", role="other")])[0] == 404
    assert api.request("POST", CAR, [command_of("x")])[0] == 200


def test_inclusive_since_and_order(api: FleetHttpApiDouble) -> None:
    api.post_status("company_x", "car_a", [status_of()])
    api.post_commands("company_x", "car_a", [command_of("a"), command_of("b")])
    api.post_commands("company_x", "car_a", [command_of("c")])
    _, everything = api.request("GET", CAR, query={"since": "0", "wait": "true"})
    assert [m["payload"]["data"] for m in everything] == ["a", "b", "c"]
    last = everything[-1]["timestamp"]
    assert [m["payload"]["data"] for m in api.request("GET", CAR, query={"since": str(last)})[1]] == ["c"]
    assert api.request("GET", CAR, query={"since": str(last + 1)}) == (200, [])


def test_long_poll_wakes_every_waiter_with_that_post_only(api: FleetHttpApiDouble) -> None:
    api.t_api_s = 3.0
    api.post_status("company_x", "car_a", [status_of(), status_of(module=2)])
    since = str(int(time.time() * 1000) + 1)
    results: list[tuple[int, Any]] = []

    def poll() -> None:
        results.append(api.request("GET", CAR, query={"since": since, "wait": "true"}))

    waiters = [threading.Thread(target=poll) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    wait_until_blocking(lambda: api.waiting("command") == 2, what="both polls parked")
    assert api.post_commands("company_x", "car_a", [command_of("first", module=2)])[0] == 200
    assert api.post_commands("company_x", "car_a", [command_of("second")])[0] == 200
    for waiter in waiters:
        waiter.join(5)
    # woken by the first POST (a poll that ran out its T_api would have answered [] instead)
    assert [[m["payload"]["data"] for m in body] for _, body in results] == [["first"], ["first"]]


def test_first_status_purges_the_devices_commands_and_restart(api: FleetHttpApiDouble) -> None:
    api.post_status("company_x", "car_a", [status_of(), status_of(role="other")])
    api.post_commands("company_x", "car_a", [command_of("mine"), command_of("theirs", role="other")])
    api.restart()  # the connected-car cache is empty, the store is kept
    assert api.request("GET", CAR) == (404, [])
    assert api.request("GET", STATUS)[0] == 200  # statuses are still served
    assert api.request("POST", CAR, [command_of("x")])[0] == 404
    api.post_status("company_x", "car_a", [status_of()])  # first status since the restart: purge 'dev'
    assert [m["payload"]["data"] for m in api.request("GET", CAR)[1]] == ["theirs"]
    status, devices = api.request("GET", "/available-devices/company_x/car_a", query={"module_id": "3"})
    assert status == 200
    assert devices["device_list"] == [{"module_id": 3, "type": 1, "role": "dev", "name": "Dev"}]


def test_status_long_poll_and_timeout(api: FleetHttpApiDouble) -> None:
    api.post_status("company_x", "car_a", [status_of()])
    since = str(int(time.time() * 1000) + 1)
    assert api.request("GET", STATUS, query={"since": since, "wait": "true"}) == (404, [])


def test_failure_injection_and_request_log(api: FleetHttpApiDouble) -> None:
    api.fail_next("POST /status", 1, 503)
    assert api.request("POST", STATUS, [status_of()])[0] == 503
    assert api.request("POST", STATUS, [status_of()])[0] == 200
    assert api.count("POST /status") == 2
    assert api.count("POST /status", 503) == 1
