#!/usr/bin/env python3
"""Bounded soak: hostile peers against a broker, with a normal client alongside.

For ``--minutes`` (default 1), all at once, each in its own thread:

* **storms** -- every ``--storm-every`` seconds, ``--storm-size`` connections opened at
  once, each sending the protocol header; counted as served (connection.start came),
  refused (closed by the broker) or unanswered; held a second, then closed;
* **slowloris** -- ``--slowloris`` peers kept connected: half never send a byte, half send
  the protocol header and then one byte of a connection.start-ok per second; each one the
  broker drops is replaced;
* **huge headers** -- one connection whose ``--channels`` channels each announce a body
  of 2^62 bytes and then send body frames just under frame_max, round robin, at
  ``--attack-rate`` MB/s, forever;
* **near-frame_max frames** -- one connection whose ``--channels`` channels each publish
  4 MiB messages (unroutable) in frames just under frame_max, round robin, at
  ``--attack-rate`` MB/s;
* **a normal client** (pika) -- a publish + basic.get round trip with a publisher confirm
  every second on one connection, and a fresh connection doing the same every 5 seconds.

It starts its own broker (``python -m leveret --in-memory --handshake-timeout 5`` on a
free port, with ``--broker-nofile`` file descriptors so that the storms go past the limit,
and its log in a temporary file) and stops it at the end, unless ``--url`` names a running
one.  It prints a line every 10 s and a summary: connections served and refused, errors,
round-trip latency, and the broker's RSS and descriptors over time (own broker only).

    python bench/soak.py                     # one minute
    python bench/soak.py --minutes 10 --storm-size 2000 --broker-nofile 2048
    python bench/soak.py --url amqp://guest:guest@127.0.0.1:5672/ --storm-size 300
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
from pamqp import commands
from pamqp import frame as pframe

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEAD = struct.Struct(">BHI")


# ----------------------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class Url:
    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, url: str) -> Url:
        u = urlsplit(url)
        path = u.path[1:] if u.path.startswith("/") else u.path
        return cls(
            u.hostname or "127.0.0.1",
            u.port or 5672,
            unquote(u.username or "guest"),
            unquote(u.password or "guest"),
            unquote(path) if path else "/",
        )

    def pika_params(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            self.host,
            self.port,
            self.vhost,
            pika.PlainCredentials(self.user, self.password),
            connection_attempts=1,
            socket_timeout=5,
            blocked_connection_timeout=10,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(nofile: int, extra: list[str]) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``python -m leveret`` from this tree on a free port, with ``nofile`` descriptors."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="leveret-soak-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "leveret", "--host", "127.0.0.1", "--port", str(port), "--http-port", "off", "--prometheus-port", "off"]
    cmd += ["--in-memory", "--log-level", "warning", "--handshake-timeout", "5", *extra]

    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the broker exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port, log
        except OSError:
            if time.monotonic() > deadline:
                stop_broker(proc)
                raise RuntimeError("the broker did not start listening") from None
            time.sleep(0.05)


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets with something to read (or closed), by poll(2): select(2) stops at
    descriptor 1024, and a storm holds more."""
    poller = select.poll()
    by_fd = {}
    for s in socks:
        by_fd[s.fileno()] = s
        poller.register(s, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]


def build_frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return HEAD.pack(ftype, channel, len(payload)) + payload + b"\xce"


def content_header(channel: int, body_size: int) -> bytes:
    return build_frame(2, channel, struct.pack(">HHQH", 60, 0, body_size, 0))


