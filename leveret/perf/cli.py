"""``leveret-perf``: an open-loop AMQP 0-9-1 load generator (like RabbitMQ's PerfTest).

The parent process declares the exchange and queues, starts worker processes (see
``worker.py``) that run the producers and consumers, prints one line a second, ends the run
(``--time``, ``--pmessages``/``--cmessages``, drained queues, Ctrl-C), prints and writes the
summary, and deletes what it declared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pamqp import commands

from leveret.perf import stats
from leveret.perf.client import AmqpError, AmqpUri, Connection, open_connection, parse_uri
from leveret.perf.worker import (
    BLOCKED_EVENTS,
    BLOCKED_NS,
    BLOCKED_SINCE,
    CONFIRMED,
    CONSUMERS_GO,
    CONTROL_SIZE,
    DONE,
    FAILED,
    GO,
    NACKED,
    READY,
    RECEIVED,
    SENT,
    SLOTS,
    STATE,
    STOP,
    Options,
    Role,
    WorkerSpec,
    assign,
    worker_main,
)

DEFAULT_URI = "amqp://guest:guest@127.0.0.1:5672/%2F"
EXIT_OK, EXIT_ERROR, EXIT_SETUP = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="leveret-perf",
        description="Open-loop AMQP 0-9-1 load generator: producers publish as fast as the "
        "socket (TCP backpressure) and connection.blocked allow, or at --rate; consumers "
        "measure end-to-end latency from a timestamp in the body's first 8 bytes.",
        epilog="Examples:  leveret-perf -x 1 -y 1 -q 100 -s 1024 -z 10\n"
        "           leveret-perf -C 1000000 --drain-after-publish --json out.json\n"
        "           leveret-perf -x 4 -y 4 -u 4 -t fanout -c 1000 --persistent --durable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a(
        "--uri",
        default=DEFAULT_URI,
        help="broker URI (default " + DEFAULT_URI.replace("%", "%%") + ")",
    )
    a("-x", "--producers", type=int, default=1, help="number of producers (default 1)")
    a("-y", "--consumers", type=int, default=1, help="number of consumers (default 1)")
    a(
        "-u",
        "--queues",
        type=int,
        default=1,
        help="number of queues (default 1); producer i publishes to queue i%%N, consumer j "
        "consumes from queue j%%N",
    )
    a(
        "--queue-prefix",
        default="leveret-perf-",
        help="queue names are PREFIX0, PREFIX1, ... (default leveret-perf-)",
    )
    a(
        "-s",
        "--size",
        type=int,
        default=16,
        help="message body size in bytes (default 16; at least 8 to measure latency)",
    )
    a(
        "-c",
        "--confirm",
        type=int,
        default=0,
        metavar="WINDOW",
        help="publisher confirms with at most WINDOW unconfirmed messages per producer "
        "(default 0: no confirms)",
    )
    a("-f", "--persistent", action="store_true", help="publish with delivery_mode 2")
    a("-a", "--autoack", action="store_true", help="consume with no_ack (default: manual acks)")
    a(
        "-q",
        "--qos",
        type=int,
        default=0,
        metavar="PREFETCH",
        help="basic.qos prefetch count per consumer (default 0: unlimited)",
    )
    a(
        "-A",
        "--multi-ack-every",
        type=int,
        default=0,
        metavar="N",
        help="ack with multiple=true every N messages (default 0: ack each message)",
    )
    a(
        "-r",
        "--rate",
        type=float,
        default=0.0,
        help="publish rate limit per producer in msg/s (default 0: unlimited)",
    )
    a(
        "-t",
        "--exchange-type",
        choices=("direct", "fanout", "topic"),
        default="direct",
        help="exchange type (default direct)",
    )
    a(
        "-e",
        "--exchange",
        default=None,
        help="exchange name (default leveret-perf-TYPE; '' is the default exchange, direct only)",
    )
    a("--durable", action="store_true", help="declare the queues durable")
    a(
        "--queue-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="queue.declare argument (repeatable; integers are sent as integers), "
        "e.g. x-queue-type=quorum",
    )
    a("--purge", action="store_true", help="purge the queues before starting")
    a(
        "-z",
        "--time",
        type=float,
        default=0.0,
        help="run duration in seconds (default: until the message counts are reached, or Ctrl-C)",
    )
    a("-C", "--pmessages", type=int, default=0, help="each producer stops after N messages")
    a("-D", "--cmessages", type=int, default=0, help="each consumer stops after N messages")
    a(
        "--drain-after-publish",
        "--consumer-delay-start",
        dest="drain",
        action="store_true",
        help="start consuming only once every producer is done (-C N), and end the run once "
        "the queues are drained",
    )
    a("--json", metavar="FILE", help="write the summary as JSON to FILE ('-': stdout)")
    a(
        "--broker-pid",
        type=int,
        help="sample this process's RSS (/proc/PID/status VmRSS) each second",
    )
    a("--keep-queues", action="store_true", help="do not delete the queues and exchange at the end")
    a(
        "--processes",
        type=int,
        default=0,
        help="worker processes (default: one per producer and consumer, up to the CPU count)",
    )
    a("--no-uvloop", action="store_true", help="use asyncio's default loop in the workers")
    a("--quiet", action="store_true", help="no per-second lines")
    return p


def _queue_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--queue-arg {item!r}: expected KEY=VALUE")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


class Plan:
    """Names and routes derived from the options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.queues = [f"{args.queue_prefix}{i}" for i in range(args.queues)]
        ex = args.exchange
        if ex is None:
            ex = f"leveret-perf-{args.exchange_type}"
        if ex == "" and args.exchange_type != "direct":
            raise ValueError("the default exchange ('') is a direct exchange: use -t direct")
        self.exchange = ex
        self.declare_exchange = ex != "" and not ex.startswith("amq.")
        self.roles: list[Role] = []
        for i in range(args.producers):
            q = self.queues[i % len(self.queues)]
            key = f"{q}.x" if args.exchange_type == "topic" else q
            self.roles.append(Role("producer", len(self.roles), i, q, ex, key))
        for j in range(args.consumers):
            self.roles.append(
                Role("consumer", len(self.roles), j, self.queues[j % len(self.queues)])
            )
        self.producers = [r for r in self.roles if r.kind == "producer"]
        self.consumers = [r for r in self.roles if r.kind == "consumer"]
        consumed = {r.queue for r in self.consumers}
        # deliveries each producer's message makes to consumed queues (for the drain end)
        self.fanout_factor = {
            r.slot: (len(consumed) if args.exchange_type == "fanout" else int(r.queue in consumed))
            for r in self.producers
        }

    def binding_key(self, queue: str) -> str:
        t = self.args.exchange_type
        return "" if t == "fanout" else (f"{queue}.#" if t == "topic" else queue)


