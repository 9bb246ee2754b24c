#!/usr/bin/env python3
"""Delayed-message benchmark: N persistent messages held by a durable ``x-delayed-message``
exchange, due over ``--spread`` seconds, then routed to ``--queues`` queues.

* The broker is ``python -m leveret`` from this tree, with a fresh data directory.
* Setup (pika): the durable delayed exchange (``x-delayed-type`` direct) and ``--queues``
  transient queues bound with the keys ``k0 .. k{n-1}``; message ``i`` goes with key
  ``k{i % n}``, so each message reaches one queue.
* One consumer process (raw AMQP, no-ack) reads every queue and records, per message,
  arrival time minus due time (the due time, in ms since the epoch, is the first 8 bytes
  of the body): *lateness*.
* The publisher (raw AMQP, publisher confirms, at most ``--window`` unconfirmed) gives
  message ``i`` the due time ``start + hold + uniform(0, spread)`` and an ``x-delay`` of
  the time left until then, so all N are held at once when publishing ends (``--hold``
  defaults to an estimate of the publishing time plus 5 s; the run says so if publishing
  took longer).  Publish rate = N / time to the last confirm.
* The broker's RSS is sampled every 0.5 s, and the messages waiting in the queues (the
  management API): lateness that comes with a backlog there is the consumer's, not the
  exchange's; peak RSS is the broker's VmHWM.

    python bench/delayed.py -n 100000
    python bench/delayed.py -n 1000000 --queues 10
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pika
from pamqp import commands
from pamqp import frame as pframe

REPO = Path(__file__).resolve().parent.parent
HEAD = struct.Struct(">BHI")
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = b"\xce"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int, field: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Raw:
    """A blocking raw AMQP connection: handshake, then frames."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.sock.sendall(PROTOCOL_HEADER)
        self.expect(commands.Connection.Start)
        self.send(0, commands.Connection.StartOk(client_properties={"product": "bench-delayed"}, mechanism="PLAIN",
                                                 response="\0guest\0guest", locale="en_US"))
        tune = self.expect(commands.Connection.Tune)
        self.send(0, commands.Connection.TuneOk(channel_max=tune.channel_max, frame_max=131072, heartbeat=0))
        self.send(0, commands.Connection.Open(virtual_host="/"))
        self.expect(commands.Connection.OpenOk)
        self.send(1, commands.Channel.Open())
        self.expect(commands.Channel.OpenOk)

    def send(self, channel: int, method: Any) -> None:
        self.sock.sendall(pframe.marshal(method, channel))

    def expect(self, cls: type) -> Any:
        while True:
            while len(self.buf) < 7 or len(self.buf) < HEAD.unpack_from(self.buf)[2] + 8:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by the broker")
                self.buf += data
            size = HEAD.unpack_from(self.buf)[2] + 8
            _, _, obj = pframe.unmarshal(bytes(self.buf[:size]))
            del self.buf[:size]
            if isinstance(obj, cls):
                return obj
            if isinstance(obj, commands.Connection.Close | commands.Channel.Close):
                raise ConnectionError(f"{obj.name}: {obj.reply_code} {obj.reply_text}")


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return HEAD.pack(ftype, channel, len(payload)) + payload + FRAME_END


def publish_frames(exchange: str, key: str, due_ms: int, delay_ms: int, size: int) -> bytes:
    """basic.publish + a content header (headers {x-delay: long}, delivery_mode 2) + body."""
    ex, rk = exchange.encode(), key.encode()
    method = struct.pack(">HHH", 60, 40, 0) + bytes((len(ex),)) + ex + bytes((len(rk),)) + rk + b"\x00"
    table = b"\x07x-delay" + b"l" + struct.pack(">q", delay_ms)
    props = struct.pack(">I", len(table)) + table + b"\x02"
    header = struct.pack(">HHQH", 60, 0, size, 0x3000) + props
    body = struct.pack(">Q", due_ms) + b"\x00" * (size - 8)
    return frame(1, 1, method) + frame(2, 1, header) + frame(3, 1, body)