class Raw:
    """A blocking raw AMQP connection: the handshake and a few methods, then raw writes."""

    def __init__(self, url: Url, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((url.host, url.port), timeout=timeout)
        self.buf = b""
        try:
            self.sock.sendall(PROTOCOL_HEADER)
            self.expect(commands.Connection.Start)
            self.send(0, commands.Connection.StartOk(
                client_properties={"product": "leveret-soak", "capabilities": {"connection.blocked": True}},
                mechanism="PLAIN", response=f"\0{url.user}\0{url.password}", locale="en_US"))  # fmt: skip
            tune = self.expect(commands.Connection.Tune)
            self.frame_max = tune.frame_max or 131072
            self.send(0, commands.Connection.TuneOk(channel_max=tune.channel_max, frame_max=self.frame_max, heartbeat=0))
            self.send(0, commands.Connection.Open(virtual_host=url.vhost))
            self.expect(commands.Connection.OpenOk)
        except BaseException:
            self.sock.close()
            raise

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
            _, _, obj = pframe.unmarshal(self.buf[:size])
            self.buf = self.buf[size:]
            if isinstance(obj, cls):
                return obj
            if isinstance(obj, commands.Connection.Close | commands.Channel.Close):
                raise ConnectionError(f"{obj.name}: {obj.reply_code} {obj.reply_text}")

    def open_channels(self, n: int) -> None:
        for ch in range(1, n + 1):
            self.send(ch, commands.Channel.Open())
        for _ in range(n):
            self.expect(commands.Channel.OpenOk)

    def unread(self) -> bytes:
        """Whatever the broker sent since (non-blocking)."""
        out = b""
        while readable([self.sock], 0):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the broker")
            out += data
        return out

    def close(self) -> None:
        self.sock.close()


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    bursts: list[tuple[int, int, int]] = field(default_factory=list)  # served, refused, unanswered
    storm_windows: list[tuple[float, float]] = field(default_factory=list)  # monotonic start, end
    slow_dropped: list[float] = field(default_factory=list)  # lifetimes (s) of dropped slowloris peers
    slow_connect_failed: int = 0
    huge_bytes: int = 0
    huge_reconnects: int = 0
    huge_server_frames: int = 0  # frames the broker sent on the huge-header connection
    frames_bytes: int = 0
    frames_messages: int = 0
    frames_reconnects: int = 0
    frames_blocked: int = 0
    rt_ok: list[float] = field(default_factory=list)  # round-trip latencies (s)
    rt_errors: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what)
    fresh_ok: list[float] = field(default_factory=list)  # connect + round trip + close (s)
    fresh_errors: list[tuple[float, str]] = field(default_factory=list)
    samples: list[tuple[float, float | None, int | None]] = field(default_factory=list)  # t, RSS MB, fds

    def add(self, name: str, value: Any) -> None:
        with self.lock:
            cur = getattr(self, name)
            if isinstance(cur, list):
                cur.append(value)
            else:
                setattr(self, name, cur + value)


def pace(stop: threading.Event, rate_bytes: float, sent: int, t0: float) -> None:
    """Sleep so that ``sent`` bytes since ``t0`` stay at ``rate_bytes`` per second."""
    ahead = sent / rate_bytes - (time.monotonic() - t0)
    if ahead > 0:
        stop.wait(min(ahead, 0.5))


# ----------------------------------------------------------------------------- the attacks


def storms(stop: threading.Event, url: Url, st: Stats, size: int, every: float) -> None:
    while not stop.wait(every / 2):
        started = time.monotonic()
        socks: list[socket.socket] = []
        for _ in range(size):
            try:
                s = socket.create_connection((url.host, url.port), timeout=2)
                s.sendall(PROTOCOL_HEADER)
                socks.append(s)
            except OSError:
                break
        served = refused = 0
        waiting = {s.fileno(): s for s in socks}
        deadline = time.monotonic() + 3
        while waiting and time.monotonic() < deadline:
            ready = readable(list(waiting.values()), 0.1)
            for s in ready:
                try:
                    data = s.recv(7)
                except OSError:
                    data = b""
                if data[:1] == b"\x01":
                    served += 1
                else:
                    refused += 1
                del waiting[s.fileno()]
        st.add("bursts", (served, refused + size - len(socks), len(waiting)))
        stop.wait(1)
        for s in socks:
            s.close()
        st.add("storm_windows", (started, time.monotonic()))
        stop.wait(every / 2 - 1)


