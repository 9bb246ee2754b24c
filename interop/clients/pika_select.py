"""pika SelectConnection (callback API) scenarios.

Each scenario is a generator driven by :class:`Driver` on one shared IOLoop: it yields
``lambda cb: <start an operation that calls cb(...) when done>`` and gets the callback's
argument back, or yields ``Until(predicate)`` to wait for state set by other callbacks.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Generator
from typing import Any

import pika
from interop_common import Skip, _reason, check, eq, name, report
from interop_common import env as ENV
from pika.adapters.select_connection import IOLoop

Op = Generator[Any, Any, None]


class Until:
    def __init__(self, pred: Callable[[], Any], what: str) -> None:
        self.pred, self.what = pred, what


class Sleep:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Driver:
    def __init__(self, scenarios: list[tuple[str, Callable[[Driver], Op], float]]) -> None:
        self.ioloop = IOLoop()
        self.todo = list(scenarios)
        self.gen: Op | None = None
        self.token: object = None
        self.conns: list[pika.SelectConnection] = []
        self.timer: Any = None
        self.current = ""

    def run(self) -> None:
        self.ioloop.add_callback_threadsafe(self._next)
        self.ioloop.start()

    # -- plumbing
    def _next(self) -> None:
        for c in self.conns:
            if c.is_open:
                c.close()
        self.conns = []
        if not self.todo:
            self.ioloop.stop()
            return
        self.current, fn, timeout = self.todo.pop(0)
        self.gen = fn(self)
        self.timer = self.ioloop.call_later(
            timeout, lambda: self.fail(TimeoutError(f"timed out after {timeout:.0f} s")))
        self._advance(None, None)

    def _finish(self, status: str, reason: str = "") -> None:
        self.ioloop.remove_timeout(self.timer)
        self.gen = None
        self.token = None
        report(status, self.current, reason)
        self.ioloop.call_later(0.05, self._next)  # let closes go out

    def _advance(self, value: Any, exc: BaseException | None) -> None:
        gen = self.gen
        if gen is None:
            return
        try:
            op = gen.throw(exc) if exc is not None else gen.send(value)
        except StopIteration:
            self._finish("PASS")
        except Skip as e:
            self._finish("SKIP", str(e))
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            self._finish("FAIL", _reason(e))
        else:
            self._dispatch(op)

    def _dispatch(self, op: Any) -> None:
        token = self.token = object()
        if isinstance(op, Until):
            def poll() -> None:
                if self.token is not token:
                    return
                try:
                    ok = op.pred()
                except Exception as e:  # noqa: BLE001
                    self._advance(None, e)
                    return
                if ok:
                    self._advance(None, None)
                else:
                    self.ioloop.call_later(0.01, poll)
            poll()
        elif isinstance(op, Sleep):
            self.ioloop.call_later(op.seconds, lambda: self._resume(token, ()))
        else:
            op(lambda *args: self._resume(token, args))

    def _resume(self, token: object, args: tuple[Any, ...]) -> None:
        if token is not self.token:
            return
        self.token = None
        value = args[0] if len(args) == 1 else args
        self.ioloop.add_callback_threadsafe(lambda: self._advance(value, None))

    def fail(self, exc: BaseException) -> None:
        if self.gen is not None:
            self.token = None
            self.ioloop.add_callback_threadsafe(lambda: self._advance(None, exc))

    # -- helpers for scenarios
    def connect(self) -> Callable[[Callable[..., None]], None]:
        def start(cb: Callable[..., None]) -> None:
            conn = pika.SelectConnection(
                pika.URLParameters(ENV.url),
                on_open_callback=cb,
                on_open_error_callback=lambda c, e: self.fail(RuntimeError(f"open failed: {e}")),
                on_close_callback=lambda c, e: self._unexpected_close(c, e),
                custom_ioloop=self.ioloop,
            )
            self.conns.append(conn)
        return start

    def _unexpected_close(self, conn: Any, exc: BaseException) -> None:
        if getattr(conn, "_interop_closing", False):
            cb = conn._interop_closing
            conn._interop_closing = None
            cb(exc)
        elif self.gen is not None:
            self.fail(RuntimeError(f"connection closed: {exc!r}"))

    def close(self, conn: pika.SelectConnection) -> Callable[[Callable[..., None]], None]:
        def start(cb: Callable[..., None]) -> None:
            conn._interop_closing = cb
            conn.close()
        return start

    def channel(self, conn: pika.SelectConnection, expect_close: list | None = None):
        def on_close(ch: Any, exc: BaseException) -> None:
            if expect_close is not None:
                expect_close.append(exc)
            elif self.gen is not None and not isinstance(
                    exc, pika.exceptions.ChannelClosedByClient):
                self.fail(RuntimeError(f"channel closed: {exc!r}"))

        def start(cb: Callable[..., None]) -> None:
            def opened(ch: Any) -> None:
                ch.add_on_close_callback(on_close)
                cb(ch)
            conn.channel(on_open_callback=opened)
        return start


def s_connect(d: Driver) -> Op:
    conn = yield d.connect()
    caps = conn.server_properties.get("capabilities", {})
    check(caps.get("publisher_confirms") and caps.get("basic.nack"), f"capabilities {caps}")
    ch = yield d.channel(conn)
    check(ch.is_open, "channel open")
    yield lambda cb: (ch.add_on_close_callback(lambda *a: cb()), ch.close())
    yield d.close(conn)


def s_topology(d: Driver) -> Op:
    conn = yield d.connect()
    ch = yield d.channel(conn)
    x, q = name("topo.x"), name("topo.q")
    yield lambda cb: ch.exchange_declare(x, "direct", auto_delete=True, callback=cb)
    ok = yield lambda cb: ch.queue_declare(q, exclusive=True, callback=cb)
    eq(ok.method.queue, q, "declare-ok queue")
    yield lambda cb: ch.queue_bind(q, x, routing_key="k", callback=cb)
    yield lambda cb: ch.exchange_declare(x, "direct", passive=True, callback=cb)
    ch.basic_publish(x, "k", b"routed")
    ch.basic_publish(x, "other", b"dropped")
    got: list[bytes] = []
    yield lambda cb: ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True,
                                      callback=cb)
    yield Until(lambda: got, "routed message")
    yield Sleep(0.05)
    eq(got, [b"routed"], "routed")
    yield lambda cb: ch.queue_unbind(q, x, routing_key="k", callback=cb)
    yield lambda cb: ch.exchange_delete(x, callback=cb)
    yield d.close(conn)


def s_confirm(d: Driver) -> Op:
    conn = yield d.connect()
    ch = yield d.channel(conn)
    ok = yield lambda cb: ch.queue_declare("", exclusive=True, callback=cb)
    q = ok.method.queue
    acks: list[Any] = []
    returns: list[Any] = []
    ch.add_on_return_callback(lambda c, m, p, b: returns.append(m))
    yield lambda cb: ch.confirm_delivery(lambda f: acks.append(f.method), callback=cb)
    for i in range(100):
        ch.basic_publish("", q, b"m%d" % i, pika.BasicProperties(delivery_mode=2))
    yield Until(lambda: acks and acks[-1].delivery_tag == 100, "100 confirmed")
    check(all(isinstance(a, pika.spec.Basic.Ack) for a in acks), f"nacks: {acks}")
    ch.basic_publish("", name("nowhere"), b"x", mandatory=True)
    yield Until(lambda: returns and acks[-1].delivery_tag == 101, "return then ack of 101")
    eq(returns[0].reply_code, 312, "return code")
    ok = yield lambda cb: ch.queue_declare(q, passive=True, callback=cb)
    eq(ok.method.message_count, 100, "messages")
    yield d.close(conn)


def s_consume_prefetch(d: Driver) -> Op:
    conn = yield d.connect()
    ch = yield d.channel(conn)
    ok = yield lambda cb: ch.queue_declare("", exclusive=True, callback=cb)
    q = ok.method.queue
    for i in range(9):
        ch.basic_publish("", q, str(i).encode())
    yield lambda cb: ch.basic_qos(prefetch_count=3, callback=cb)
    got: list[tuple[int, bytes]] = []
    yield lambda cb: ch.basic_consume(q, lambda c, m, p, b: got.append((m.delivery_tag, b)),
                                      callback=cb)
    seen: list[bytes] = []
    while len(seen) < 9:
        yield Until(lambda: len(got) >= 3, "3 deliveries")
        yield Sleep(0.1)
        check(len(got) == 3, f"prefetch 3 exceeded: {len(got)}")
        seen.extend(b for _, b in got)
        ch.basic_ack(got[-1][0], multiple=True)
        got.clear()
    eq(seen, [str(i).encode() for i in range(9)], "order")
    yield d.close(conn)


def s_reject_requeue(d: Driver) -> Op:
    conn = yield d.connect()
    ch = yield d.channel(conn)
    ok = yield lambda cb: ch.queue_declare("", exclusive=True, callback=cb)
    q = ok.method.queue
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    got: list[tuple[Any, bytes]] = []
    yield lambda cb: ch.basic_consume(q, lambda c, m, p, b: got.append((m, b)), callback=cb)
    yield Until(lambda: len(got) == 2, "2 deliveries")
    ch.basic_reject(got[0][0].delivery_tag, requeue=True)
    yield Until(lambda: len(got) == 3, "redelivery")
    eq((got[2][1], got[2][0].redelivered), (b"a", True), "redelivered")
    ch.basic_nack(got[2][0].delivery_tag, requeue=False)
    ch.basic_reject(got[1][0].delivery_tag, requeue=False)
    yield Sleep(0.1)
    eq(len(got), 3, "discarded messages came back")
    ok = yield lambda cb: ch.queue_declare(q, passive=True, callback=cb)
    eq(ok.method.message_count, 0, "left")
    yield d.close(conn)


def _route_test(d: Driver, xtype: str, binds: dict[str, str], publishes: list[str],
                want: dict[str, list[bytes]]) -> Op:
    conn = yield d.connect()
    ch = yield d.channel(conn)
    x = name(xtype)
    yield lambda cb: ch.exchange_declare(x, xtype, auto_delete=True, callback=cb)
    got: dict[str, list[bytes]] = {k: [] for k in binds}
    for label, key in binds.items():
        ok = yield lambda cb: ch.queue_declare("", exclusive=True, callback=cb)
        q = ok.method.queue
        yield lambda cb, q=q, key=key: ch.queue_bind(q, x, routing_key=key, callback=cb)
        yield lambda cb, q=q, label=label: ch.basic_consume(
            q, lambda c, m, p, b, label=label: got[label].append(b), auto_ack=True, callback=cb)
    for rk in publishes:
        ch.basic_publish(x, rk, rk.encode())
    total = sum(len(v) for v in want.values())
    yield Until(lambda: sum(len(v) for v in got.values()) >= total, f"{total} deliveries")
    yield Sleep(0.1)
    eq(got, want, "deliveries per binding")
    yield d.close(conn)


def s_fanout(d: Driver) -> Op:
    return _route_test(d, "fanout", {"a": "", "b": "x", "c": "y"}, ["k"],
                       {"a": [b"k"], "b": [b"k"], "c": [b"k"]})


def s_topic(d: Driver) -> Op:
    return _route_test(d, "topic", {"err": "*.error", "app": "app.#"},
                       ["app.error", "db.error", "app.x.y", "other"],
                       {"err": [b"app.error", b"db.error"], "app": [b"app.error", b"app.x.y"]})


def s_tx(d: Driver) -> Op:
    conn = yield d.connect()
    ch = yield d.channel(conn)
    ok = yield lambda cb: ch.queue_declare("", exclusive=True, callback=cb)
    q = ok.method.queue
    yield lambda cb: ch.tx_select(callback=cb)
    ch.basic_publish("", q, b"gone")
    yield lambda cb: ch.tx_rollback(callback=cb)
    ch.basic_publish("", q, b"kept")
    ok = yield lambda cb: ch.queue_declare(q, passive=True, callback=cb)
    eq(ok.method.message_count, 0, "uncommitted visible")
    yield lambda cb: ch.tx_commit(callback=cb)
    ok = yield lambda cb: ch.queue_declare(q, passive=True, callback=cb)
    eq(ok.method.message_count, 1, "committed")
    yield d.close(conn)


def s_close(d: Driver) -> Op:
    conn = yield d.connect()
    closes: list[Any] = []
    ch = yield d.channel(conn, expect_close=closes)
    ch.queue_declare(name("missing"), passive=True)
    yield Until(lambda: closes, "channel.close from the broker")
    check(isinstance(closes[0], pika.exceptions.ChannelClosedByBroker)
          and closes[0].reply_code == 404, f"close reason {closes[0]!r}")
    ch2 = yield d.channel(conn)
    yield lambda cb: ch2.queue_declare("", exclusive=True, callback=cb)
    reason = yield d.close(conn)
    check(isinstance(reason, pika.exceptions.ConnectionClosedByClient), f"close reason {reason!r}")
    check(conn.is_closed, "closed")


SCENARIOS = [
    ("connect", s_connect, 10), ("topology", s_topology, 10), ("confirm", s_confirm, 15),
    ("consume_prefetch", s_consume_prefetch, 15), ("reject_requeue", s_reject_requeue, 10),
    ("fanout", s_fanout, 10), ("topic", s_topic, 10), ("tx", s_tx, 10), ("close", s_close, 10),
]

if __name__ == "__main__":
    Driver(SCENARIOS).run()
