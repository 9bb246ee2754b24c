"""Streams: Leveret against RabbitMQ's stream, in the same run, over AMQP 0-9-1.

Per repetition: publish N messages with confirms into a new stream on each broker (one
publisher, a window of unconfirmed messages), then rounds of 1, 5 and 25 consumers, each
reading the N messages from ``x-stream-offset: first`` (prefetch as credit, multiple
acks), each round on one broker right after the other.  It prints the publish
rate, the read rate per consumer (median over the consumers of a round, and the aggregate),
the broker's CPU per phase (share of a core, and microseconds per delivery) and its RSS as
the stream grows, then each figure as a ratio Leveret / RabbitMQ (medians over
``--repeat`` repetitions).  On a machine shared with other work, a single-threaded broker
gets one runnable thread's share of the CPU while RabbitMQ's schedulers get several: the
CPU per delivery is then the steadier comparison.

The client is ``leveret.perf.client`` (pre-encoded frames, deliveries counted without
decoding), the consumers of a round spread over ``--client-processes`` processes (one
Python process is the limit past ~100k deliveries/s here).  Leveret runs from this tree with
a data directory (fsync as configured: confirms wait for it), RabbitMQ is the one on
127.0.0.1:5672 (a vhost of our own, deleted after; its RSS is the whole node's, other users'
queues included).

    python bench/streams.py                       # 200k messages of 128 B, both brokers
    python bench/streams.py -n 200000 --rounds 1,5,25 --repeat 3
    python bench/streams.py --no-rabbitmq -n 50000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from pamqp import commands

from leveret.perf.client import Connection, open_connection, parse_uri, publish_frames

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def rabbit_pid() -> int | None:
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"beam.smp" in cmd and b"-s\x00rabbit\x00boot" in cmd:  # (the node, not a rabbitmqctl)
            return int(d)
    return None


def http(method: str, url: str, body: Any = None) -> int:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return int(r.status)


async def declare(uri: str, queue: str, segment: int) -> None:
    conn = await open_connection(parse_uri(uri), "streams-bench-declare")
    args = {"x-queue-type": "stream", "x-stream-max-segment-size-bytes": segment}
    await conn.rpc(1, commands.Queue.Declare(queue=queue, durable=True, arguments=args), commands.Queue.DeclareOk)
    conn.transport.close()  # type: ignore[union-attr]


async def publish(uri: str, queue: str, n: int, size: int, window: int, pid: int) -> dict[str, Any]:
    conn = await open_connection(parse_uri(uri), "streams-bench-pub")
    await conn.rpc(1, commands.Confirm.Select(), commands.Confirm.SelectOk)
    prefix, suffix = publish_frames("", queue, size, False, conn.frame_max)
    one = prefix + bytes(8) + suffix
    state = {"confirmed": 0}
    more = asyncio.Event()

    def on_confirm(tag: int, multiple: bool, nack: bool) -> None:
        if nack:
            raise RuntimeError("a publish was nacked")
        if tag > state["confirmed"]:
            state["confirmed"] = tag
        more.set()

    conn.on_confirm = on_confirm
    rss: list[tuple[int, int]] = []  # (messages confirmed, broker RSS KiB)
    step = max(1, n // 10)
    next_sample = step
    cpu0 = cpu_s(pid)
    t0 = time.perf_counter()
    sent = 0
    batch = 100
    while state["confirmed"] < n:
        room = min(window - (sent - state["confirmed"]), n - sent)
        if room >= min(batch, n - sent) and room > 0:
            k = min(room, batch)
            conn.transport.write(one * k)  # type: ignore[union-attr]
            sent += k
            await asyncio.sleep(0)
            continue
        more.clear()
        await more.wait()
        while state["confirmed"] >= next_sample:
            rss.append((next_sample, rss_kib(pid)))
            next_sample += step
    dt = time.perf_counter() - t0
    cpu = cpu_s(pid) - cpu0
    conn.transport.close()  # type: ignore[union-attr]
    return {"rate": n / dt, "seconds": dt, "broker_cpu_s": cpu, "rss_kib": rss}


async def _consume_part(uri: str, queue: str, n: int, consumers: int, prefetch: int, first: int,
                        go_at: float) -> list[float]:
    """One client process's consumers; each one's seconds to read ``n`` messages, timed
    from ``go_at`` (wall clock, the same for every process of the round)."""
    conns: list[Connection] = []
    for i in range(consumers):
        c = await open_connection(parse_uri(uri), f"streams-bench-c{first + i}")
        await c.rpc(1, commands.Basic.Qos(prefetch_count=prefetch), commands.Basic.QosOk)
        c.manual_ack = True
        c.multi_ack = max(1, prefetch // 4)
        c.limit = n
        conns.append(c)
    await asyncio.sleep(max(0.0, go_at - time.time()))
    for c in conns:
        c.send(1, commands.Basic.Consume(queue=queue, arguments={"x-stream-offset": "first"}))
    done: list[float | None] = [None] * consumers
    deadline = go_at + max(120.0, n * consumers / 5000)
    while not all(done):
        await asyncio.sleep(0.02)
        now = time.time()
        for i, c in enumerate(conns):
            if done[i] is None and c.received >= n:
                done[i] = now - go_at
            if c.error is not None:
                raise RuntimeError(f"consumer {first + i}: {c.error}")
        if now > deadline:
            raise RuntimeError(f"consumers stuck at {[c.received for c in conns]} of {n}")
    for c in conns:
        c.transport.close()  # type: ignore[union-attr]
    return [d for d in done if d is not None]


def _consume_worker(job: tuple[str, str, int, int, int, int, float]) -> tuple[list[float], float]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    t = time.process_time()
    times = asyncio.run(_consume_part(*job))
    return times, time.process_time() - t


def consume_round(uri: str, queue: str, n: int, consumers: int, prefetch: int, pid: int, procs: int) -> dict[str, Any]:
    """``consumers`` consumers from ``first``, spread over ``procs`` client processes."""
    procs = max(1, min(procs, consumers))
    shares = [consumers // procs + (1 if i < consumers % procs else 0) for i in range(procs)]
    go_at = time.time() + 1.0 + 0.05 * consumers  # (every connection open before it)
    jobs = [(uri, queue, n, k, prefetch, sum(shares[:i]), go_at) for i, k in enumerate(shares)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        result = pool.map_async(_consume_worker, jobs)
        time.sleep(max(0.0, go_at - time.time()))
        cpu0 = cpu_s(pid)
        rss_max = rss0 = rss_kib(pid)
        while not result.ready():
            result.wait(0.1)
            rss_max = max(rss_max, rss_kib(pid))
        cpu = cpu_s(pid) - cpu0
        parts = result.get()
    times = [t for ts, _ in parts for t in ts]
    client_cpu = sum(c for _, c in parts)
    dt = max(times)
    rates = [n / t for t in times]
    return {
        "consumers": consumers, "client_processes": procs, "median_rate": statistics.median(rates), "min_rate": min(rates),
        "aggregate_rate": n * consumers / dt, "seconds": dt, "broker_cpu_s": cpu, "broker_cpu_share": cpu / dt,
        "broker_cpu_us_per_msg": cpu * 1e6 / (n * consumers), "client_cpu_share": client_cpu / dt,
        "rss_kib_before": rss0, "rss_kib_max": rss_max,
    }


async def delete(uri: str, queue: str) -> None:
    conn = await open_connection(parse_uri(uri), "streams-bench-delete")
    await conn.rpc(1, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)
    conn.transport.close()  # type: ignore[union-attr]


def line(name: str, k: int, n: int, r: dict[str, Any]) -> str:
    return (f"{name}: {k:>2} consumers x {n:,} from first: median {r['median_rate']:,.0f} msg/s per consumer "
            f"(min {r['min_rate']:,.0f}), aggregate {r['aggregate_rate']:,.0f} msg/s, broker CPU "
            f"{r['broker_cpu_share']:.0%} of a core, {r['broker_cpu_us_per_msg']:.1f} us per delivery (clients: "
            f"{r['client_processes']} processes, {r['client_cpu_share']:.0%} of a core), RSS max {r['rss_kib_max'] / 1024:.0f} MiB")


def run_repeat(brokers: list[tuple[str, str, int]], args: argparse.Namespace, rep: int) -> dict[str, Any]:
    """One repetition: a new stream on each broker, published, then each round of
    consumers on one broker right after the other (so both see the same machine)."""
    queue = f"bench-stream-{os.getpid()}-{rep}"
    out: dict[str, Any] = {name: {"rounds": []} for name, _, _ in brokers}
    for name, uri, pid in brokers:
        asyncio.run(declare(uri, queue, args.segment))
        rss_empty = rss_kib(pid)
        pub = asyncio.run(publish(uri, queue, args.n, args.size, args.window, pid))
        out[name].update({"rss_kib_empty": rss_empty, "publish": pub})
        print(f"{name}: publish {pub['rate']:,.0f} msg/s ({pub['seconds']:.1f} s, broker CPU {pub['broker_cpu_s']:.1f} s); "
              f"RSS MiB empty {rss_empty / 1024:.0f}, as it grows: "
              + " ".join(f"{r / 1024:.0f}" for _, r in pub["rss_kib"]), flush=True)
    for k in args.rounds:
        for name, uri, pid in brokers:
            r = consume_round(uri, queue, args.n, k, args.prefetch, pid, args.client_processes)
            out[name]["rounds"].append(r)
            print(line(name, k, args.n, r), flush=True)
    for _, uri, _ in brokers:
        asyncio.run(delete(uri, queue))
    return out


def report(reps: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Medians over the repetitions, of each figure and of each repetition's ratio."""
    med = statistics.median
    names = list(reps[0])
    summary: dict[str, Any] = {}
    print(f"medians over {len(reps)} repetition(s):")
    for name in names:
        pubs = [r[name]["publish"] for r in reps]
        summary[name] = {"publish_rate": med(p["rate"] for p in pubs),
                         "rss_mib_full": med(p["rss_kib"][-1][1] / 1024 for p in pubs), "rounds": {}}
        print(f"  {name}: publish {summary[name]['publish_rate']:,.0f} msg/s, RSS with the stream "
              f"{summary[name]['rss_mib_full']:.0f} MiB")
        for i, k in enumerate(args.rounds):
            rs = [r[name]["rounds"][i] for r in reps]
            m = {key: med(x[key] for x in rs) for key in ("median_rate", "aggregate_rate", "broker_cpu_us_per_msg",
                                                          "broker_cpu_share")}
            summary[name]["rounds"][k] = m
            print(f"  {name}: {k:>2} consumers: {m['median_rate']:,.0f} msg/s per consumer, aggregate "
                  f"{m['aggregate_rate']:,.0f}, {m['broker_cpu_us_per_msg']:.1f} us broker CPU per delivery, "
                  f"{m['broker_cpu_share']:.0%} of a core")
    if len(names) == 2:
        a, b = names
        ratio = {"publish_rate": med(r[a]["publish"]["rate"] / r[b]["publish"]["rate"] for r in reps), "rounds": {}}
        print(f"ratios {a} / {b} (median of each repetition's ratio):")
        print(f"  publish rate {ratio['publish_rate']:.2f}")
        for i, k in enumerate(args.rounds):
            x = {key: med(r[a]["rounds"][i][key] / r[b]["rounds"][i][key] for r in reps)
                 for key in ("median_rate", "aggregate_rate", "broker_cpu_us_per_msg")}
            ratio["rounds"][k] = x
            print(f"  {k:>2} consumers: read rate per consumer {x['median_rate']:.2f}, aggregate {x['aggregate_rate']:.2f}, "
                  f"broker CPU per delivery {x['broker_cpu_us_per_msg']:.2f}")
        ratio["rss"] = med(r[a]["publish"]["rss_kib"][-1][1] / max(1, r[b]["publish"]["rss_kib"][-1][1]) for r in reps)
        print(f"  RSS with the stream {ratio['rss']:.2f}")
        summary["ratios"] = ratio
    return summary


