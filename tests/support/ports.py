"""Ports for the listeners tests start (daemons' metrics endpoints, pgbouncer, Chromium).

A port the kernel hands out for port 0 and that is then released can be taken again
before the test binds it: by the other test worker, or as the local port of any
outgoing connection (every Postgres connection takes one from the same ephemeral
range). So tests pick below that range, each xdist worker from a block of its own,
and check each port free by binding it."""

from __future__ import annotations

import itertools
import os
import random

from syncd.demo.server import port_taken

BLOCK = 1500  # ports per worker


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split()[:2])
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw0", "gw1", ...; unset without xdist
    digits = name[2:] if name.startswith("gw") else ""
    return int(digits) if digits.isdigit() else 0


def _block() -> range:
    low, high = _ephemeral_range()
    below = low - BLOCK * (_worker_index() + 1)
    if below >= 1024:
        return range(below, below + BLOCK)
    above = high + 1 + BLOCK * _worker_index()  # a low ephemeral range: the blocks go above it
    if above + BLOCK > 65536:
        raise RuntimeError(f"no room for a block of {BLOCK} test ports outside the ephemeral range {low}-{high}")
    return range(above, above + BLOCK)


_PORTS = _block()
# Each test process starts at its own place in its block: two sessions on one machine
# (a local run beside CI) do not walk the same ports in step.
_OFFSET = random.SystemRandom().randrange(BLOCK)
_NEXT = itertools.islice(itertools.cycle(_PORTS), _OFFSET, None)


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now, outside the ephemeral range and
    outside the other workers' blocks."""
    for _ in range(BLOCK):
        port = next(_NEXT)
        if not port_taken(port):  # in use (or in TIME_WAIT): the next one
            return port
    raise RuntimeError(f"no free port in {_PORTS.start}..{_PORTS.stop - 1}")
