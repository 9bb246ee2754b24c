"""QueueLog benchmark: python bench/log_bench.py [N] [--size 1024] [--dir DIR]

Appends N records, reads and acks a sample, then recovers the log in fresh subprocesses
(warm page cache, then cold after posix_fadvise(DONTNEED)) and reports time and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from leveret.storage.log import QueueLog


def _rss_mib(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident set size; ru_maxrss is no good here as it
    keeps the high-water mark of the forked parent across exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recover_child(directory: str, callback: bool) -> None:
    base = _rss_mib()
    q = QueueLog(directory)
    n = 0

    def on_record(pos: int, view: memoryview) -> None:  # what a broker does: count, peek
        nonlocal n
        n += view[0] >= 0

    t, cpu = time.perf_counter(), time.process_time()
    out = q.recover(on_record if callback else None)
    dt, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"  recover{' + callback' if callback else ''}: {len(out):,} live records in "
          f"{dt:.2f} s wall, {cpu:.2f} s CPU ({len(out) / dt / 1e6:.2f} M rec/s); "
          f"RSS before {base:.0f} MiB, after {_rss_mib():.0f} MiB, "
          f"peak {_rss_mib('VmHWM'):.0f} MiB")
    q.close()


def drop_cache(directory: str) -> None:
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("n", type=int, nargs="?", default=1_000_000)
    ap.add_argument("--size", type=int, default=1024, help="payload bytes")
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    ap.add_argument("--recover-child", help=argparse.SUPPRESS)
    ap.add_argument("--callback", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.recover_child:
        recover_child(args.recover_child, args.callback)
        return

    work = tempfile.mkdtemp(dir=args.dir, prefix="bench-log-")
    qdir = os.path.join(work, "q")
    try:
        payload = os.urandom(args.size)
        q = QueueLog(qdir)
        q.recover()
        t = time.perf_counter()
        positions = [q.append(payload) for _ in range(args.n)]
        q.flush()
        dt = time.perf_counter() - t
        print(f"append: {args.n:,} x {args.size} B in {dt:.2f} s = {args.n / dt:,.0f} rec/s "
              f"({args.n * args.size / dt / 2**20:.0f} MiB/s, flush only)")
        t = time.perf_counter()
        job = q.sync_job()
        if job:
            job()
        print(f"fsync of everything: {time.perf_counter() - t:.2f} s")

        # group commit as the broker does it: a sync job every 1000 appends
        m = min(args.n, 200_000)
        t = time.perf_counter()
        extra = []
        for i in range(m):
            extra.append(q.append(payload))
            if i % 1000 == 999:
                job = q.sync_job()
                if job:
                    job()
        print(f"append + sync job every 1000: {m / (time.perf_counter() - t):,.0f} rec/s")

        k = min(args.n, 200_000)
        t = time.perf_counter()
        for p in positions[:k]:
            q.read(p)
        print(f"read (pread + crc, page cache): {k / (time.perf_counter() - t):,.0f} rec/s")
        t = time.perf_counter()
        for p in extra:
            q.ack(p)
        q.flush()
        print(f"ack (FIFO, segments deleted as they empty): "
              f"{m / (time.perf_counter() - t):,.0f} rec/s")
        q.close()
        del positions, extra
        disk = sum(os.path.getsize(os.path.join(qdir, f)) for f in os.listdir(qdir))
        print(f"recovery of {args.n:,} live records ({disk / 2**20:.0f} MiB on disk), "
              f"fresh process each:")
        child = [sys.executable, __file__, "--recover-child", qdir]
        subprocess.run(child, check=True)
        subprocess.run(child + ["--callback"], check=True)
        drop_cache(qdir)
        print("  (cold page cache:)")
        subprocess.run(child, check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
