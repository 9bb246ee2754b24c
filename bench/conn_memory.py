#!/usr/bin/env python3
"""Memory per idle connection and per channel: the broker's RSS before and after opening
``--connections`` idle connections (full handshake, no channel, heartbeat 0), then
``--channels`` channels on one more connection, divided by their number.  It starts
``python -m leveret --in-memory`` on a free port from this tree (once per event loop:
uvloop, then the asyncio loop with ``--no-uvloop``) and stops it.

    python bench/conn_memory.py
    python bench/conn_memory.py --connections 2000 --channels 2000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from soak import Raw, Url, rss_mb, start_broker, stop_broker


def settle(pid: int, seconds: float = 1.0) -> float:
    """RSS once the broker has handled what was sent (it stops moving)."""
    time.sleep(seconds)
    value = rss_mb(pid)
    assert value is not None
    return value


def measure(loop_args: list[str], n_conns: int, n_channels: int) -> tuple[float, float, float]:
    proc, port, log = start_broker(0, loop_args)
    url = Url("127.0.0.1", port, "guest", "guest", "/")
    conns: list[Raw] = []
    try:
        warm = Raw(url)  # first-use allocations (codec caches, the first connection)
        warm.open_channels(10)
        warm.close()
        base = settle(proc.pid)
        for _ in range(n_conns):
            conns.append(Raw(url))
        with_conns = settle(proc.pid)
        many = Raw(url)
        conns.append(many)
        if n_channels > 2047:
            raise SystemExit("--channels: at most 2047 (the broker's channel_max)")
        many.open_channels(n_channels)
        with_channels = settle(proc.pid)
        return base, (with_conns - base) * 1024 / n_conns, (with_channels - with_conns) * 1024 / n_channels
    finally:
        for c in conns:
            c.close()
        stop_broker(proc)
        log.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--channels", type=int, default=1000)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 64), hard))
    print(f"{'event loop':<10} {'RSS at start':>13} {'per idle connection':>20} {'per channel':>12}")
    for name, loop_args in (("uvloop", []), ("asyncio", ["--no-uvloop"])):
        base, per_conn, per_channel = measure(loop_args, args.connections, args.channels)
        print(f"{name:<10} {base:>10.1f} MB {per_conn:>17.1f} KiB {per_channel:>8.1f} KiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
