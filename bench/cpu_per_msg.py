"""Broker CPU per message for a fixed, rate-limited workload, for several source trees.

Throughput at saturation on this shared 2-core machine spreads by tens of percent between
runs; the broker's own CPU time per message at a fixed rate (no backlog, no flow control)
is much steadier, so it is the better way to see what a change costs on the hot path.

    python bench/cpu_per_msg.py TREE [TREE ...]     # trees: `git archive` checkouts

Each run starts the tree's broker (``python -m leveret`` from the tree, in memory; with
``--persistent`` on a temporary data directory, publishing delivery_mode 2 into a durable
queue), runs one ``leveret-perf`` producer and consumer for ``--messages`` at ``--rate``, and
reads the broker's utime+stime from /proc.  Runs alternate between the trees; medians are
printed.  Large bodies: ``--size 1048576 --rate 200 --messages 2000``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(tree: Path, args: argparse.Namespace) -> float:
    port = free_port()
    data = tempfile.TemporaryDirectory(prefix="cpu-per-msg-")
    store = ["--data-dir", data.name] if args.persistent or args.data_dir else ["--in-memory"]
    cmd = [sys.executable, "-m", "leveret", "--port", str(port), *store, "--host", "127.0.0.1", *args.broker_arg]
    cli = (tree / "broker" / "cli.py").read_text()
    if "--http-port" in cli:
        off = "off" if "port_arg" in cli else "0"  # (older trees: 0 turned them off)
        cmd += ["--http-port", off, "--prometheus-port", off]
    env = dict(os.environ, PYTHONPATH=str(tree))
    broker = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{tree}: the broker did not start") from None
                time.sleep(0.05)
        before = cpu_seconds(broker.pid)
        perf = [sys.executable, "-m", "leveret.perf", "--uri", f"amqp://guest:guest@127.0.0.1:{port}/", "--quiet",
                "-x", "1", "-y", "1", "-s", str(args.size), "-C", str(args.messages), "-r", str(args.rate)]
        perf += ["-a"] if args.autoack else ["-q", str(args.prefetch)]
        perf += ["--persistent", "--durable"] if args.persistent else []
        perf += ["--drain-after-publish"] if args.drain else []
        subprocess.run(perf, cwd=HERE, env=dict(os.environ, PYTHONPATH=str(HERE)), check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
        time.sleep(0.3)
        return (cpu_seconds(broker.pid) - before) / args.messages * 1e6
    finally:
        broker.terminate()
        broker.wait(10)
        data.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs="+", type=Path)
    p.add_argument("--messages", type=int, default=400_000)
    p.add_argument("--rate", type=int, default=100_000, help="msg/s (0: open loop, not comparable)")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--autoack", action="store_true")
    p.add_argument("--prefetch", type=int, default=100)
    p.add_argument("--persistent", action="store_true", help="delivery_mode 2 into a durable queue, on a data directory")
    p.add_argument("--data-dir", action="store_true", help="a data directory also without --persistent (paging to overflow logs)")
    p.add_argument("--drain", action="store_true", help="publish everything first, then consume it (a backlog: paging)")
    p.add_argument("--broker-arg", action="append", default=[], help="an extra broker flag (repeatable), e.g. --broker-arg=--memory-budget=8388608")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    runs: dict[Path, list[float]] = {t: [] for t in args.trees}
    for _ in range(args.repeat):
        for t in args.trees:
            runs[t].append(one(t.resolve(), args))
    for t, v in runs.items():
        print(f"{t}: broker CPU {statistics.median(v):.2f} us/msg (runs {', '.join(f'{x:.2f}' for x in v)})")


if __name__ == "__main__":
    main()