def consumer(port: int, queues: list[str], n: int, ready: Any, out: Any, timeout: float) -> None:
    """Consume ``n`` messages from ``queues`` (no-ack); send back their lateness (ms)."""
    raw = Raw(port)
    for q in queues:
        raw.send(1, commands.Basic.Consume(queue=q, no_ack=True))
        raw.expect(commands.Basic.ConsumeOk)
    ready.set()
    sock, buf = raw.sock, raw.buf
    late: list[float] = []
    seconds: dict[int, float] = {}  # due second -> the most late of its messages
    state = 0  # 0: expecting deliver, 1: header, 2: body
    deadline = time.monotonic() + timeout
    sock.settimeout(1.0)
    while len(late) < n and time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            break
        now = time.time() * 1000
        buf += data
        pos = 0
        nb = len(buf)
        while nb - pos >= 7:
            ftype, _, size = HEAD.unpack_from(buf, pos)
            if nb - pos < size + 8:
                break
            if ftype == 3 and state == 2:
                due = struct.unpack_from(">Q", buf, pos + 7)[0]
                late.append(now - due)
                seconds[int(due // 1000)] = max(seconds.get(int(due // 1000), 0.0), now - due)
                state = 0
            elif ftype == 1 and buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
                state = 1
            elif ftype == 2 and state == 1:
                state = 2
            pos += size + 8
        del buf[:pos]
    out.put((late, seconds))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix="leveret-delayed-bench-")
    port = free_port()
    http_port = free_port()
    log = Path(data_dir + ".log")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "leveret", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data_dir,
           "--log-level", "warning", "--http-port", str(http_port), "--prometheus-port", "0",
           "--segment-size", str(args.segment_size)]
    with log.open("wb") as f:
        broker = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if broker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the broker did not start:\n{log.read_text()}") from None
                time.sleep(0.05)
        queues = [f"delayed-bench-{i}" for i in range(args.queues)]
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        ch = conn.channel()
        ch.exchange_declare("delayed-bench", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"})
        for i, q in enumerate(queues):
            ch.queue_declare(q)
            ch.queue_bind(q, "delayed-bench", f"k{i}")
        conn.close()
        idle_rss = proc_status(broker.pid, "VmRSS")
        load_before = os.getloadavg()[0]

        ready, results = mp.Event(), mp.Queue()
        hold = args.hold if args.hold is not None else args.n / args.expected_rate + 5
        wait = hold + args.spread + 60
        cons = mp.Process(target=consumer, args=(port, queues, args.n, ready, results, wait))
        cons.start()
        ready.wait(10)

        samples: list[tuple[float, float]] = []
        backlog = [0, 0]  # the most messages seen waiting in the queues (management API), samples
        stop = threading.Event()
        auth = "Basic " + base64.b64encode(b"guest:guest").decode()

        def sample() -> None:
            while not stop.is_set():
                rss = proc_status(broker.pid, "VmRSS")
                if rss is not None:
                    samples.append((time.monotonic(), rss))
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/queues", headers={"Authorization": auth})
                    with urllib.request.urlopen(req, timeout=5) as r:
                        backlog[0] = max(backlog[0], sum(q.get("messages", 0) for q in json.loads(r.read())))
                    backlog[1] += 1
                except OSError:
                    pass
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        rng = random.Random(args.seed)
        pub = Raw(port)
        pub.send(1, commands.Confirm.Select())
        pub.expect(commands.Confirm.SelectOk)
        sock = pub.sock
        start = time.time()
        cpu0 = cpu_seconds(broker.pid)
        t0 = time.monotonic()
        base_ms = start * 1000 + hold * 1000
        sent = confirmed = 0
        pending = bytearray()
        chunk: list[bytes] = []
        while confirmed < args.n:
            # send while the window allows
            while sent < args.n and sent - confirmed < args.window and len(chunk) < 200:
                due = int(base_ms + rng.random() * args.spread * 1000)
                delay = max(1, due - int(time.time() * 1000))
                chunk.append(publish_frames("delayed-bench", f"k{sent % args.queues}", due, delay, args.size))
                sent += 1
            if chunk:
                sock.sendall(b"".join(chunk))
                chunk = []
            # read confirms
            sock.setblocking(sent - confirmed >= args.window or sent == args.n)
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("the broker closed the publisher")
            pending += data
            pos = 0
            while len(pending) - pos >= 7:
                ftype, _, size = HEAD.unpack_from(pending, pos)
                if len(pending) - pos < size + 8:
                    break
                cls, meth = struct.unpack_from(">HH", pending, pos + 7)
                if (cls, meth) == (60, 80):
                    tag, bits = struct.unpack_from(">QB", pending, pos + 11)
                    confirmed = tag if bits & 1 else max(confirmed, tag)
                elif (cls, meth) == (60, 120):
                    raise RuntimeError("a publish was nacked")
                pos += size + 8
            del pending[:pos]
        publish_s = time.monotonic() - t0
        cpu1 = cpu_seconds(broker.pid)
        held_rss = proc_status(broker.pid, "VmRSS")
        held_at_end = "all" if publish_s < hold else "not all (publishing took longer than --hold)"
        late, seconds = results.get(timeout=wait + 30)
        cpu2 = cpu_seconds(broker.pid)
        cons.join(10)
        stop.set()
        sampler.join()
        peak = proc_status(broker.pid, "VmHWM")
        sock.close()
        return {
            "messages": args.n,
            "load_average_1m_at_start": load_before,
            "queues": args.queues,
            "body_bytes": args.size,
            "spread_s": args.spread,
            "hold_s": round(hold, 1),
            "publish_rate": round(args.n / publish_s),
            "publish_s": round(publish_s, 1),
            "held_when_publishing_ended": held_at_end,
            "rss_idle_mb": round(idle_rss or 0),
            "rss_all_held_mb": round(held_rss or 0),
            "rss_peak_mb": round(peak or 0),
            "received": len(late),
            "broker_cpu_us_per_publish": round((cpu1 - cpu0) / args.n * 1e6, 1),
            "broker_cpu_us_per_release": round((cpu2 - cpu1) / max(1, len(late)) * 1e6, 1),
            "due_rate": round(args.n / args.spread),
            "lateness_ms_p50": round(percentile(late, 0.50), 1),
            "lateness_ms_p99": round(percentile(late, 0.99), 1),
            "lateness_ms_max": round(max(late), 1) if late else None,
            "early": sum(1 for v in late if v < -1),
            "worst_seconds": ", ".join(f"+{t - min(seconds)} s: {v:.0f} ms" for t, v in sorted(
                sorted(seconds.items(), key=lambda kv: -kv[1])[:5])) if seconds else "",
            "most_waiting_in_queues": f"{backlog[0]} ({backlog[1]} samples)",
            "load_average_1m_at_end": os.getloadavg()[0],
        }
    finally:
        broker.terminate()
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(5)
        shutil.rmtree(data_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=100_000, help="delayed messages (default 100000)")
    p.add_argument("--queues", type=int, default=1, help="queues the exchange routes to (default 1)")
    p.add_argument("--spread", type=float, default=60.0, help="seconds the due times spread over (default 60)")
    p.add_argument("--hold", type=float, default=None, help="seconds before the first is due (default: estimated)")
    p.add_argument("--expected-rate", type=float, default=8000.0, help="publish rate assumed for --hold's default")
    p.add_argument("--size", type=int, default=1024, help="body bytes (default 1024; at least 8)")
    p.add_argument("--window", type=int, default=300, help="unconfirmed publishes at most (default 300)")
    p.add_argument("--segment-size", type=int, default=8 << 20, help="the broker's log segment size (default 8 MiB)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    args.size = max(8, args.size)
    r = run(args)
    if args.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
