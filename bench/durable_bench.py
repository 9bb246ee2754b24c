"""Durability figures: RSS with a large persistent backlog, and recovery time.

    python bench/durable_bench.py --messages 1000000 --size 1024

1. starts Leveret (subprocess) with a fresh data directory;
2. publishes N persistent messages of SIZE bytes to a durable queue with publisher
   confirms (window 1000, raw socket, pre-encoded frames) and reports msg/s;
3. reports the broker's RSS with the whole backlog queued;
4. stops it (SIGTERM), starts it again and reports the time from process start to an
   accepting socket (recovery), the RSS after recovery, and checks the count with a
   passive queue.declare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from pamqp import commands as C
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.body import ContentBody

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start(port: int, data: str) -> tuple[subprocess.Popen[bytes], float]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "leveret", "--host", "127.0.0.1", "--port", str(port), "--http-port", "off", "--prometheus-port", "off", "--data-dir", data, "--log-level", "warning"],
        env=env,
        cwd=ROOT,  # this tree's leveret, not one in the current directory
    )
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return p, time.monotonic() - t0
        except OSError:
            if p.poll() is not None:
                raise RuntimeError("broker exited") from None
            time.sleep(0.005)


class Raw:
    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, *frames: object, ch: int = 0) -> None:
        self.s.sendall(b"".join(pframe.marshal(f, ch) for f in frames))  # type: ignore[arg-type]

    def frames(self) -> list[tuple[int, object]]:
        data = self.s.recv(1 << 20)
        if not data:
            raise ConnectionError("closed")
        self.buf += data
        out = []
        while len(self.buf) >= 8:
            size = struct.unpack_from(">I", self.buf, 3)[0]
            if len(self.buf) < size + 8:
                break
            n, ch, f = pframe.unmarshal(self.buf[: size + 8])
            self.buf = self.buf[n:]
            out.append((ch, f))
        return out

    def wait(self, cls: type) -> object:
        while True:
            for _, f in self.frames():
                if isinstance(f, cls):
                    return f

    def handshake(self) -> None:
        self.s.sendall(b"AMQP\x00\x00\x09\x01")
        self.wait(C.Connection.Start)
        self.send(C.Connection.StartOk(client_properties={}, mechanism="PLAIN", response="\0guest\0guest"))
        tune = self.wait(C.Connection.Tune)
        self.send(C.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0))  # type: ignore[attr-defined]
        self.send(C.Connection.Open(virtual_host="/"))
        self.wait(C.Connection.OpenOk)
        self.send(C.Channel.Open(), ch=1)
        self.wait(C.Channel.OpenOk)


def publish(port: int, n: int, size: int, window: int = 1000) -> float:
    c = Raw(port)
    c.handshake()
    c.send(C.Queue.Declare(queue="bench-durable", durable=True), ch=1)
    c.wait(C.Queue.DeclareOk)
    c.send(C.Confirm.Select(), ch=1)
    c.wait(C.Confirm.SelectOk)
    one = b"".join(
        pframe.marshal(f, 1)
        for f in (
            C.Basic.Publish(exchange="", routing_key="bench-durable"),
            pheader.ContentHeader(0, size, C.Basic.Properties(delivery_mode=2)),
            ContentBody(b"x" * size),
        )
    )
    sent = acked = 0
    t0 = time.monotonic()
    while acked < n:
        if sent < n and sent - acked < window:
            k = min(window // 2 or 1, n - sent, window - (sent - acked))
            c.s.sendall(one * k)
            sent += k
            continue
        for _, f in c.frames():
            if isinstance(f, C.Basic.Ack):
                acked = f.delivery_tag if f.multiple else max(acked, f.delivery_tag)
            elif isinstance(f, C.Basic.Nack):
                raise RuntimeError("nacked")
    dt = time.monotonic() - t0
    c.s.close()
    return n / dt


def count(port: int) -> int:
    c = Raw(port)
    c.handshake()
    c.send(C.Queue.Declare(queue="bench-durable", durable=True, passive=True), ch=1)
    ok = c.wait(C.Queue.DeclareOk)
    c.s.close()
    return ok.message_count  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="leveret-bench-")
    port = free_port()
    p, t_start = start(port, data)
    try:
        print(f"empty start: {t_start * 1000:.0f} ms to listening, RSS {rss_mb(p.pid):.0f} MB", flush=True)
        rate = publish(port, a.messages, a.size)
        print(f"published {a.messages} x {a.size} B persistent with confirms (window 1000): {rate:,.0f} msg/s")
        time.sleep(0.5)
        print(f"RSS with the backlog queued: {rss_mb(p.pid):.0f} MB")
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        p, t_rec = start(port, data)
        print(f"restart with {a.messages} queued: {t_rec:.2f} s from process start to listening")
        print(f"RSS after recovery: {rss_mb(p.pid):.0f} MB")
        print(f"message count after recovery: {count(port)}")
        print(f"disk use: {sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs) / 2**20:.0f} MiB")
    finally:
        p.kill()
        p.wait()
        if not a.keep:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
