#!/usr/bin/env python3
"""Ask one DNS server for the IPv4 addresses of a name (UDP, no recursion, no system resolver).

    dnsq.py SERVER NAME [--port 53] [--timeout 2]

Prints each address on its own line; exit 0 when there is at least one, 1 otherwise (NXDOMAIN, no
answer, a refused query or a timeout), 2 for bad arguments. tools/cluster/up.sh uses it to wait
until the cluster DNS answers; tests can use it to look at the DNS from the host.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys


def build_query(name: str, query_id: int) -> bytes:
    """A standard query for the A records of ``name`` (recursion desired)."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(part)]) + part for part in (p.encode("ascii") for p in name.rstrip(".").split(".")) if part
    )
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def skip_name(packet: bytes, offset: int) -> int:
    """The offset just past the (possibly compressed) domain name starting at ``offset``."""
    while True:
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length


def parse_answer(packet: bytes, query_id: int) -> tuple[int, list[str]]:
    """The response code and the A record addresses of a response to ``query_id``."""
    rid, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", packet[:12])
    if rid != query_id:
        raise ValueError("response to another query")
    offset = 12
    for _ in range(qdcount):
        offset = skip_name(packet, offset) + 4
    addresses: list[str] = []
    for _ in range(ancount):
        offset = skip_name(packet, offset)
        rtype, rclass, _ttl, rdlength = struct.unpack("!HHIH", packet[offset : offset + 10])
        offset += 10
        if rtype == 1 and rclass == 1 and rdlength == 4:
            addresses.append(socket.inet_ntoa(packet[offset : offset + 4]))
        offset += rdlength
    return flags & 0x000F, addresses


def lookup(server: str, name: str, port: int = 53, timeout: float = 2.0) -> list[str]:
    """The IPv4 addresses ``server`` gives for ``name``; empty when it has none."""
    query_id = int.from_bytes(os.urandom(2), "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(build_query(name, query_id), (server, port))
        while True:
            packet, _ = sock.recvfrom(4096)
            try:
                rcode, addresses = parse_answer(packet, query_id)
            except ValueError:
                continue
            return addresses if rcode == 0 else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("server")
    parser.add_argument("name")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    try:
        addresses = lookup(args.server, args.name, args.port, args.timeout)
    except OSError as exc:
        print(f"dnsq: {args.name} @{args.server}: {exc}", file=sys.stderr)
        return 1
    for address in addresses:
        print(address)
    return 0 if addresses else 1


if __name__ == "__main__":
    sys.exit(main())