def slowloris(stop: threading.Event, url: Url, st: Stats, count: int) -> None:
    start_ok = PROTOCOL_HEADER + pframe.marshal(commands.Connection.StartOk(
        client_properties={"product": "slow", "pad": "x" * 300}, mechanism="PLAIN",
        response=f"\0{url.user}\0{url.password}", locale="en_US"), 0)  # fmt: skip
    peers: dict[int, tuple[socket.socket, float, bool, int]] = {}  # fd -> sock, since, trickles, pos

    def connect(trickle: bool) -> None:
        try:
            s = socket.create_connection((url.host, url.port), timeout=2)
        except OSError:
            st.add("slow_connect_failed", 1)
            return
        s.setblocking(False)
        peers[s.fileno()] = (s, time.monotonic(), trickle, 0)

    for i in range(count):
        connect(i % 2 == 1)
    next_byte = time.monotonic()
    while not stop.is_set():
        ready = readable([p[0] for p in peers.values()], 0.2)
        now = time.monotonic()
        gone = []
        for s in ready:
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                gone.append(s)
        if now >= next_byte:
            next_byte = now + 1.0
            for fd, (s, since, trickle, pos) in list(peers.items()):
                if trickle and s not in gone:
                    try:
                        s.send(start_ok[pos : pos + 1])
                        peers[fd] = (s, since, trickle, min(pos + 1, len(start_ok) - 1))
                    except OSError:
                        gone.append(s)
        for s in gone:
            entry = peers.pop(s.fileno(), None)
            if entry is None:
                continue
            st.add("slow_dropped", now - entry[1])
            s.close()
            connect(entry[2])
        while len(peers) < count and not stop.is_set():  # refill after failed connects
            before = len(peers)
            connect(len(peers) % 2 == 1)
            if len(peers) == before:
                break
    for s, *_ in peers.values():
        s.close()


def huge_headers(stop: threading.Event, url: Url, st: Stats, channels: int, rate: float) -> None:
    t0, sent = time.monotonic(), 0
    while not stop.is_set():
        try:
            c = Raw(url)
        except OSError:
            st.add("huge_reconnects", 1)
            stop.wait(0.5)
            continue
        try:
            c.open_channels(channels)
            for ch in range(1, channels + 1):
                c.send(ch, commands.Basic.Publish(exchange="", routing_key="nowhere"))
                c.sock.sendall(content_header(ch, 1 << 62))
            frames = [build_frame(3, ch, b"h" * (c.frame_max - 8)) for ch in range(1, channels + 1)]
            i = 0
            while not stop.is_set():
                c.sock.sendall(frames[i % channels])
                i += 1
                sent += len(frames[0])
                st.add("huge_bytes", len(frames[0]))
                if i % channels == 0 and c.unread():
                    st.add("huge_server_frames", 1)
                pace(stop, rate, sent, t0)
        except OSError:
            st.add("huge_reconnects", 1)
        finally:
            c.close()


def near_frame_max(stop: threading.Event, url: Url, st: Stats, channels: int, rate: float) -> None:
    body = 4 << 20
    t0, sent = time.monotonic(), 0
    while not stop.is_set():
        try:
            c = Raw(url)
        except OSError:
            st.add("frames_reconnects", 1)
            stop.wait(0.5)
            continue
        try:
            c.open_channels(channels)
            chunk = c.frame_max - 8
            frame = {ch: build_frame(3, ch, b"f" * chunk) for ch in range(1, channels + 1)}
            left = dict.fromkeys(frame, 0)
            while not stop.is_set():
                for ch in frame:
                    if left[ch] == 0:
                        c.send(ch, commands.Basic.Publish(exchange="", routing_key="nowhere"))
                        c.sock.sendall(content_header(ch, body))
                        left[ch] = body
                    n = min(chunk, left[ch])
                    c.sock.sendall(frame[ch] if n == chunk else build_frame(3, ch, b"f" * n))
                    left[ch] -= n
                    sent += n
                    st.add("frames_bytes", n)
                    if left[ch] == 0:
                        st.add("frames_messages", 1)
                if b"\x00\x0a\x00\x3c" in c.unread():  # connection.blocked
                    st.add("frames_blocked", 1)
                pace(stop, rate, sent, t0)
        except OSError:
            st.add("frames_reconnects", 1)
        finally:
            c.close()


