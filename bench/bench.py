#!/usr/bin/env python3
"""Throughput and latency benchmark: Leveret against RabbitMQ, in the same run.

Every scenario runs one producer and one consumer, each in its own OS process, talking
raw AMQP 0-9-1 over a plain socket so that the load generator costs little CPU:

* the producer does the handshake with pamqp, encodes basic.publish + content header +
  body once and writes them in batches of ``--batch`` messages;
* the consumer splits frames with ``struct`` and only looks at basic.deliver method
  frames (and at body frames in the latency scenario); manual acks are ``struct``-built
  basic.ack frames, all the acks of one socket read written in one send.

The producer never runs more than ``--max-in-flight`` messages ahead of the consumer
(a shared counter), so queues stay bounded; the latency scenario is rate-limited and the
persistent one keeps at most 1000 unconfirmed publishes.  Brokers alternate between
repetitions; the table gives medians.  ``--baseline-dir`` adds a second Leveret from an older
source tree, for a before/after comparison in the same run.  ``--tls`` makes the Leveret it
starts listen on TLS as well (a certificate made for the run with ``trustme``) and adds
``Leveret-TLS``: the same broker process, the clients connecting with ``ssl`` (TLS 1.3,
the server certificate checked); TLS/TCP = Leveret-TLS / Leveret.  Run ``bench.py --help``
for the options.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import select
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.base import Frame as PamqpMethod

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
# broker names in the results (and the keys of the JSON summary)
LEVERET, BASELINE, RABBITMQ = "Leveret", "Leveret-baseline", "RabbitMQ"
LEVERET_TLS = "Leveret-TLS"  # the same Leveret process, clients on its amqps listener
SLOWDOWN_LIMIT = 0.05  # after/before worse than this is pointed out under the table

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
HEAD = struct.Struct(">BHI")
U64 = struct.Struct(">Q")
TAG_BITS = struct.Struct(">QB")
TIMESTAMP = struct.Struct(">q")
# basic.ack frame: type, channel, size 13, class 60, method 80, delivery tag, multiple, end
ACK_FRAME = struct.Struct(">BHIHHQBB")
DELIVER_PREFIX = b"\x00\x3c\x00\x3c"  # basic.deliver (60, 60)
CONFIRM_ACK_PREFIX = b"\x00\x3c\x00\x50"  # basic.ack (60, 80)
CONFIRM_NACK_PREFIX = b"\x00\x3c\x00\x78"  # basic.nack (60, 120)
CHANNEL = 1
CONSUMER_TAG = "bench"
RECV_SIZE = 1 << 18

WARMUP, MEASURING, STOP = 0, 1, 2  # values of the shared ``phase``
# "would block" on a non-blocking socket, plain or TLS
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    body_size: int
    no_ack: bool
    prefetch: int = 0
    persistent: bool = False  # delivery_mode=2 to a durable queue
    confirm_window: int = 0  # publisher confirms with at most this many unconfirmed
    rate: float = 0.0  # messages/s cap for the producer, 0 = as fast as the in-flight cap allows
    latency: bool = False  # timestamp in the body, consumer records end-to-end latency


def make_scenarios(args: argparse.Namespace) -> dict[str, Scenario]:
    prefetch = args.prefetch
    ack = f"manual ack, prefetch {prefetch}"
    scenarios = [
        Scenario("autoack-16", "16 B, autoack", 16, no_ack=True),
        Scenario("autoack-1k", "1 KiB, autoack", 1024, no_ack=True),
        Scenario("ack-16", f"16 B, {ack}", 16, no_ack=False, prefetch=prefetch),
        Scenario("ack-1k", f"1 KiB, {ack}", 1024, no_ack=False, prefetch=prefetch),
        Scenario(
            "latency-1k",
            f"1 KiB, {args.latency_rate:g} msg/s, autoack",
            1024,
            no_ack=True,
            rate=args.latency_rate,
            latency=True,
        ),
        Scenario(
            "persistent-1k",
            f"1 KiB, persistent, confirm window {args.confirm_window}, {ack}",
            1024,
            no_ack=False,
            prefetch=prefetch,
            persistent=True,
            confirm_window=args.confirm_window,
        ),
    ]
    return {s.name: s for s in scenarios}


@dataclass(frozen=True)
class BrokerURL:
    host: str
    port: int
    user: str
    password: str
    vhost: str
    tls_ca: str | None = None  # TLS: the CA file the server certificate is checked against

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        u = urlsplit(url)
        if u.scheme != "amqp":
            raise ValueError(f"only amqp:// URLs are supported: {url}")
        path = u.path[1:] if u.path.startswith("/") else u.path
        return cls(
            host=u.hostname or "127.0.0.1",
            port=u.port or 5672,
            user=unquote(u.username or "guest"),
            password=unquote(u.password or "guest"),
            vhost=unquote(path) if path else "/",
        )

    def connect(self, timeout: float) -> socket.socket:
        """A TCP connection, with TLS on top when ``tls_ca`` is set."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls_ca is None:
            return sock
        try:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            return ctx.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


@dataclass
class Target:
    name: str
    url: BrokerURL
    pid: int | None  # the broker OS process, for RSS and CPU (None: unknown)


@dataclass
class RunResult:
    broker: str
    scenario: str
    rep: int
    rate: float | None = None  # messages delivered to the consumer per second
    published_rate: float | None = None
    rss_mb: float | None = None  # broker VmRSS right after the measured window
    broker_cpu: float | None = None  # cores used by the broker during the window
    client_cpu: float | None = None  # cores used by producer + consumer
    other_cpu: float | None = None  # cores used by everything else on the machine
    nacks: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p99, p999, max
    error: str | None = None


