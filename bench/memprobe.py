#!/usr/bin/env python3
"""What holds the broker's memory: run a broker in this process, load it with
``leveret-perf``, and report where the memory is.

The broker runs on this process's loop (uvloop unless ``--no-uvloop``), with the same
malloc tuning and gc settings as ``leveret`` (``cli.tune_malloc``, ``gc.freeze``).  Each
phase (idle, after the load, ``--settle`` s after it) prints:

* RSS, and ``/proc/self/smaps`` split into the ``[heap]`` (the brk heap: glibc's main
  arena, where small and mid-sized allocations live) and other anonymous mappings
  (pymalloc arenas are 1 MiB mmaps below the mmap threshold? no: pymalloc arenas are
  256 KiB/1 MiB mmaps of their own; glibc's per-thread arenas are 64 MiB mmaps);
* ``sys.getallocatedblocks()`` (live pymalloc blocks), the gc's counts of the commonest
  types, ``queued_bytes``, the queues' ready messages;
* the connections' buffers (pending output parts, transports' write buffers);
* with ``--tracemalloc``, the top allocation sites;
* RSS again after ``malloc_trim(0)`` (what the allocator held that it could give back).

    python bench/memprobe.py -- -x 50 -y 50 -u 50 -s 1024 -a -z 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import os
import sys
import tempfile
import time
import tracemalloc

from leveret.broker.cli import tune_malloc
from leveret.broker.config import Config
from leveret.broker.server import Broker


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def smaps() -> dict[str, float]:
    """Rss (MiB) of the [heap], of other anonymous mappings (by size class), of files."""
    out: dict[str, float] = collections.defaultdict(float)
    name = ""
    size = 0
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                size = hi - lo
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:":
                kb = int(parts[1])
                if name == "[heap]":
                    key = "heap"
                elif name == "":
                    key = "anon>=32M" if size >= 32 << 20 else ("anon 256K-32M" if size >= 256 << 10 else "anon<256K")
                elif name.startswith("["):
                    key = name
                else:
                    key = "files"
                out[key] += kb / 1024
    return dict(out)


def report(broker: Broker, phase: str, top: int, trace: bool) -> None:
    gc.collect()
    print(f"\n== {phase}: RSS {rss_mb():.0f} MB", flush=True)
    print("   smaps:", ", ".join(f"{k} {v:.0f}" for k, v in sorted(smaps().items(), key=lambda kv: -kv[1]) if v >= 1))
    print(f"   allocated blocks {sys.getallocatedblocks():,}; queued_bytes {broker.queued_bytes:,}")
    ready = paged = 0
    for vh in broker.vhosts.values():
        for q in vh.queues.values():
            ready += len(q.backing.messages)
            paged += len(q.backing.tail) - q.backing.tail_start
    print(f"   queues: {sum(len(v.queues) for v in broker.vhosts.values())}, ready in RAM {ready:,}, paged {paged:,}")
    out_parts = out_bytes = tbuf = 0
    for c in broker.connections:
        parts = getattr(c, "out", None) or []
        out_parts += len(parts)
        out_bytes += sum(len(p) for p in parts)
        t = getattr(c, "transport", None)
        if t is not None:
            try:
                tbuf += t.get_write_buffer_size()
            except Exception:  # noqa: BLE001
                pass
    print(f"   connections {len(broker.connections)}: pending output {out_parts} parts {out_bytes:,} B, transport buffers {tbuf:,} B")
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    print("   gc objects:", ", ".join(f"{k} {v:,}" for k, v in counts.most_common(8)))
    if trace and tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        total = sum(s.size for s in snap.statistics("filename"))
        print(f"   tracemalloc: {total / 2**20:.1f} MiB traced")
        for s in snap.statistics("lineno")[:top]:
            print(f"     {s.size / 2**20:8.1f} MiB {s.count:>9,} {s.traceback}")
    before = rss_mb()
    t0 = time.perf_counter()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    ms = (time.perf_counter() - t0) * 1000
    print(f"   malloc_trim(0) ({ms:.1f} ms): RSS {before:.0f} -> {rss_mb():.0f} MB; smaps now:",
          ", ".join(f"{k} {v:.0f}" for k, v in sorted(smaps().items(), key=lambda kv: -kv[1]) if v >= 1), flush=True)


async def run(args: argparse.Namespace, perf_args: list[str]) -> None:
    data = tempfile.mkdtemp(prefix="memprobe-")
    cfg = Config(host="127.0.0.1", port=0, data_dir=None if args.in_memory else data)
    broker = Broker(cfg)
    await broker.start()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    port = broker.port
    report(broker, "idle", args.top, False)
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    peak = 0.0
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "leveret.perf", "--uri", url, "--quiet", *perf_args)
    while proc.returncode is None:
        try:
            await asyncio.wait_for(proc.wait(), 0.5)
        except TimeoutError:
            pass
        peak = max(peak, rss_mb())
    print(f"\nleveret-perf exited {proc.returncode}; peak RSS {peak:.0f} MB")
    report(broker, "after the load", args.top, args.tracemalloc > 0)
    t0 = time.monotonic()
    await asyncio.sleep(args.settle)
    print(f"(slept {time.monotonic() - t0:.1f} s)")
    report(broker, f"{args.settle:.0f} s after", args.top, args.tracemalloc > 0)
    await broker.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracemalloc", type=int, default=0, help="trace allocations with this many frames")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--settle", type=float, default=10.0)
    p.add_argument("--in-memory", action="store_true")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--no-malloc-tuning", action="store_true")
    p.add_argument("perf", nargs=argparse.REMAINDER, help="leveret-perf arguments (after --)")
    args = p.parse_args()
    perf_args = [a for a in args.perf if a != "--"] or ["-x", "50", "-y", "50", "-u", "50", "-s", "1024", "-a", "-z", "10"]
    if not args.no_malloc_tuning:
        tune_malloc()
    factory = None
    if not args.no_uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as r:
        r.run(run(args, perf_args))
    os.sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