async def _declare(conn: Connection, plan: Plan, queue_args: dict[str, Any]) -> None:
    args = plan.args
    if plan.declare_exchange:
        await conn.rpc(
            1,
            commands.Exchange.Declare(
                exchange=plan.exchange, exchange_type=args.exchange_type, durable=args.durable
            ),
            commands.Exchange.DeclareOk,
        )
    for q in plan.queues:
        await conn.rpc(
            1,
            commands.Queue.Declare(queue=q, durable=args.durable, arguments=queue_args or None),
            commands.Queue.DeclareOk,
        )
        if plan.exchange:
            await conn.rpc(
                1,
                commands.Queue.Bind(
                    queue=q, exchange=plan.exchange, routing_key=plan.binding_key(q)
                ),
                commands.Queue.BindOk,
            )
        if args.purge:
            await conn.rpc(1, commands.Queue.Purge(queue=q), commands.Queue.PurgeOk)


async def _setup(uri: AmqpUri, plan: Plan, queue_args: dict[str, Any]) -> None:
    conn = await open_connection(uri, name="leveret-perf setup")
    try:
        await _declare(conn, plan, queue_args)
    finally:
        await conn.close()


class Run:
    """The parent's side of a run: ticks, end conditions, aggregation."""

    def __init__(
        self,
        args: argparse.Namespace,
        uri: AmqpUri,
        plan: Plan,
        procs: list[Any],
        counters: Any,
        control: Any,
        results: Any,
    ) -> None:
        self.args = args
        self.uri = uri
        self.plan = plan
        self.procs = procs
        self.counters = counters
        self.control = control
        self.results = results
        self.mon: Connection | None = None
        self.depth_task: asyncio.Future[int | None] | None = None
        self.last_depth: int | None = None
        self.hist_second: dict[int, int] = {}
        self.hist_total: dict[int, int] = {}
        self.lat_max = 0
        self.max_second = 0
        self.seconds: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.byes: set[int] = set()
        self.stop_reason: str | None = None
        self.publish_end: float | None = None
        self.drain_zero_since: tuple[float, int] | None = None
        self.rss_series: list[int | None] = []

    # -- shared state ------------------------------------------------------------------

    def total(self, roles: list[Role], slot: int) -> int:
        c = self.counters
        return sum(c[r.slot * SLOTS + slot] for r in roles)

    def snapshot(self) -> dict[str, Any]:
        p, c = self.plan.producers, self.plan.consumers
        now_ns = time.monotonic_ns()
        blocked_ns = 0
        blocked_now = False
        for r in p:
            b = r.slot * SLOTS
            since = self.counters[b + BLOCKED_SINCE]
            blocked_ns += self.counters[b + BLOCKED_NS] + (now_ns - since if since else 0)
            blocked_now = blocked_now or bool(since)
        return {
            "t": time.monotonic(),
            "sent": self.total(p, SENT),
            "confirmed": self.total(p, CONFIRMED),
            "nacked": self.total(p, NACKED),
            "received": self.total(c, RECEIVED),
            "blocked_events": self.total(p, BLOCKED_EVENTS),
            "blocked_ns": blocked_ns,
            "blocked_now": blocked_now,
        }

    def states(self, roles: list[Role]) -> list[int]:
        return [self.counters[r.slot * SLOTS + STATE] for r in roles]

    def drain_results(self) -> None:
        while True:
            try:
                msg = self.results.get_nowait()
            except Exception:  # noqa: BLE001  (queue.Empty)
                return
            kind = msg[0]
            if kind == "hist":
                _, _, hist, top = msg
                stats.merge(self.hist_second, hist)
                stats.merge(self.hist_total, hist)
                self.lat_max = max(self.lat_max, top)
                self.max_second = max(self.max_second, top)
            elif kind == "error":
                _, _, role, text = msg
                line = f"{role}: {text}"
                self.errors.append(line)
                print(f"error: {line}", file=sys.stderr, flush=True)
                if self.stop_reason is None:
                    self.stop_reason = "error"
            elif kind == "bye":
                self.byes.add(msg[1])

    # -- queue depth -------------------------------------------------------------------

    async def _query_depth(self) -> int | None:
        mon = self.mon
        if mon is None or mon.error is not None:
            return None
        futs = []
        for q in self.plan.queues:
            futs.append(mon.expect(1, commands.Queue.DeclareOk))
            mon.send(1, commands.Queue.Declare(queue=q, passive=True))
        try:
            oks = await asyncio.gather(*futs)
        except AmqpError:
            try:  # a queue is gone (404 closed the channel): reopen it
                await mon.rpc(1, commands.Channel.Open(), commands.Channel.OpenOk)
            except Exception:  # noqa: BLE001
                pass
            return None
        except Exception:  # noqa: BLE001
            return None
        depth = sum(ok.message_count for ok in oks)
        self.last_depth = depth
        return depth

    async def depth(self, timeout: float = 0.5) -> int | None:
        if self.depth_task is None or self.depth_task.done():
            self.depth_task = asyncio.ensure_future(self._query_depth())
        try:
            return await asyncio.wait_for(asyncio.shield(self.depth_task), timeout)
        except TimeoutError:
            return None

    # -- ending ------------------------------------------------------------------------

    def expected_deliveries(self) -> int | None:
        if self.args.cmessages:
            return None
        c = self.counters
        return sum(
            c[r.slot * SLOTS + SENT] * self.plan.fanout_factor[r.slot] for r in self.plan.producers
        )

    async def check_end(self, go: float) -> str | None:
        self.drain_results()
        if self.stop_reason:
            return self.stop_reason
        for proc in self.procs:
            if proc.exitcode is not None and proc.exitcode != 0:
                self.errors.append(f"worker process {proc.pid} exited with {proc.exitcode}")
                return "error"
        args, plan = self.args, self.plan
        now = time.monotonic()
        if args.time and now >= go + args.time:
            return "time"
        if not (args.pmessages or args.cmessages):
            return None
        prods_done = bool(args.pmessages) and all(s == DONE for s in self.states(plan.producers))
        if prods_done and self.publish_end is None:
            self.publish_end = now
            if args.drain:
                self.control[CONSUMERS_GO] = 1.0
        need_prod = bool(args.pmessages) and bool(plan.producers)
        need_cons = bool(plan.consumers)
        if need_prod and not prods_done:
            return None
        if not need_cons:
            return "count"
        if args.cmessages:
            return "count" if all(s == DONE for s in self.states(plan.consumers)) else None
        # -C N without -D: the run ends when what was published has been consumed
        received = self.total(plan.consumers, RECEIVED)
        expected = self.expected_deliveries()
        if expected is not None and received >= expected:
            return "drained"
        depth = await self.depth(0.5)
        if depth == 0:
            if self.drain_zero_since is None or self.drain_zero_since[1] != received:
                self.drain_zero_since = (now, received)
            elif now - self.drain_zero_since[0] >= 0.3:
                return "drained"
        else:
            self.drain_zero_since = None
        return None

    # -- output ------------------------------------------------------------------------

    def record(
        self,
        elapsed: float,
        prev: dict[str, Any],
        snap: dict[str, Any],
        depth: int | None,
        rss: int | None,
    ) -> dict[str, Any]:
        dt = max(1e-9, snap["t"] - prev["t"])
        top = self.max_second
        p50, p95, p99 = (
            min(p, top) if p is not None else None
            for p in stats.percentiles(self.hist_second, (50, 95, 99))
        )
        count = sum(self.hist_second.values())
        self.hist_second = {}
        self.max_second = 0
        sec: dict[str, Any] = {
            "t": round(elapsed, 3),
            "interval": round(dt, 3),
            "sent": round((snap["sent"] - prev["sent"]) / dt, 1),
            "received": round((snap["received"] - prev["received"]) / dt, 1),
        }
        if self.args.confirm:
            sec["confirmed"] = round((snap["confirmed"] - prev["confirmed"]) / dt, 1)
        sec["depth"] = depth
        sec["latency_ms"] = (
            {"count": count, "p50": stats.ms(p50), "p95": stats.ms(p95), "p99": stats.ms(p99)}
            if count
            else None
        )
        sec["blocked_events"] = snap["blocked_events"] - prev["blocked_events"]
        sec["blocked"] = snap["blocked_now"]
        if self.args.broker_pid:
            sec["rss_kib"] = rss
        self.seconds.append(sec)
        if not self.args.quiet:
            print(format_second(sec), flush=True)
        return sec

    # -- the run -----------------------------------------------------------------------

    async def wait_ready(self) -> bool:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            self.drain_results()
            states = self.states(self.plan.roles)
            if self.errors or any(s == FAILED for s in states):
                await asyncio.sleep(0.1)  # let the other errors arrive too
                self.drain_results()
                return False
            if all(s >= READY for s in states):
                return True
            for proc in self.procs:
                if proc.exitcode is not None:
                    self.errors.append(f"worker process {proc.pid} exited with {proc.exitcode}")
                    return False
            await asyncio.sleep(0.01)
        self.errors.append("the producers and consumers were not ready after 30 s")
        return False

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.request_stop, "interrupted")
            except (NotImplementedError, RuntimeError):
                pass
        self.mon = await open_connection(self.uri, name="leveret-perf monitor")
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        go = 0.0
        end_t = 0.0
        reason = "error"
        end_snap: dict[str, Any] | None = None
        try:
            if await self.wait_ready():
                go = time.monotonic() + 0.05
                self.control[GO] = go
                if self.args.drain and not self.args.pmessages:
                    self.control[CONSUMERS_GO] = 1.0
                if not self.args.quiet:
                    print(header_line(self.args), flush=True)
                prev = self.snapshot()
                prev["t"] = go
                await asyncio.sleep(max(0.0, go - time.monotonic()))
                k = 1
                reason_found: str | None = None
                while reason_found is None:
                    tick_at = go + k
                    while (now := time.monotonic()) < tick_at:
                        await asyncio.sleep(min(0.05, tick_at - now))
                        reason_found = await self.check_end(go)
                        if reason_found:
                            break
                    if reason_found:
                        break
                    snap = self.snapshot()
                    depth = await self.depth(0.5)
                    rss = self.sample_rss()
                    await asyncio.sleep(max(0.0, snap["t"] + 0.1 - time.monotonic()))
                    self.drain_results()
                    self.record(snap["t"] - go, prev, snap, depth, rss)
                    prev = snap
                    k = max(k + 1, int(time.monotonic() - go) + 1)
                reason = reason_found
                self.control[STOP] = 1.0
                snap = end_snap = self.snapshot()
                end_t = snap["t"]
                if snap["t"] - prev["t"] >= 0.05:
                    depth = await self.depth(0.5)
                    rss = self.sample_rss()
                    await asyncio.sleep(0.05)
                    self.drain_results()
                    self.record(snap["t"] - go, prev, snap, depth, rss)
        finally:
            self.control[STOP] = 1.0
            await self.wait_workers()
        # the workers stop counting within a batch of the stop: their final counts are the
        # totals (consistent with the latency samples); the duration ends at the stop
        final = self.snapshot()
        if end_snap is not None:
            final["blocked_ns"] = end_snap["blocked_ns"]
        summary = self.summary(started_at, reason, go, end_t, final)
        await self.cleanup()
        return summary

    def sample_rss(self) -> int | None:
        if not self.args.broker_pid:
            return None
        rss = stats.read_rss_kib(self.args.broker_pid)
        self.rss_series.append(rss)
        return rss

    async def wait_workers(self) -> None:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            self.drain_results()
            if all(p.exitcode is not None or i in self.byes for i, p in enumerate(self.procs)):
                break
            await asyncio.sleep(0.02)
        self.drain_results()
        for p in self.procs:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.exitcode is None:
                p.terminate()
                p.join(timeout=2.0)

    async def cleanup(self) -> None:
        mon = self.mon
        if mon is None:
            return
        if self.depth_task is not None and not self.depth_task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.depth_task), 2.0)
            except Exception:  # noqa: BLE001
                pass
        try:
            if not self.args.keep_queues and mon.error is None:
                for q in self.plan.queues:
                    await mon.rpc(1, commands.Queue.Delete(queue=q), commands.Queue.DeleteOk)
                if self.plan.declare_exchange:
                    await mon.rpc(
                        1,
                        commands.Exchange.Delete(exchange=self.plan.exchange),
                        commands.Exchange.DeleteOk,
                    )
        except Exception as exc:  # noqa: BLE001
            print(f"warning: cleanup failed: {exc}", file=sys.stderr)
        await mon.close()

    def summary(
        self, started_at: str, reason: str, go: float, end_t: float, final: dict[str, Any]
    ) -> dict[str, Any]:
        args = self.args
        duration = max(0.0, end_t - go) if go else 0.0
        full = [s for s in self.seconds if s["interval"] >= 0.5]
        p50, p95, p99 = (  # a bucket's middle may be above the largest value seen
            min(p, self.lat_max) if p is not None else None
            for p in stats.percentiles(self.hist_total, (50, 95, 99))
        )
        count = sum(self.hist_total.values())

        def mean(n: int, d: float | None) -> float | None:
            return round(n / d, 1) if d else None

        publish_duration = (self.publish_end - go) if (self.publish_end and go) else None
        depths = [s["depth"] for s in self.seconds]
        known_depths = [d for d in depths if d is not None]
        params = dict(vars(args))
        params["uri"] = self.uri.masked()
        params["queue_names"] = self.plan.queues
        params["exchange"] = self.plan.exchange
        rates: dict[str, Any] = {
            "sent_mean": mean(final["sent"], duration),
            "received_mean": mean(final["received"], duration),
            "sent_median": stats.median([s["sent"] for s in full]),
            "received_median": stats.median([s["received"] for s in full]),
        }
        if args.confirm:
            rates["confirmed_mean"] = mean(final["confirmed"], duration)
            rates["confirmed_median"] = stats.median([s["confirmed"] for s in full])
        if publish_duration:
            rates["publish_phase_mean"] = mean(final["sent"], publish_duration)
        known_rss = [r for r in self.rss_series if r is not None]
        return {
            "tool": "leveret-perf",
            "started_at": started_at,
            "end_reason": reason,
            "parameters": params,
            "duration_s": round(duration, 3),
            "publish_duration_s": round(publish_duration, 3) if publish_duration else None,
            "totals": {
                "sent": final["sent"],
                "confirmed": final["confirmed"],
                "nacked": final["nacked"],
                "received": final["received"],
            },
            "rates": rates,
            "latency_ms": {
                "count": count,
                "p50": stats.ms(p50),
                "p95": stats.ms(p95),
                "p99": stats.ms(p99),
                "max": stats.ms(self.lat_max) if count else None,
            },
            "queue_depth": {
                "series": depths,
                "peak": max(known_depths) if known_depths else None,
                "last": known_depths[-1] if known_depths else None,
            },
            "rss_kib": (
                {
                    "pid": args.broker_pid,
                    "series": self.rss_series,
                    "peak": max(known_rss) if known_rss else None,
                    "last": known_rss[-1] if known_rss else None,
                }
                if args.broker_pid
                else None
            ),
            "blocked": {
                "events": final["blocked_events"],
                "time_s": round(final["blocked_ns"] / 1e9, 3),
            },
            "errors": self.errors,
            "seconds": self.seconds,
        }


