"""Worker processes: each runs some producers and/or consumers, one connection each.

The parent and the workers share two arrays (``multiprocessing.RawArray``):

* ``counters`` (int64), :data:`SLOTS` per role: cumulative sent / confirmed / nacked /
  received counts, blocked events and time, and the role's :data:`STATE`.  A role writes its
  own slots after every batch (a write or a read), so the parent reads exact counts whenever
  it wants;
* ``control`` (double): the start time (``time.monotonic()``, 0 until the parent says go),
  the stop flag and the "consumers may start" flag (``--drain-after-publish``).

Latency histograms (and errors) go to the parent through a ``multiprocessing.Queue``, once a
second, at ``go + k`` seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pamqp import commands

from leveret.perf import stats
from leveret.perf.client import ACK_FRAME, Connection, open_connection, parse_uri, publish_frames

# counters: slots of a role
SLOTS = 8
SENT, CONFIRMED, NACKED, RECEIVED, BLOCKED_EVENTS, BLOCKED_NS, BLOCKED_SINCE, STATE = range(SLOTS)
# STATE values
INIT, READY, DONE, FAILED = 0, 1, 2, 3
# control
GO, STOP, CONSUMERS_GO = 0, 1, 2
CONTROL_SIZE = 3

WRITE_TARGET = 128 * 1024  # bytes per transport.write of publishes


@dataclass(frozen=True)
class Options:
    """What every role needs to know (a picklable subset of the command line)."""

    uri: str
    size: int = 16
    confirm: int = 0  # outstanding unconfirmed max, 0: no confirms
    persistent: bool = False
    autoack: bool = False
    qos: int = 0
    multi_ack: int = 0
    rate: float = 0.0
    pmessages: int = 0
    cmessages: int = 0
    delay_consumers: bool = False
    uvloop: bool = True


@dataclass(frozen=True)
class Role:
    kind: str  # "producer" or "consumer"
    slot: int  # index into counters (in SLOTS units)
    number: int  # producer or consumer number
    queue: str  # consumers: the queue; producers: the queue the routing key targets
    exchange: str = ""
    routing_key: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.number}"


@dataclass
class WorkerSpec:
    wid: int
    options: Options
    roles: list[Role] = field(default_factory=list)


class _RoleRunner:
    def __init__(self, role: Role, opts: Options, counters: Any, control: Any) -> None:
        self.role = role
        self.opts = opts
        self.counters = counters
        self.control = control
        self.base = role.slot * SLOTS
        self.conn: Connection | None = None
        self.stopping = False
        self.failed: BaseException | None = None

    def set(self, slot: int, value: int) -> None:
        self.counters[self.base + slot] = value

    def flow_changed(self) -> None:
        c = self.conn
        if c is None:
            return
        self.set(BLOCKED_EVENTS, c.blocked_events)
        self.set(BLOCKED_NS, c.blocked_ns)
        self.set(BLOCKED_SINCE, c.blocked_since)

    async def connect(self) -> Connection:
        uri = parse_uri(self.opts.uri)
        conn = await open_connection(uri, name=f"leveret-perf {self.role.name}")
        conn.on_flow = self.flow_changed
        self.conn = conn
        return conn

    def wake(self) -> None:
        if self.conn is not None:
            self.conn.writable.set()

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class Producer(_RoleRunner):
    async def setup(self) -> None:
        conn = await self.connect()
        if self.opts.confirm:
            await conn.rpc(1, commands.Confirm.Select(), commands.Confirm.SelectOk)
            conn.on_confirm = self.on_confirm
        self.prefix, self.suffix = publish_frames(
            self.role.exchange,
            self.role.routing_key,
            self.opts.size,
            self.opts.persistent,
            conn.frame_max,
        )
        self.stamped = self.opts.size >= 8
        one = len(self.prefix) + len(self.suffix) + (8 if self.stamped else 0)
        self.batch = max(1, WRITE_TARGET // one)
        assert conn.transport is not None
        conn.transport.set_write_buffer_limits(
            high=max(4 * WRITE_TARGET, 2 * one), low=WRITE_TARGET
        )
        self.sent = 0
        self.confirmed = 0
        self.nacked = 0
        self.confirmed_upto = 0  # every tag <= this is confirmed
        self.singles: set[int] = set()  # tags > confirmed_upto confirmed one by one
        self.confirm_event = asyncio.Event()

    def on_confirm(self, tag: int, multiple: bool, nack: bool) -> None:
        if tag <= self.confirmed_upto:
            return
        if multiple:
            below = [t for t in self.singles if t <= tag] if self.singles else ()
            for t in below:
                self.singles.discard(t)
            count = tag - self.confirmed_upto - len(below)
            self.confirmed_upto = tag
        else:
            if tag in self.singles:
                return
            self.singles.add(tag)
            count = 1
        while self.confirmed_upto + 1 in self.singles:
            self.confirmed_upto += 1
            self.singles.discard(self.confirmed_upto)
        if nack:
            self.nacked += count
            self.set(NACKED, self.nacked)
        else:
            self.confirmed += count
            self.set(CONFIRMED, self.confirmed)
        self.confirm_event.set()

    def wake(self) -> None:
        super().wake()
        if hasattr(self, "confirm_event"):
            self.confirm_event.set()

    async def run(self, go: float) -> None:
        conn = self.conn
        assert conn is not None and conn.transport is not None
        transport = conn.transport
        opts = self.opts
        limit = opts.pmessages
        window = opts.confirm
        rate = opts.rate
        prefix, suffix, stamped = self.prefix, self.suffix, self.stamped
        fixed = prefix + suffix
        base_sent = self.base + SENT
        counters = self.counters
        control = self.control
        sleep = asyncio.sleep
        monotonic = time.monotonic
        time_ns = time.time_ns
        while not self.stopping and not control[STOP]:
            if conn.error is not None:
                raise conn.error
            if limit and self.sent >= limit:
                break
            if not conn.writable.is_set():
                await conn.writable.wait()
                continue
            n = self.batch
            if limit:
                n = min(n, limit - self.sent)
            if window:
                room = window - (self.sent - self.confirmed - self.nacked)
                if room <= 0:
                    self.confirm_event.clear()
                    await self.confirm_event.wait()
                    continue
                n = min(n, room)
            if rate:
                elapsed = monotonic() - go
                allowed = int(rate * elapsed) + 1 - self.sent
                if allowed <= 0:
                    await sleep(max(0.0005, (self.sent + 1) / rate - elapsed))
                    continue
                n = min(n, allowed)
            if stamped:
                one = prefix + time_ns().to_bytes(8, "big") + suffix
            else:
                one = fixed
            transport.write(one * n if n > 1 else one)
            self.sent += n
            counters[base_sent] = self.sent
            await sleep(0)
        if self.stopping or control[STOP]:
            return
        # a fixed count: done once it has left the socket buffer and (confirms) is confirmed
        while not self.stopping and conn.error is None:
            if window and self.confirmed + self.nacked < self.sent:
                self.confirm_event.clear()
                try:
                    await asyncio.wait_for(self.confirm_event.wait(), 0.05)
                except TimeoutError:
                    pass
                continue
            if transport.get_write_buffer_size():
                await sleep(0.005)
                continue
            break
        if conn.error is not None:
            raise conn.error
        if not self.stopping:
            self.set(STATE, DONE)


class Consumer(_RoleRunner):
    async def setup(self) -> None:
        conn = await self.connect()
        opts = self.opts
        if opts.qos:
            await conn.rpc(1, commands.Basic.Qos(prefetch_count=opts.qos), commands.Basic.QosOk)
        conn.manual_ack = not opts.autoack
        conn.multi_ack = opts.multi_ack
        conn.limit = opts.cmessages
        conn.on_batch = self.on_batch
        self.consuming = False
        self.idle_tag = -1
        if not opts.delay_consumers:
            await self.consume()

    async def consume(self) -> None:
        assert self.conn is not None
        self.consuming = True
        await self.conn.rpc(
            1,
            commands.Basic.Consume(
                queue=self.role.queue,
                consumer_tag=f"leveret-perf-{self.role.number}",
                no_ack=self.opts.autoack,
            ),
            commands.Basic.ConsumeOk,
        )

    def on_batch(self) -> None:
        conn = self.conn
        assert conn is not None
        self.counters[self.base + RECEIVED] = conn.received
        if self.control[STOP]:
            conn.counting = False
        if conn.limit and conn.received >= conn.limit and self.counters[self.base + STATE] != DONE:
            self.flush_acks()
            self.set(STATE, DONE)
            # done: close, so that what it was sent beyond its count goes back to the queue
            self.stopping = True
            self.closer = asyncio.ensure_future(conn.close())

    def flush_acks(self) -> None:
        """Ack what multi-ack has not acked yet."""
        conn = self.conn
        if conn is None or not conn.unacked or conn.closing or conn.transport is None:
            return
        conn.transport.write(ACK_FRAME.pack(1, 1, 13, 60, 80, conn.last_tag, 1, 0xCE))
        conn.unacked = 0

    def tick(self) -> None:
        """Once a second: ack pending multi-acks if nothing arrived since the last tick."""
        conn = self.conn
        if conn is None:
            return
        if conn.unacked and conn.last_tag == self.idle_tag:
            self.flush_acks()
        self.idle_tag = conn.last_tag

    def take_histogram(self) -> tuple[dict[int, int], int]:
        conn = self.conn
        if conn is None:
            return {}, 0
        hist, top = conn.hist, conn.lat_max
        conn.hist = {}
        conn.lat_max = 0
        return hist, top


async def _worker(spec: WorkerSpec, counters: Any, control: Any, results: Any) -> None:
    opts = spec.options
    runners: list[Producer | Consumer] = [
        Producer(r, opts, counters, control)
        if r.kind == "producer"
        else Consumer(r, opts, counters, control)
        for r in spec.roles
    ]
    producers = [r for r in runners if isinstance(r, Producer)]
    consumers = [r for r in runners if isinstance(r, Consumer)]
    parent = os.getppid()

    def report(final: bool = False) -> None:
        hist: dict[int, int] = {}
        top = 0
        for c in consumers:
            h, m = c.take_histogram()
            stats.merge(hist, h)
            top = max(top, m)
        if hist or final:
            results.put(("hist", spec.wid, hist, top))

    def fail(r: _RoleRunner, exc: BaseException) -> None:
        if r.failed is None:
            r.failed = exc
            r.set(STATE, FAILED)
            results.put(
                ("error", spec.wid, r.role.name, f"{type(exc).__name__}: {exc or 'timed out'}")
            )

    async def setup(r: Producer | Consumer) -> None:
        try:
            await r.setup()
        except Exception as exc:  # noqa: BLE001
            fail(r, exc)
            return
        conn = r.conn
        assert conn is not None

        def on_error() -> None:
            if not r.stopping:
                fail(r, conn.error or ConnectionError("the broker cancelled the consumer"))

        conn.on_error = on_error
        r.set(STATE, READY)

    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(*(setup(r) for r in runners))
        while control[GO] == 0.0:
            if control[STOP] or os.getppid() != parent:
                return
            await asyncio.sleep(0.005)
        go = control[GO]
        if any(r.failed for r in runners):
            while not control[STOP] and os.getppid() == parent:
                await asyncio.sleep(0.02)
            return
        await asyncio.sleep(max(0.0, go - time.monotonic()))

        async def produce(p: Producer) -> None:
            try:
                await p.run(go)
            except Exception as exc:  # noqa: BLE001
                fail(p, exc)

        tasks = [asyncio.ensure_future(produce(p)) for p in producers]
        delayed = [c for c in consumers if not c.consuming]
        tick = 1
        while True:
            if control[STOP] or os.getppid() != parent:
                break
            if delayed and control[CONSUMERS_GO]:
                for c in delayed:
                    try:
                        await c.consume()
                    except Exception as exc:  # noqa: BLE001
                        fail(c, exc)
                delayed = []
            now = time.monotonic()
            if now >= go + tick:
                report()
                for c in consumers:
                    c.tick()
                tick = int(now - go) + 1
            await asyncio.sleep(min(0.02, max(0.0, go + tick - now)))
    finally:
        for r in runners:
            r.stopping = True
            if r.conn is not None:
                r.conn.counting = False
            r.wake()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for c in consumers:
            if c.conn is not None:
                c.on_batch()  # the final count
        report(final=True)
        await asyncio.gather(*(r.close() for r in runners), return_exceptions=True)
        results.put(("bye", spec.wid))


def worker_main(spec: WorkerSpec, counters: Any, control: Any, results: Any) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through `control`
    loop_factory = None
    if spec.options.uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_worker(spec, counters, control, results))


def assign(roles: Sequence[Role], processes: int) -> list[list[Role]]:
    """Split roles over at most ``processes`` workers, producers and consumers apart when
    there are at least two workers (in proportion to their numbers)."""
    prods = [r for r in roles if r.kind == "producer"]
    cons = [r for r in roles if r.kind == "consumer"]
    total = len(prods) + len(cons)
    n = max(1, min(processes, total))
    if not prods or not cons:
        groups: list[list[Role]] = [[] for _ in range(n)]
        for i, r in enumerate(prods or cons):
            groups[i % n].append(r)
        return groups
    if n == 1:
        return [list(roles)]
    pp = max(1, min(n - 1, round(n * len(prods) / total)))
    pgroups: list[list[Role]] = [[] for _ in range(pp)]
    cgroups: list[list[Role]] = [[] for _ in range(n - pp)]
    for i, r in enumerate(prods):
        pgroups[i % pp].append(r)
    for i, r in enumerate(cons):
        cgroups[i % len(cgroups)].append(r)
    return pgroups + cgroups