# ----------------------------------------------------------------------------- raw AMQP


class BrokerClosed(Exception):
    """The broker closed the channel or the connection (reply code and text)."""


class RawConnection:
    """A blocking AMQP connection on a plain socket with channel 1 open.

    Only the handshake and the rare methods go through pamqp; ``buf[pos:]`` holds bytes
    read but not parsed yet, so the benchmark loops can take over the socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0
        self.frame_max = 131072

    @classmethod
    def open(cls, url: BrokerURL, timeout: float = 10.0) -> RawConnection:
        sock = url.connect(timeout)
        conn = cls(sock)
        try:
            sock.sendall(PROTOCOL_HEADER)
            conn.wait_for(commands.Connection.Start, 0)
            conn.send_method(
                commands.Connection.StartOk(
                    client_properties={
                        "product": "leveret-bench",
                        "capabilities": {"basic.nack": True, "publisher_confirms": True},
                    },
                    mechanism="PLAIN",
                    response=f"\0{url.user}\0{url.password}",
                    locale="en_US",
                ),
                0,
            )
            tune = conn.wait_for(commands.Connection.Tune, 0)
            conn.frame_max = tune.frame_max or 131072
            conn.send_method(
                commands.Connection.TuneOk(
                    channel_max=tune.channel_max, frame_max=conn.frame_max, heartbeat=0
                ),
                0,
            )
            conn.send_method(commands.Connection.Open(virtual_host=url.vhost), 0)
            conn.wait_for(commands.Connection.OpenOk, 0)
            conn.rpc(commands.Channel.Open(), commands.Channel.OpenOk)
        except BaseException:
            sock.close()
            raise
        return conn

    def send_method(self, method: PamqpMethod, channel: int = CHANNEL) -> None:
        self.sock.sendall(pframe.marshal(method, channel))

    def read_frame(self) -> tuple[int, bytes]:
        """(frame type, the whole frame) of the next frame, reading as needed."""
        while True:
            buf, pos = self.buf, self.pos
            if len(buf) - pos >= 7:
                if buf.startswith(b"AMQP", pos):
                    raise BrokerClosed(
                        f"broker refused the protocol header: {buf[pos : pos + 8]!r}"
                    )
                ftype, _channel, size = HEAD.unpack_from(buf, pos)
                end = pos + 8 + size
                if end <= len(buf):
                    if buf[end - 1] != FRAME_END:
                        raise BrokerClosed("bad frame end octet from the broker")
                    self.pos = end
                    return ftype, buf[pos:end]
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError("connection closed by the broker")
            self.buf = buf[pos:] + data
            self.pos = 0

    def wait_for(self, cls: type, channel: int = CHANNEL) -> Any:
        """Read frames until a method of type ``cls`` arrives; skip everything else."""
        while True:
            ftype, raw = self.read_frame()
            if ftype != FRAME_METHOD or raw.startswith(DELIVER_PREFIX, 7):
                continue
            method = pframe.unmarshal(raw)[2]
            check_close(self, method)
            if isinstance(method, cls):
                return method

    def rpc(self, method: PamqpMethod, reply: type) -> Any:
        self.send_method(method)
        return self.wait_for(reply)

    def close(self, timeout: float = 3.0) -> None:
        """connection.close and wait (briefly) for close-ok, skipping deliveries."""
        try:
            self.sock.settimeout(timeout)
            self.send_method(commands.Connection.Close(200, "bye", 0, 0), 0)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ftype, raw = self.read_frame()
                if ftype == FRAME_METHOD and raw.startswith(b"\x00\x0a\x00\x33", 7):  # close-ok
                    break
        except (OSError, BrokerClosed):
            pass
        finally:
            self.sock.close()


def check_close(conn: RawConnection, method: PamqpMethod) -> None:
    """Raise BrokerClosed (after answering) if the broker closes the channel or connection."""
    if isinstance(method, commands.Connection.Close):
        conn.send_method(commands.Connection.CloseOk(), 0)
        raise BrokerClosed(f"connection closed: {method.reply_code} {method.reply_text}")
    if isinstance(method, commands.Channel.Close):
        conn.send_method(commands.Channel.CloseOk())
        raise BrokerClosed(f"channel closed: {method.reply_code} {method.reply_text}")
    if isinstance(method, commands.Basic.Cancel):
        raise BrokerClosed(f"consumer cancelled by the broker: {method.consumer_tag}")


def encode_message(queue: str, body: bytes, persistent: bool) -> bytes:
    """basic.publish + content header + one body frame, ready to write."""
    props = commands.Basic.Properties(delivery_mode=2 if persistent else None)
    return b"".join(
        (
            pframe.marshal(commands.Basic.Publish(exchange="", routing_key=queue), CHANNEL),
            pframe.marshal(pheader.ContentHeader(0, len(body), props), CHANNEL),
            pframe.marshal(pbody.ContentBody(body), CHANNEL),
        )
    )


class ConfirmTracker:
    """Publisher confirms: how many publishes the broker has acked or nacked."""

    def __init__(self) -> None:
        self.upto = 0  # every delivery tag <= upto is settled
        self.singles: set[int] = set()  # settled tags above upto
        self.nacks = 0

    @property
    def settled(self) -> int:
        return self.upto + len(self.singles)

    def settle(self, tag: int, multiple: bool) -> None:
        if multiple:
            if tag > self.upto:
                self.upto = tag
                self.singles = {t for t in self.singles if t > tag}
        elif tag > self.upto:
            self.singles.add(tag)
        while self.upto + 1 in self.singles:
            self.upto += 1
            self.singles.discard(self.upto)


# ----------------------------------------------------------------------------- load processes


class Shared:
    """State shared by the orchestrator, the producer and the consumer."""

    def __init__(self, ctx: Any) -> None:
        # RawValue: no lock; aligned 8-byte loads and stores are atomic on our targets
        self.published = ctx.RawValue("q", 0)  # written by the producer only
        self.consumed = ctx.RawValue("q", 0)  # written by the consumer only
        self.phase = ctx.RawValue("i", WARMUP)  # written by the orchestrator only
        self.producer_ready = ctx.Event()
        self.consumer_ready = ctx.Event()
        self.go = ctx.Event()
        self.results = ctx.Queue()


def producer_main(
    url: BrokerURL, queue: str, sc: Scenario, batch: int, max_in_flight: int, shared: Shared
) -> None:
    result: dict[str, Any] = {"role": "producer"}
    try:
        conn = RawConnection.open(url)
        if sc.confirm_window:
            conn.rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)
        shared.producer_ready.set()
        shared.go.wait()
        conn.sock.setblocking(False)
        tracker = ConfirmTracker()
        if sc.rate:
            sent = _publish_paced(conn, queue, sc, max_in_flight, tracker, shared)
        else:
            sent = _publish_batches(conn, queue, sc, batch, max_in_flight, tracker, shared)
        result.update(published=sent, confirmed=tracker.settled, nacks=tracker.nacks)
        conn.close()
    except Exception as exc:
        result["error"] = f"producer: {exc!r}"
    shared.results.put(result)


def _publish_batches(
    conn: RawConnection,
    queue: str,
    sc: Scenario,
    batch: int,
    max_in_flight: int,
    tracker: ConfirmTracker,
    shared: Shared,
) -> int:
    data = encode_message(queue, b"x" * sc.body_size, sc.persistent) * batch
    window = sc.confirm_window
    consumed, published, phase = shared.consumed, shared.published, shared.phase
    sent = 0
    while phase.value != STOP:
        _poll_incoming(conn, tracker)
        if sent - consumed.value + batch > max_in_flight or (
            window and sent - tracker.settled + batch > window
        ):
            select.select([conn.sock], [], [], 0.0005)  # wakes at once when confirms arrive
            continue
        if not _send_all(conn, data, tracker, shared):
            break
        sent += batch
        published.value = sent
    return sent


def _publish_paced(
    conn: RawConnection,
    queue: str,
    sc: Scenario,
    max_in_flight: int,
    tracker: ConfirmTracker,
    shared: Shared,
) -> int:
    """Open-loop publishing at ``sc.rate`` msg/s, the send time in the first 8 body bytes."""
    template = encode_message(queue, b"\0" * sc.body_size, sc.persistent)
    at = len(template) - 1 - sc.body_size  # body frame payload = the body
    before, after = template[:at], template[at + 8 :]
    consumed, published, phase = shared.consumed, shared.published, shared.phase
    pack, now_ns, rate = TIMESTAMP.pack, time.monotonic_ns, sc.rate
    start = time.monotonic()
    sent = 0
    while phase.value != STOP:
        due = min(int((time.monotonic() - start) * rate) - sent, 100)
        due = min(due, max_in_flight - (sent - consumed.value))
        if due <= 0:
            wait = start + (sent + 1) / rate - time.monotonic()
            time.sleep(min(max(wait, 0.00005), 0.001))
            continue
        data = b"".join([before + pack(now_ns()) + after for _ in range(due)])
        if not _send_all(conn, data, tracker, shared):
            break
        sent += due
        published.value = sent
        _poll_incoming(conn, tracker)
    return sent


def _send_all(conn: RawConnection, data: bytes, tracker: ConfirmTracker, shared: Shared) -> bool:
    """Write everything on the non-blocking socket, reading confirms while blocked.

    False if the run ended while the broker was not reading our data (the stream may then
    end mid-message; the connection is closed anyway).
    """
    view = memoryview(data)
    sock = conn.sock
    while view:
        try:
            view = view[sock.send(view) :]
            continue
        except WOULD_BLOCK:
            pass
        readable, _, _ = select.select([sock], [sock], [], 0.1)
        if readable:
            _poll_incoming(conn, tracker)
        if shared.phase.value == STOP:
            return False
    return True


def _poll_incoming(conn: RawConnection, tracker: ConfirmTracker) -> None:
    """Read whatever the broker sent the producer (confirms, errors) without blocking."""
    try:
        data = conn.sock.recv(RECV_SIZE)
    except WOULD_BLOCK:
        return
    if not data:
        raise ConnectionError("connection closed by the broker")
    buf = conn.buf[conn.pos :] + data
    pos, n = 0, len(buf)
    while n - pos >= 7:
        ftype, _channel, size = HEAD.unpack_from(buf, pos)
        end = pos + 8 + size
        if end > n:
            break
        if ftype == FRAME_METHOD:
            if buf.startswith(CONFIRM_ACK_PREFIX, pos + 7):
                tag, bits = TAG_BITS.unpack_from(buf, pos + 11)
                tracker.settle(tag, bool(bits & 1))
            elif buf.startswith(CONFIRM_NACK_PREFIX, pos + 7):
                tag, bits = TAG_BITS.unpack_from(buf, pos + 11)
                before = tracker.settled
                tracker.settle(tag, bool(bits & 1))
                tracker.nacks += tracker.settled - before
            else:
                conn.sock.setblocking(True)
                check_close(conn, pframe.unmarshal(buf[pos:end])[2])
                conn.sock.setblocking(False)
        pos = end
    conn.buf, conn.pos = buf, pos


def consumer_main(url: BrokerURL, queue: str, sc: Scenario, ack_every: int, shared: Shared) -> None:
    result: dict[str, Any] = {"role": "consumer"}
    try:
        conn = RawConnection.open(url)
        if not sc.no_ack:
            conn.rpc(commands.Basic.Qos(prefetch_count=sc.prefetch), commands.Basic.QosOk)
        conn.rpc(
            commands.Basic.Consume(queue=queue, consumer_tag=CONSUMER_TAG, no_ack=sc.no_ack),
            commands.Basic.ConsumeOk,
        )
        shared.consumer_ready.set()
        count, latencies = _consume(conn, sc, ack_every, shared)
        result.update(consumed=count, latencies_ns=latencies)
        conn.close()
    except Exception as exc:
        result["error"] = f"consumer: {exc!r}"
    shared.results.put(result)


def _consume(
    conn: RawConnection, sc: Scenario, ack_every: int, shared: Shared
) -> tuple[int, list[int]]:
    """Count basic.deliver frames until the run stops; ack them if the scenario says so.

    With ``ack_every`` 1 every delivery gets its own basic.ack (multiple=false), as
    RabbitMQ's perf-test does; with N > 1 one multiple-ack per N deliveries.  The acks
    produced by one socket read are written with one send.
    """
    sock = conn.sock
    sock.settimeout(0.1)
    unpack_head, unpack_u64, unpack_ts = HEAD.unpack_from, U64.unpack_from, TIMESTAMP.unpack_from
    pack_ack, now_ns = ACK_FRAME.pack, time.monotonic_ns
    manual, track_latency = not sc.no_ack, sc.latency
    phase, consumed = shared.phase, shared.consumed
    latencies: list[int] = []
    count = pending = 0
    data = conn.buf[conn.pos :]
    while True:
        n, pos = len(data), 0
        acks: list[bytes] = []
        while n - pos >= 7:
            ftype, _channel, size = unpack_head(data, pos)
            end = pos + 8 + size
            if end > n:
                break
            if data[end - 1] != FRAME_END:
                raise BrokerClosed("bad frame end octet from the broker")
            if ftype == FRAME_METHOD:
                if data.startswith(DELIVER_PREFIX, pos + 7):
                    count += 1
                    if manual:
                        # payload: prefix(4) consumer-tag(shortstr) delivery-tag(8) ...
                        tag = unpack_u64(data, pos + 12 + data[pos + 11])[0]
                        pending += 1
                        if pending >= ack_every:
                            acks.append(pack_ack(1, CHANNEL, 13, 60, 80, tag, ack_every > 1, 0xCE))
                            pending = 0
                else:
                    check_close(conn, pframe.unmarshal(data[pos:end])[2])
            elif ftype == FRAME_BODY and track_latency and phase.value == MEASURING:
                latencies.append(now_ns() - unpack_ts(data, pos + 7)[0])
            pos = end
        consumed.value = count
        if acks:
            sock.sendall(b"".join(acks))
        data = data[pos:]
        if phase.value == STOP:
            break
        try:
            chunk = sock.recv(RECV_SIZE)
        except TimeoutError:
            continue
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data = data + chunk if data else chunk
    conn.buf, conn.pos = data, 0
    return count, latencies


# ----------------------------------------------------------------------------- /proc


CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process (all its threads)."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle, summed over all cores (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # minus idle and iowait


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this machine, if we may see it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


def find_broker_pid(url: BrokerURL, fallback_name: str | None = None) -> int | None:
    if url.host not in ("127.0.0.1", "localhost", "::1"):
        return None
    pid = listener_pid(url.port)
    if pid is None and fallback_name:
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "comm").read_text().strip() == fallback_name:
                    return int(entry.name)
            except OSError:
                continue
    return pid


# ----------------------------------------------------------------------------- orchestration


def run_once(target: Target, sc: Scenario, args: argparse.Namespace, rep: int) -> RunResult:
    result = RunResult(target.name, sc.name, rep)
    queue = f"bench.{sc.name}.{uuid.uuid4().hex[:8]}"
    admin = RawConnection.open(target.url)
    ctx = mp.get_context("fork")
    procs: list[Any] = []
    try:
        admin.rpc(
            commands.Queue.Declare(queue=queue, durable=sc.persistent), commands.Queue.DeclareOk
        )
        shared = Shared(ctx)
        consumer = ctx.Process(
            target=consumer_main, args=(target.url, queue, sc, args.ack_every, shared), daemon=True
        )
        producer = ctx.Process(
            target=producer_main,
            args=(target.url, queue, sc, args.batch, args.max_in_flight, shared),
            daemon=True,
        )
        procs = [consumer, producer]
        consumer.start()
        producer.start()
        if not (shared.consumer_ready.wait(15) and shared.producer_ready.wait(15)):
            shared.phase.value = STOP
            result.error = "producer/consumer not ready after 15 s"
            _collect(shared, procs, timeout=2)
            return result
        shared.go.set()
        time.sleep(args.warmup)

        def sample() -> tuple[float, int, int, float | None, float, float]:
            client = sum(cpu_seconds(p.pid) or 0.0 for p in procs)
            return (
                time.monotonic(),
                shared.consumed.value,
                shared.published.value,
                cpu_seconds(target.pid),
                client,
                machine_busy_seconds(),
            )

        shared.phase.value = MEASURING
        t0, c0, p0, b0, k0, m0 = sample()
        time.sleep(args.duration)
        t1, c1, p1, b1, k1, m1 = sample()
        shared.phase.value = STOP
        result.rss_mb = rss_mb(target.pid)
        elapsed = t1 - t0
        result.rate = (c1 - c0) / elapsed
        result.published_rate = (p1 - p0) / elapsed
        result.client_cpu = (k1 - k0) / elapsed
        if b0 is not None and b1 is not None:
            result.broker_cpu = (b1 - b0) / elapsed
        result.other_cpu = max(
            0.0, (m1 - m0) / elapsed - (result.broker_cpu or 0.0) - result.client_cpu
        )
        outcome = _collect(shared, procs, timeout=15)
        errors = [r["error"] for r in outcome.values() if r.get("error")]
        if len(outcome) < 2:
            errors.append("a load process did not report")
        if errors:
            result.error = "; ".join(errors)
        result.nacks = outcome.get("producer", {}).get("nacks", 0)
        samples = sorted(outcome.get("consumer", {}).get("latencies_ns", []))
        if sc.latency and samples:
            result.latency_ms = {
                "p50": percentile(samples, 0.50) / 1e6,
                "p99": percentile(samples, 0.99) / 1e6,
                "p999": percentile(samples, 0.999) / 1e6,
                "max": samples[-1] / 1e6,
                "samples": float(len(samples)),
            }
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(1)
        try:
            admin.rpc(commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)
        except (OSError, BrokerClosed):
            pass
        admin.close()
    return result


def _collect(shared: Shared, procs: list[Any], timeout: float) -> dict[str, dict[str, Any]]:
    """Results of the load processes (read before join: a full queue blocks the child)."""
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(out) < len(procs) and time.monotonic() < deadline:
        try:
            r = shared.results.get(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:  # queue.Empty
            break
        out[r["role"]] = r
    for p in procs:
        p.join(max(0.01, deadline - time.monotonic()))
    return out


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leveret_module(tree: Path | str) -> str:
    """``leveret`` for a tree with the installable layout, ``broker`` for an older one."""
    return "leveret" if (Path(tree) / "leveret" / "__main__.py").exists() else "broker"


def is_leveret_tree(tree: Path | str) -> bool:
    """Whether ``tree`` holds a Leveret source tree that ``python -m`` can run."""
    tree = Path(tree)
    return (tree / "leveret" / "__main__.py").exists() or (tree / "broker" / "__main__.py").exists()


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 (PEM files)."""

    ca: str
    cert: str
    key: str