def _num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def header_line(args: argparse.Namespace) -> str:
    what = [
        f"{args.producers} producer(s)",
        f"{args.consumers} consumer(s)",
        f"{args.queues} queue(s)",
        f"{args.size} B",
        f"{args.exchange_type}",
        "autoack" if args.autoack else f"manual ack (qos {args.qos or 'unlimited'})",
    ]
    if args.confirm:
        what.append(f"confirms (window {args.confirm})")
    if args.persistent:
        what.append("persistent")
    if args.rate:
        what.append(f"rate {args.rate:g} msg/s per producer")
    return "leveret-perf: " + ", ".join(what)


def format_second(sec: dict[str, Any]) -> str:
    parts = [f"time {sec['t']:7.3f}s", f"sent {_num(sec['sent']):>9} msg/s"]
    if "confirmed" in sec:
        parts.append(f"confirmed {_num(sec['confirmed']):>9} msg/s")
    parts.append(f"received {_num(sec['received']):>9} msg/s")
    parts.append(f"depth {_num(sec['depth']):>9}")
    lat = sec["latency_ms"]
    if lat:
        parts.append(f"latency p50/p95/p99 {lat['p50']:.2f}/{lat['p95']:.2f}/{lat['p99']:.2f} ms")
    else:
        parts.append("latency p50/p95/p99 -/-/- ms")
    parts.append(f"blocked {sec['blocked_events']}{' BLOCKED' if sec['blocked'] else ''}")
    if "rss_kib" in sec:
        rss = sec["rss_kib"]
        parts.append(f"rss {rss / 1024:.1f} MiB" if rss is not None else "rss -")
    return ", ".join(parts)


