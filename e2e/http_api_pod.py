"""The Fleet Protocol HTTP API test double (tests/support/http_api_double.py) as a pod of the e2e run.

The e2e suite mounts this file and the double from one ConfigMap at /double and runs, in the
server image (which has aiohttp):

    python /double/http_api_pod.py serve --port 8080        # the API on 0.0.0.0:8080 until SIGTERM
    python /double/http_api_pod.py command COMPANY CAR DATA # through `kubectl exec`: POST a COMMAND
                                                            # to every available device of CAR

The double's own ``main`` listens on loopback only, which a Service cannot reach; this launcher
binds every address and adds the client side the test needs. Test code, not product code.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_api_double import FleetHttpApiDouble, http_request


def serve(port: int, t_api_s: float) -> int:
    double = FleetHttpApiDouble(t_api_s=t_api_s, port=port, host="0.0.0.0")  # a pod: every address
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    double.start()
    print(f"http_api_pod: serving {double.base_url}", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        double.close()
    print("http_api_pod: stopped", flush=True)
    return 0


def command(base_url: str, company: str, car: str, data: str) -> int:
    """POST one COMMAND per available device of ``car``; prints {"devices", "status", "body"} as JSON."""
    status, devices = http_request(base_url, "GET", f"/available-devices/{company}/{car}")
    result: dict[str, Any] = {"devices_status": status, "devices": devices}
    if status != 200 or not isinstance(devices, list):
        print(json.dumps(result))
        return 1
    messages = [
        {
            "device_id": device,
            "payload": {"message_type": "COMMAND", "encoding": "JSON", "data": json.loads(data)},
        }
        for module in devices
        for device in module.get("device_list", [])
    ]
    status, body = http_request(base_url, "POST", f"/command/{company}/{car}", messages)
    result.update(status=status, body=body, posted=len(messages))
    print(json.dumps(result))
    return 0 if status == 200 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="action", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument("--t-api", type=float, default=2.0, help="long-poll timeout in seconds")
    p_command = sub.add_parser("command")
    p_command.add_argument("company")
    p_command.add_argument("car")
    p_command.add_argument("data", help="JSON of the command's data")
    p_command.add_argument("--url", default="http://127.0.0.1:8080/v2/protocol")
    args = parser.parse_args(argv)
    if args.action == "serve":
        return serve(args.port, args.t_api)
    return command(args.url, args.company, args.car, args.data)


if __name__ == "__main__":
    raise SystemExit(main())