def make_tls_files(folder: Path) -> TLSFiles:
    try:
        import trustme
    except ImportError:
        raise SystemExit("--tls needs trustme (pip install trustme, or the [test] extra)") from None
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(str(folder / "ca.pem"), str(folder / "server.pem"), str(folder / "server.key"))
    ca.cert_pem.write_to_path(files.ca)
    server.private_key_pem.write_to_path(files.key)
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(files.cert, append=i > 0)
    return files


def start_leveret(
    args: argparse.Namespace,
    tree: Path,
    data_dir: Path,
    name: str = LEVERET,
    tls: TLSFiles | None = None,
) -> tuple[subprocess.Popen[bytes], BrokerURL, Path, BrokerURL | None]:
    """Leveret from source ``tree`` on a free port, its data (if it keeps any) in data_dir;
    with ``tls``, also an amqps listener on another free port (its URL is returned too)."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="leveret-bench-", suffix=".log")[1])
    cmd = [
        args.leveret_python,
        "-m",
        leveret_module(tree),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args.leveret_arg,
    ]
    tls_url = None
    if tls is not None:
        tls_port = free_port()
        cmd += ["--tls-port", str(tls_port), "--tls-cert", tls.cert, "--tls-key", tls.key]
        tls_url = BrokerURL("127.0.0.1", tls_port, "guest", "guest", "/", tls_ca=tls.ca)
    env = dict(os.environ, LEVERET_DATA_DIR=str(data_dir))
    # trees that serve the HTTP API and Prometheus by default: not here (two trees under
    # benchmark at once would fight over the ports)
    help_text = subprocess.run(cmd[:3] + ["--help"], cwd=tree, env=env, capture_output=True, text=True).stdout
    off = "off" if "off turns it off" in help_text else "0"  # (older trees: 0 turned them off)
    for flag in ("--http-port", "--prometheus-port"):
        if flag in help_text and flag not in args.leveret_arg:
            cmd += [flag, off]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                stop_process(proc)
                msg = f"{name} did not listen on {port}:\n{log.read_text()}"
                raise RuntimeError(msg) from None
            time.sleep(0.05)
    return proc, BrokerURL("127.0.0.1", port, "guest", "guest", "/"), log, tls_url


def source_version(path: Path) -> str:
    """Commit of a git checkout (+ "-dirty" if it has uncommitted changes), else the path."""
    try:
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{path} (not a git checkout)"
    return f"{path} at {head}{'-dirty' if dirty else ''}"


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def reachable(url: BrokerURL) -> str | None:
    """None if a connection and channel open work, else why not."""
    try:
        RawConnection.open(url, timeout=5).close()
    except (OSError, BrokerClosed) as exc:  # (ssl.SSLError is an OSError)
        return f"{exc.__class__.__name__}: {exc}"
    return None


# ----------------------------------------------------------------------------- report


def median_of(runs: list[RunResult], get: Callable[[RunResult], float | None]) -> float | None:
    values = [v for v in (get(r) for r in runs if r.error is None) if v is not None]
    return statistics.median(values) if values else None


def spread_of(runs: list[RunResult]) -> float | None:
    """(max - min) / median of the delivered rates, as a fraction."""
    rates = [r.rate for r in runs if r.error is None and r.rate]
    if len(rates) < 2:
        return None
    return (max(rates) - min(rates)) / statistics.median(rates)


def summarize(
    runs: list[RunResult], scenarios: list[Scenario], brokers: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for sc in scenarios:
        row: dict[str, Any] = {"scenario": sc.name, "description": sc.description}
        for b in brokers:
            mine = [r for r in runs if r.scenario == sc.name and r.broker == b]
            row[b] = {
                "runs": len(mine),
                "failed": sum(r.error is not None for r in mine),
                "errors": sorted({r.error for r in mine if r.error}),
                "rate": median_of(mine, lambda r: r.rate),
                "rates": [r.rate for r in mine],
                "spread": spread_of(mine),
                "rss_mb": median_of(mine, lambda r: r.rss_mb),
                "broker_cpu": median_of(mine, lambda r: r.broker_cpu),
                "client_cpu": median_of(mine, lambda r: r.client_cpu),
                "other_cpu": median_of(mine, lambda r: r.other_cpu),
                "nacks": sum(r.nacks for r in mine),
                "p50_ms": median_of(mine, lambda r: r.latency_ms.get("p50")),
                "p99_ms": median_of(mine, lambda r: r.latency_ms.get("p99")),
                "p999_ms": median_of(mine, lambda r: r.latency_ms.get("p999")),
            }
        rows.append(row)
    add_ratios(rows, brokers)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _ratio(a: float | None, b: float | None) -> str:
    return _fmt(ratio(a, b), ".2f")


# (label, numerator broker, denominator broker) of the ratio columns, when both ran
RATIOS = (
    ("after/before", LEVERET, BASELINE),
    ("L/R", LEVERET, RABBITMQ),
    ("TLS/TCP", LEVERET_TLS, LEVERET),
)


def add_ratios(rows: list[dict[str, Any]], brokers: list[str]) -> None:
    """row["ratios"][label] = {rate, p50_ms, p99_ms} ratios of the medians, per RATIOS."""
    for row in rows:
        row["ratios"] = {
            label: {k: ratio(row[a][k], row[b][k]) for k in ("rate", "p50_ms", "p99_ms")}
            for label, a, b in RATIOS
            if a in brokers and b in brokers
        }


def print_report(rows: list[dict[str, Any]], brokers: list[str], args: argparse.Namespace) -> None:
    lev = brokers[0]
    others = brokers[1:]  # Leveret-TLS, Leveret-baseline and/or RabbitMQ, in this order
    # per other broker: (label, numerator, denominator) of its ratio column against Leveret
    pair = {
        other: (label, num, den)
        for label, num, den in RATIOS
        for other in others
        if {num, den} == {lev, other}
    }
    ratio_of = {b: pair[b][0] for b in others}

    def rate_ratio(row: dict[str, Any], b: str, key: str = "rate") -> str:
        _label, num, den = pair[b]
        return _ratio(row[num][key], row[den][key])

    print()
    print(
        f"median of {args.repeat} run(s) x {args.duration:g} s (after {args.warmup:g} s warm-up); "
        f"1 producer + 1 consumer process; in-flight cap {args.max_in_flight}; "
        f"manual ack: {_ack_policy(args.ack_every)}"
    )
    head = ["scenario", "what", f"{lev} msg/s", "spread"]
    for b in others:
        head += [f"{b} msg/s", "spread", ratio_of[b]]
    head += ["RSS MB", "broker CPU", "client CPU"]
    table = [head]
    for row in rows:
        a = row[lev]
        cells = [row["scenario"], row["description"], _fmt(a["rate"], ",.0f"), _pct(a["spread"])]
        for b in others:
            o = row[b]
            cells += [_fmt(o["rate"], ",.0f"), _pct(o["spread"]), rate_ratio(row, b)]
        cells += [
            _joined([row[b]["rss_mb"] for b in brokers], ".0f"),
            _joined([row[b]["broker_cpu"] for b in brokers], ".2f"),
            _joined([row[b]["client_cpu"] for b in brokers], ".2f"),
        ]
        table.append(cells)
    _print_table(table, right_from=2)
    if others:
        legend = [f"RSS / CPU columns: {' / '.join(brokers)}; CPU in cores"]
        legend += [f"{pair[b][0]} = {pair[b][1]} / {pair[b][2]} msg/s" for b in others]
        print(f"({'; '.join(legend)})")
    lat = [r for r in rows if any(r[b]["p50_ms"] is not None for b in brokers)]
    if lat:
        print()
        head = ["latency", f"{lev} p50 ms", "p99 ms", "p99.9 ms"]
        for b in others:
            head += [
                f"{b} p50 ms",
                "p99 ms",
                "p99.9 ms",
                f"{ratio_of[b]} p50",
                f"{ratio_of[b]} p99",
            ]
        table = [head]
        for row in lat:
            a = row[lev]
            cells = [
                row["scenario"],
                _fmt(a["p50_ms"], ".3f"),
                _fmt(a["p99_ms"], ".3f"),
                _fmt(a["p999_ms"], ".3f"),
            ]
            for b in others:
                o = row[b]
                cells += [
                    _fmt(o["p50_ms"], ".3f"),
                    _fmt(o["p99_ms"], ".3f"),
                    _fmt(o["p999_ms"], ".3f"),
                    rate_ratio(row, b, "p50_ms"),
                    rate_ratio(row, b, "p99_ms"),
                ]
            table.append(cells)
        _print_table(table, right_from=1)
    for row in rows:
        for b in brokers:
            if row[b]["failed"]:
                failed, errors = row[b]["failed"], row[b]["errors"]
                print(f"! {row['scenario']} {b}: {failed} failed run(s): {errors}")
            if row[b]["nacks"]:
                print(f"! {row['scenario']} {b}: {row[b]['nacks']} publishes nacked")
    if BASELINE in brokers:
        _print_slowdowns(rows)


def _print_slowdowns(rows: list[dict[str, Any]]) -> None:
    """Point out the medians that are more than SLOWDOWN_LIMIT worse than the baseline."""
    worse = []
    for row in rows:
        r = row["ratios"].get("after/before", {})
        if r.get("rate") is not None and r["rate"] < 1 - SLOWDOWN_LIMIT:
            worse.append(f"{row['scenario']} msg/s x{r['rate']:.2f}")
        for k, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            if r.get(k) is not None and r[k] > 1 + SLOWDOWN_LIMIT:
                worse.append(f"{row['scenario']} {label} latency x{r[k]:.2f}")
    limit = f"{SLOWDOWN_LIMIT * 100:.0f}%"
    if worse:
        print(f"! more than {limit} worse than {BASELINE} (medians): {'; '.join(worse)}")
        print("  (check the spread columns: a difference within the spread may be noise)")
    else:
        print(f"no median more than {limit} worse than {BASELINE}")


def _ack_policy(ack_every: int) -> str:
    if ack_every == 1:
        return "one basic.ack per message"
    return f"one multiple basic.ack per {ack_every} messages"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _joined(values: list[float | None], spec: str) -> str:
    """``a / b / c`` for the brokers of the run ("-" where unknown)."""
    return " / ".join(_fmt(v, spec) for v in values)


def _print_table(table: list[list[str]], right_from: int) -> None:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for n, r in enumerate(table):
        cells = [
            c.rjust(w) if i >= right_from else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark Leveret (and RabbitMQ, alternating) with raw-socket AMQP clients."
    )
    p.add_argument(
        "--leveret-url", help="benchmark an already running Leveret instead of starting one"
    )
    p.add_argument(
        "--leveret-python",
        default=sys.executable,
        help="interpreter that runs Leveret (and --baseline-dir) with -m (default: this one)",
    )
    p.add_argument(
        "--leveret-dir",
        type=Path,
        default=REPO,
        help="source tree to run Leveret from (default: this repo), e.g. a `git archive`; "
        "`python -m leveret`, or `-m broker` for a tree from before the rename",
    )
    p.add_argument(
        "--baseline-dir",
        type=Path,
        metavar="DIR",
        help="also run a second Leveret, `Leveret-baseline`, from this source tree (e.g. a "
        "`git archive` of the commit before a change) in the same repetitions, and show "
        "after/before = Leveret / Leveret-baseline",
    )
    p.add_argument(
        "--leveret-data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="parent of the temporary data directory given to Leveret (LEVERET_DATA_DIR)",
    )
    p.add_argument(
        "--leveret-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the Leveret command line(s), e.g. --leveret-arg=--no-uvloop",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="the Leveret this starts also listens on TLS (a certificate made for the run); "
        "adds Leveret-TLS, the same broker with the clients on TLS, and TLS/TCP = "
        "Leveret-TLS / Leveret (needs trustme)",
    )
    p.add_argument("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL)
    p.add_argument("--no-rabbitmq", action="store_true", help="benchmark Leveret alone")
    p.add_argument(
        "--scenarios",
        default="all",
        help="comma-separated scenario names, or 'all' (see the list in --help epilog)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per scenario and broker")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before that")
    p.add_argument("--batch", type=int, default=100, help="messages per producer write")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=10000,
        help="producer pauses when this many messages are published but not yet delivered",
    )
    p.add_argument("--prefetch", type=int, default=100, help="basic.qos for manual-ack runs")
    p.add_argument(
        "--ack-every",
        type=int,
        default=1,
        help="1: basic.ack each delivery (as perf-test); N: one multiple-ack per N",
    )
    p.add_argument("--confirm-window", type=int, default=1000)
    p.add_argument("--latency-rate", type=float, default=5000.0, help="msg/s, latency scenario")
    p.add_argument("--json", metavar="PATH", help="also write runs and medians as JSON")
    p.epilog = "scenarios: autoack-16 autoack-1k ack-16 ack-1k latency-1k persistent-1k"
    args = p.parse_args(argv)
    if not 1 <= args.ack_every <= max(1, args.prefetch):
        p.error("--ack-every must be between 1 and --prefetch (or acks would never be sent)")
    if args.batch < 1 or args.max_in_flight < args.batch:
        p.error("need 1 <= --batch <= --max-in-flight")
    if args.confirm_window < args.batch:
        p.error("--confirm-window must be at least --batch")
    if args.tls and args.leveret_url:
        p.error("--tls needs a Leveret started by the benchmark (not --leveret-url)")
    for option, tree in (
        ("--leveret-dir", args.leveret_dir),
        ("--baseline-dir", args.baseline_dir),
    ):
        if tree is not None and not is_leveret_tree(tree):
            p.error(f"{option} {tree}: no leveret/__main__.py or broker/__main__.py there")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    all_scenarios = make_scenarios(args)
    names = list(all_scenarios) if args.scenarios == "all" else args.scenarios.split(",")
    unknown = [n for n in names if n not in all_scenarios]
    if unknown:
        print(f"unknown scenario(s) {unknown}; choose from {list(all_scenarios)}", file=sys.stderr)
        return 2
    scenarios = [all_scenarios[n] for n in names]

    started: list[tuple[str, subprocess.Popen[bytes], Path]] = []  # name, process, log
    data_dirs: list[Path] = []
    targets: list[Target] = []
    runs: list[RunResult] = []
    version = "external"
    baseline_version: str | None = None

    tls: TLSFiles | None = None
    tls_target: Target | None = None

    def start(name: str, tree: Path) -> Target:
        nonlocal tls_target
        prefix = "leveret-bench-" if name == LEVERET else "leveret-bench-baseline-"
        data_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=args.leveret_data_dir))
        data_dirs.append(data_dir)
        proc, url, log, tls_url = start_leveret(args, tree, data_dir, name, tls if name == LEVERET else None)
        started.append((name, proc, log))
        if tls_url is not None:
            tls_target = Target(LEVERET_TLS, tls_url, proc.pid)
        return Target(name, url, proc.pid)

    try:
        if args.leveret_url:
            url = BrokerURL.parse(args.leveret_url)
            targets.append(Target(LEVERET, url, find_broker_pid(url)))
        else:
            version = source_version(args.leveret_dir)
            print(f"{LEVERET} from {version} (python -m {leveret_module(args.leveret_dir)})")
            if args.tls:
                tls_dir = Path(tempfile.mkdtemp(prefix="leveret-bench-tls-", dir=args.leveret_data_dir))
                data_dirs.append(tls_dir)
                tls = make_tls_files(tls_dir)
            targets.append(start(LEVERET, args.leveret_dir))
        why = reachable(targets[0].url)
        if why:
            print(f"Leveret is not reachable: {why}", file=sys.stderr)
            return 1
        if tls_target is not None:
            why = reachable(tls_target.url)
            if why:
                print(f"{LEVERET_TLS} is not reachable: {why}", file=sys.stderr)
                return 1
            targets.append(tls_target)
        if args.baseline_dir is not None:
            baseline_version = source_version(args.baseline_dir)
            module = leveret_module(args.baseline_dir)
            print(f"{BASELINE} from {baseline_version} (python -m {module})")
            targets.append(start(BASELINE, args.baseline_dir))
            why = reachable(targets[-1].url)
            if why:
                print(f"{BASELINE} is not reachable: {why}", file=sys.stderr)
                return 1
        if not args.no_rabbitmq:
            rurl = BrokerURL.parse(args.rabbitmq_url)
            why = reachable(rurl)
            if why:
                print(f"note: RabbitMQ at {args.rabbitmq_url} skipped ({why})")
            else:
                targets.append(Target(RABBITMQ, rurl, find_broker_pid(rurl, "beam.smp")))
        for t in targets:
            print(
                f"{t.name}: {t.url.host}:{t.url.port} pid {t.pid} "
                f"idle RSS {_fmt(rss_mb(t.pid), '.0f')} MB"
            )
        print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)

        width = max(len(t.name) for t in targets)
        for rep in range(args.repeat):
            # rotate the order by one each repetition (with two brokers: reversed)
            shift = rep % len(targets)
            order = targets[shift:] + targets[:shift]
            for sc in scenarios:
                for t in order:
                    r = run_once(t, sc, args, rep)
                    runs.append(r)
                    print(_progress(r, width), flush=True)
                    time.sleep(0.5)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        for name, proc, log in started:
            stop_process(proc)
            if proc.returncode not in (0, -signal.SIGTERM):
                print(f"{name} exited with {proc.returncode}, log: {log}", file=sys.stderr)
            else:
                log.unlink(missing_ok=True)
        for data_dir in data_dirs:
            shutil.rmtree(data_dir, ignore_errors=True)

    brokers = [t.name for t in targets]
    rows = summarize(runs, scenarios, brokers)
    print_report(rows, brokers, args)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        doc = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "leveret_source": version,
            "baseline_source": baseline_version,
            "brokers": {
                t.name: {"url": asdict(t.url) | {"password": "***"}, "pid": t.pid} for t in targets
            },
            "summary": rows,
            "runs": [asdict(r) for r in runs],
        }
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(r.error is None for r in runs) else 1


def _progress(r: RunResult, width: int = 8) -> str:
    if r.error:
        return f"  rep {r.rep + 1} {r.scenario:14} {r.broker:{width}} ERROR {r.error}"
    lat = ""
    if r.latency_ms:
        lat = f" p50 {r.latency_ms['p50']:.3f} ms p99 {r.latency_ms['p99']:.3f} ms"
    return (
        f"  rep {r.rep + 1} {r.scenario:14} {r.broker:{width}} {r.rate or 0:>10,.0f} msg/s "
        f"(published {r.published_rate or 0:,.0f}/s){lat}  RSS {_fmt(r.rss_mb, '.0f')} MB  "
        f"CPU broker {_fmt(r.broker_cpu, '.2f')} clients {_fmt(r.client_cpu, '.2f')} "
        f"other {_fmt(r.other_cpu, '.2f')}"
    )


if __name__ == "__main__":
    sys.exit(main())