def normal_client(stop: threading.Event, url: Url, st: Stats) -> None:
    conn: pika.BlockingConnection | None = None
    tick = 0
    while not stop.wait(1.0):
        tick += 1
        try:
            if conn is None or conn.is_closed:
                conn = pika.BlockingConnection(url.pika_params())
                ch = conn.channel()
                ch.confirm_delivery()
                q = ch.queue_declare("", exclusive=True).method.queue
            t = time.perf_counter()
            body = b"soak %d" % tick
            ch.basic_publish("", q, body)
            got = ch.basic_get(q, auto_ack=True)[2]
            if got != body:
                raise RuntimeError(f"got {got!r}, sent {body!r}")
            st.add("rt_ok", time.perf_counter() - t)
        except Exception as exc:
            st.add("rt_errors", (time.monotonic(), f"{time.strftime('%X')} {type(exc).__name__}: {exc}"))
            close_quietly(conn)
            conn = None
        if tick % 5 == 0:
            t = time.perf_counter()
            fresh = None
            try:
                fresh = pika.BlockingConnection(url.pika_params())
                fch = fresh.channel()
                fq = fch.queue_declare("", exclusive=True).method.queue
                fch.basic_publish("", fq, b"fresh")
                got = fch.basic_get(fq, auto_ack=True)[2]
                if got != b"fresh":
                    raise RuntimeError(f"got {got!r}")
                fresh.close()
                st.add("fresh_ok", time.perf_counter() - t)
            except Exception as exc:
                st.add("fresh_errors", (time.monotonic(), f"{time.strftime('%X')} {type(exc).__name__}: {exc}"))
                close_quietly(fresh)
    close_quietly(conn)


def close_quietly(conn: pika.BlockingConnection | None) -> None:
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except Exception:
        pass


# ----------------------------------------------------------------------------- reporting


def ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.1f}"


def progress(t: float, st: Stats) -> str:
    with st.lock:
        rss, fds = (st.samples[-1][1], st.samples[-1][2]) if st.samples else (None, None)
        served = sum(b[0] for b in st.bursts)
        refused = sum(b[1] for b in st.bursts)
        return (
            f"{t:5.0f} s  RSS {'-' if rss is None else f'{rss:.0f} MB'}  fds {'-' if fds is None else fds}  "
            f"storms {len(st.bursts)} (served {served}, refused {refused})  "
            f"slowloris dropped {len(st.slow_dropped)}  huge {st.huge_bytes >> 20} MB  "
            f"frames {st.frames_bytes >> 20} MB  round trips {len(st.rt_ok)} ok / {len(st.rt_errors)} failed "
            f"(p50 {ms(st.rt_ok, 0.5)} ms, max {ms(st.rt_ok, 1.0)} ms)"
        )


def in_storm(st: Stats, when: float) -> bool:
    """During a storm burst (its connections open, 1 s of slack either side)?"""
    return any(a - 1 <= when <= b + 1 for a, b in st.storm_windows)


def errors(st: Stats, items: list[tuple[float, str]]) -> tuple[str, list[str]]:
    during = sum(1 for when, _ in items if in_storm(st, when))
    lines = [f"    failed: {what}{' (during a storm burst)' if in_storm(st, when) else ''}" for when, what in items[:5]]
    return f"{len(items)} failed ({during} of them during a storm burst)", lines