def format_summary(s: dict[str, Any]) -> str:
    t, r, lat = s["totals"], s["rates"], s["latency_ms"]
    lines = [
        f"summary: {s['duration_s']:.3f} s ({s['end_reason']})",
        f"  sent      {t['sent']:>12,}  mean {_num(r['sent_mean'])} msg/s, median {_num(r['sent_median'])} msg/s",
    ]
    if "confirmed_mean" in r:
        lines.append(
            f"  confirmed {t['confirmed']:>12,}  mean {_num(r['confirmed_mean'])} msg/s, "
            f"median {_num(r['confirmed_median'])} msg/s, nacked {t['nacked']:,}"
        )
    lines.append(
        f"  received  {t['received']:>12,}  mean {_num(r['received_mean'])} msg/s, median {_num(r['received_median'])} msg/s"
    )
    if s["publish_duration_s"]:
        lines.append(
            f"  publishing took {s['publish_duration_s']:.3f} s ({_num(r.get('publish_phase_mean'))} msg/s)"
        )
    if lat["count"]:
        lines.append(
            f"  latency   p50 {lat['p50']:.3f} ms, p95 {lat['p95']:.3f} ms, p99 {lat['p99']:.3f} ms, "
            f"max {lat['max']:.3f} ms ({lat['count']:,} samples)"
        )
    qd = s["queue_depth"]
    lines.append(f"  queue depth peak {_num(qd['peak'])}, last {_num(qd['last'])}")
    b = s["blocked"]
    lines.append(f"  blocked   {b['events']} event(s), {b['time_s']:.3f} s")
    if s["rss_kib"]:
        rss = s["rss_kib"]
        peak, last = rss["peak"], rss["last"]
        lines.append(
            f"  broker RSS peak {peak / 1024:.1f} MiB, last {last / 1024:.1f} MiB"
            if peak is not None and last is not None
            else "  broker RSS -"
        )
    for e in s["errors"]:
        lines.append(f"  error: {e}")
    return "\n".join(lines)


