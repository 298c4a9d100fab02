"""An embedded MQTT broker (amqtt) for trying the server without installing one.

Used by ``make run`` when no ``BROKER=host:port`` is given. It is a convenience,
not a production broker: tests and benchmarks use Debian's mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal


def broker_config(host: str, port: int) -> dict[str, object]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(host: str, port: int) -> None:
    from amqtt.broker import Broker  # noqa: PLC0415  (optional dependency, extra "broker")

    broker = Broker(broker_config(host, port))
    await broker.start()
    print(f"embedded MQTT broker (amqtt) listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    with contextlib.suppress(Exception):
        await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