def summary(st: Stats, args: argparse.Namespace, log: Path | None, elapsed: float) -> str:
    out = [f"\nsummary after {elapsed:.0f} s:"]
    failed, lines = errors(st, st.rt_errors)
    out.append(
        f"  normal client, round trip every second on one connection: {len(st.rt_ok)} ok, {failed}; "
        f"latency p50 {ms(st.rt_ok, 0.5)} ms, p99 {ms(st.rt_ok, 0.99)} ms, max {ms(st.rt_ok, 1.0)} ms"
    )
    out += lines
    failed, lines = errors(st, st.fresh_errors)
    out.append(
        f"  fresh connection + round trip every 5 s: {len(st.fresh_ok)} ok, {failed}; "
        f"p50 {ms(st.fresh_ok, 0.5)} ms, max {ms(st.fresh_ok, 1.0)} ms"
    )
    out += lines
    served = sum(b[0] for b in st.bursts)
    refused = sum(b[1] for b in st.bursts)
    unanswered = sum(b[2] for b in st.bursts)
    out.append(
        f"  storms: {len(st.bursts)} bursts of {args.storm_size} connections: {served} served, "
        f"{refused} refused, {unanswered} unanswered; per burst (served/refused/unanswered): "
        + ", ".join(f"{a}/{b}/{c}" for a, b, c in st.bursts)
    )
    lifetimes = st.slow_dropped
    out.append(
        f"  slowloris: {args.slowloris} peers held; {len(lifetimes)} dropped by the broker, lifetime "
        f"p50 {statistics.median(lifetimes) if lifetimes else 0:.2f} s, max {max(lifetimes, default=0):.2f} s "
        f"(dropped under 1 s, i.e. refused during a storm: {sum(1 for x in lifetimes if x < 1)}); "
        f"connects that failed: {st.slow_connect_failed}"
    )
    out.append(
        f"  huge headers (2^62) on {args.channels} channels: {st.huge_bytes >> 20} MB of near-frame_max body "
        f"frames sent; reads with broker output: {st.huge_server_frames}; reconnects: {st.huge_reconnects}"
    )
    out.append(
        f"  near-frame_max frames on {args.channels} channels: {st.frames_messages} messages of 4 MiB "
        f"({st.frames_bytes >> 20} MB); connection.blocked seen: {st.frames_blocked}; reconnects: {st.frames_reconnects}"
    )
    if st.samples:
        rss = [s[1] for s in st.samples if s[1] is not None]
        fds = [s[2] for s in st.samples if s[2] is not None]
        out.append(
            f"  broker RSS MB over time (every {args.sample_every:g} s): "
            + " ".join(f"{r:.0f}" for r in rss)
            + f"; max {max(rss):.0f}" if rss else "  broker RSS: -"
        )
        if fds:
            out.append(f"  broker descriptors: max {max(fds)} of {args.broker_nofile}")
    if log is not None:
        lines = log.read_text(errors="replace").splitlines()
        storm_errors = [x for x in lines if "cannot accept connections" in x]
        over = [x for x in lines if "accepting connections again" in x]
        other = [x for x in lines if (" ERROR " in x or "Traceback" in x) and "cannot accept connections" not in x]
        out.append(
            f"  broker log: {len(lines)} lines; 'cannot accept connections' errors: {len(storm_errors)} "
            f"(one per burst); 'accepting connections again': {len(over)}; other errors: {len(other)}"
        )
        out += [f"    {x}" for x in (storm_errors[:1] + over[:1] + other[:5])]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--url", help="a running broker (default: start one)")
    p.add_argument("--broker-nofile", type=int, default=1024, help="RLIMIT_NOFILE of the broker started here")
    p.add_argument("--broker-arg", action="append", default=[], help="extra argument for the broker started here")
    p.add_argument("--storm-size", type=int, default=1200)
    p.add_argument("--storm-every", type=float, default=10.0)
    p.add_argument("--slowloris", type=int, default=200)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--attack-rate", type=float, default=8.0, help="MB/s of each body-frame attack")
    p.add_argument("--sample-every", type=float, default=5.0)
    args = p.parse_args(argv)

    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    if args.url:
        url = Url.parse(args.url)
    else:
        proc, port, log = start_broker(args.broker_nofile, args.broker_arg)
        url = Url("127.0.0.1", port, "guest", "guest", "/")
    need = args.storm_size + args.slowloris + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    print(
        f"soak: {args.minutes:g} min against {url.host}:{url.port}"
        + (f" (own broker, pid {proc.pid}, RLIMIT_NOFILE {args.broker_nofile}, log {log})" if proc else ""),
        flush=True,
    )
    st = Stats()
    stop = threading.Event()
    rate = args.attack_rate * 1e6
    jobs: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = [
        ("storms", storms, (args.storm_size, args.storm_every)),
        ("slowloris", slowloris, (args.slowloris,)),
        ("huge-headers", huge_headers, (args.channels, rate)),
        ("near-frame-max", near_frame_max, (args.channels, rate)),
        ("client", normal_client, ()),
    ]
    threads = [threading.Thread(target=f, args=(stop, url, st, *a), name=n, daemon=True) for n, f, a in jobs]
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60
    try:
        for t in threads:
            t.start()
        next_print = t0 + 10
        while time.monotonic() < deadline:
            time.sleep(min(args.sample_every, max(0.0, deadline - time.monotonic())))
            if proc is not None:
                st.add("samples", (time.monotonic() - t0, rss_mb(proc.pid), fd_count(proc.pid)))
                if proc.poll() is not None:
                    print(f"the broker exited with {proc.returncode}", flush=True)
                    break
            if time.monotonic() >= next_print:
                next_print += 10
                print(progress(time.monotonic() - t0, st), flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        alive = [t.name for t in threads if t.is_alive()]
        elapsed = time.monotonic() - t0
        if proc is not None:
            stop_broker(proc)
    print(summary(st, args, log, elapsed), flush=True)
    if alive:
        print(f"threads still running at exit: {alive}", flush=True)
    failed = st.rt_errors or (proc is not None and proc.returncode not in (0, None))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