def _validate(args: argparse.Namespace) -> str | None:
    for name in (
        "producers",
        "consumers",
        "size",
        "confirm",
        "qos",
        "multi_ack_every",
        "pmessages",
        "cmessages",
    ):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must be >= 0"
    if args.queues < 1:
        return "--queues must be >= 1"
    if args.rate < 0 or args.time < 0:
        return "--rate and --time must be >= 0"
    if args.producers + args.consumers == 0:
        return "nothing to do: no producers and no consumers"
    if args.drain and not args.pmessages and args.producers:
        return "--drain-after-publish needs --pmessages N (the producers must finish)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _validate(args)
    if problem:
        parser.error(problem)
    try:
        uri = parse_uri(args.uri)
        plan = Plan(args)
        queue_args = _queue_args(args.queue_arg)
    except ValueError as exc:
        parser.error(str(exc))
    if args.multi_ack_every > 1 and args.qos and args.multi_ack_every > args.qos:
        print(
            f"note: --multi-ack-every {args.multi_ack_every} > --qos {args.qos}: "
            f"acking every {args.qos} instead",
            file=sys.stderr,
        )
        args.multi_ack_every = args.qos

    try:
        asyncio.run(_setup(uri, plan, queue_args))
    except (OSError, AmqpError, TimeoutError) as exc:
        print(f"leveret-perf: cannot set up on {uri.masked()}: {exc}", file=sys.stderr)
        return EXIT_SETUP

    opts = Options(
        uri=args.uri,
        size=args.size,
        confirm=args.confirm,
        persistent=args.persistent,
        autoack=args.autoack,
        qos=args.qos,
        multi_ack=args.multi_ack_every,
        rate=args.rate,
        pmessages=args.pmessages,
        cmessages=args.cmessages,
        delay_consumers=args.drain,
        uvloop=not args.no_uvloop,
    )
    ctx: Any = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    counters = ctx.RawArray("q", len(plan.roles) * SLOTS)
    control = ctx.RawArray("d", CONTROL_SIZE)
    results = ctx.Queue()
    nproc = args.processes or (os.cpu_count() or 1)
    groups = assign(plan.roles, nproc)
    procs = []
    for wid, roles in enumerate(groups):
        spec = WorkerSpec(wid, opts, roles)
        proc = ctx.Process(
            target=worker_main,
            args=(spec, counters, control, results),
            name=f"leveret-perf-worker-{wid}",
            daemon=True,
        )
        proc.start()
        procs.append(proc)

    run = Run(args, uri, plan, procs, counters, control, results)
    try:
        summary = asyncio.run(run.run())
    except (OSError, AmqpError, TimeoutError) as exc:
        control[STOP] = 1.0
        for p in procs:
            p.join(timeout=5.0)
            if p.exitcode is None:
                p.terminate()
        print(f"leveret-perf: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(format_summary(summary), flush=True)
    if args.json:
        text = json.dumps(summary, indent=2)
        if args.json == "-":
            print(text, flush=True)
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            print(f"summary written to {args.json}", flush=True)
    return EXIT_ERROR if summary["errors"] else EXIT_OK