def start_leveret(data_dir: str, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "leveret", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data_dir,
           "--http-port", "off", "--prometheus-port", "off", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"leveret exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("leveret did not listen") from None
            time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200_000, help="messages published, and read by each consumer (default 200000)")
    ap.add_argument("-s", "--size", type=int, default=128, help="body size in bytes (default 128)")
    ap.add_argument("--window", type=int, default=2000, help="unconfirmed messages at most (default 2000)")
    ap.add_argument("--prefetch", type=int, default=1000, help="each consumer's prefetch (credit), default 1000")
    ap.add_argument("--rounds", default="1,5,25", help="consumers per round (default 1,5,25)")
    ap.add_argument("--segment", type=int, default=500_000_000, help="x-stream-max-segment-size-bytes (default 500 MB)")
    ap.add_argument("--client-processes", type=int, default=4,
                    help="client processes the consumers of a round are spread over (default 4)")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions (a new stream each); medians reported")
    ap.add_argument("--no-rabbitmq", action="store_true", help="Leveret only")
    ap.add_argument("--leveret-arg", action="append", default=[], help="extra argument for Leveret's command line")
    ap.add_argument("--rabbitmq-http", default="http://127.0.0.1:15672", help="RabbitMQ's management API")
    ap.add_argument("--json", help="write the figures as JSON to this file")
    args = ap.parse_args()
    args.rounds = [int(x) for x in args.rounds.split(",") if x]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out: dict[str, Any] = {"n": args.n, "size": args.size, "repeat": args.repeat}
    data_dir = tempfile.mkdtemp(prefix="leveret-streams-bench-")
    proc, port = start_leveret(data_dir, args.leveret_arg)
    vhost = f"streams-bench-{os.getpid()}"
    api = args.rabbitmq_http
    brokers = [("leveret", f"amqp://guest:guest@127.0.0.1:{port}/%2F", proc.pid)]
    try:
        if not args.no_rabbitmq:
            http("PUT", f"{api}/api/vhosts/{vhost}")
            http("PUT", f"{api}/api/permissions/{vhost}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
            brokers.append(("rabbitmq", f"amqp://guest:guest@127.0.0.1:5672/{vhost}", rabbit_pid() or 0))
        reps = [run_repeat(brokers, args, i) for i in range(args.repeat)]
        out["repeats"] = reps
        out["summary"] = report(reps, args)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
        if not args.no_rabbitmq:
            http("DELETE", f"{api}/api/vhosts/{vhost}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
