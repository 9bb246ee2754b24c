"""Streams, as RabbitMQ 3.10 serves them over AMQP 0-9-1 (``x-queue-type: stream``).

A :class:`StreamQueue` is an append-only log (``storage.streamlog.StreamLog``) that
consumers read without removing anything:

* every message is written to the log, whatever its delivery mode, and gets the next
  *offset*; a publisher's confirm waits for the fsync (on a broker with a data
  directory; without one the log is a temporary directory, never fsynced);
* every consumer reads every message, from where its ``x-stream-offset`` argument puts it
  (:func:`parse_offset`): ``next`` (the default: what is published from now on),
  ``first``, ``last`` (the last chunk: the records the log handed to the OS in one write),
  an integer offset (negative: the first; past the end: nothing, ever), a timestamp
  (seconds) or an interval (``"1h"``: what was published in the last hour);
* each delivery carries ``x-stream-offset`` (a long) in its headers, every other
  property unchanged, never redelivered.  The consumer's prefetch is its credit: an ack
  lets one more through and removes nothing.  A consumer that has caught up gets new
  messages as they are published; one behind reads them from the log, a batch at a
  time, with one ``pread`` (the page cache is the stream's cache: nothing of a message
  stays in the broker's RAM once delivered);
* refused as RabbitMQ 3.10.8 refuses them: ``basic.get``, ``queue.purge``, ``basic.nack``
  / ``basic.reject`` (540); a consumer is checked in this order: its offset (406 for a
  string starting with a digit that is no interval, 541 for any other invalid value), a
  prefetch count (406 without one), no auto-ack (540), no global qos (540);
* retention: ``x-max-length-bytes`` and ``x-max-age`` (or the ``max-length-bytes`` /
  ``max-age`` policy keys) remove whole segments (``x-stream-max-segment-size-bytes``,
  500 MB by default, as RabbitMQ) from the old end when a segment fills up and on the
  persistence tick; a consumer positioned in a removed segment continues from the new
  first offset;
* queue.declare-ok reports 0 messages and 0 consumers, as RabbitMQ does over AMQP
  0-9-1 (its count comes from stats emitted later); the management API reports the
  stream's messages (:attr:`StreamQueue.stored`); ``queue.delete`` reports 0 and
  deletes even with ``if-empty``.
"""

from __future__ import annotations

import datetime
import os
import shutil
import struct
import tempfile
import time
import weakref
from typing import TYPE_CHECKING, Any

from leveret.broker.core.consumer import Consumer
from leveret.broker.core.errors import AMQPError
from leveret.broker.core.message import NAMES, Message, exchange_rk
from leveret.broker.core.policy import _MAX_AGE, _age_seconds
from leveret.broker.core.queue import ACCEPTED, PERSISTED, REFUSED, Queue, _int_arg
from leveret.broker.core.queuetype import STREAM
from leveret.protocol import properties as P
from leveret.protocol.constants import INTERNAL_ERROR, NOT_IMPLEMENTED, PRECONDITION_FAILED, Method
from leveret.storage.streamlog import StreamLog

if TYPE_CHECKING:
    from leveret.broker.core.vhost import VHost

OFFSET_KEY = b"x-stream-offset"
#: RabbitMQ's default x-stream-max-segment-size-bytes
SEGMENT_SIZE = 500_000_000
#: records read from the log for one consumer at a time (at most: its credit)
READ_BATCH = 200
NEVER = 1 << 62  # a reader past the end: it is given nothing


class BareError(AMQPError):
    """An error whose reply text is the code's name alone (RabbitMQ's 541 for a consumer
    whose offset osiris cannot use: ``INTERNAL_ERROR``)."""

    @property
    def reply_text(self) -> str:
        return "INTERNAL_ERROR"


def max_age_seconds(v: Any) -> float | None:
    """``x-max-age`` ("7D", "1h": units Y M D h m s) in seconds; None: invalid."""
    if isinstance(v, bytes | bytearray):
        v = bytes(v).decode("utf-8", "replace")
    m = _MAX_AGE.fullmatch(v) if isinstance(v, str) else None
    if m is None or int(m.group(1)) <= 0:
        return None
    return _age_seconds(v)


def parse_offset(v: Any, where: str = "") -> tuple[str, Any]:
    """The ``x-stream-offset`` consumer argument as RabbitMQ 3.10.8 reads it:
    ``("next"|"first"|"last", None)``, ``("offset", n)`` or ``("time", seconds)``.  A
    string that starts with a digit and is no interval is refused with 406 (channel);
    any other value osiris cannot use closes the connection (541: other strings, a byte
    array, a boolean, a table ...)."""
    if v is None:
        return "next", None
    if isinstance(v, str):
        if v in ("first", "last", "next"):
            return v, None
        age = max_age_seconds(v)
        if age is not None:
            return "time", time.time() - age
        if v[:1].isdigit():
            raise AMQPError(
                PRECONDITION_FAILED,
                f'invalid arg \'x-stream-offset\' for {where}: {{invalid_stream_offset_arg,{{longstr,<<"{v}">>}}}}',
                60,
                20,
            )
        raise BareError(INTERNAL_ERROR, f"invalid x-stream-offset {v!r}", *Method.BASIC_CONSUME)
    if isinstance(v, datetime.datetime):
        return "time", v.replace(tzinfo=v.tzinfo or datetime.UTC).timestamp()
    if isinstance(v, int) and not isinstance(v, bool):
        return "offset", v
    raise BareError(INTERNAL_ERROR, f"invalid x-stream-offset {v!r}", *Method.BASIC_CONSUME)


class Reader:
    """Where one consumer is in the stream: the next offset and its byte position."""

    __slots__ = ("next", "pos")

    def __init__(self, nxt: int, pos: int) -> None:
        self.next = nxt
        self.pos = pos


class StreamQueue(Queue):
    """A stream (see the module's text)."""

    qtype = STREAM
    persist_all = True

    def __init__(
        self,
        vhost: VHost,
        name: str,
        *,
        durable: bool = True,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        effective: dict[str, Any] | None = None,
    ) -> None:
        self.slog: StreamLog | None = None
        self.readers: dict[Consumer, Reader] = {}
        self.synced = False  # the log is fsynced by the node's persistence (confirms wait)
        super().__init__(vhost, name, durable=durable, exclusive_owner=exclusive_owner, auto_delete=auto_delete,
                         arguments=arguments, effective=effective)
        if self.node.persistence is None:
            # no data directory: a temporary log, removed with the queue (or at exit)
            path = tempfile.mkdtemp(prefix="leveret-stream-")
            self.slog = StreamLog(path, self.segment_size, ephemeral=True)
            self.slog.recover()
            weakref.finalize(self, _remove, path)

    def configure(self, args: dict[str, Any]) -> None:
        """The retention settings (x-arguments or the policy keys ``max-length-bytes``,
        ``max-age``, ``stream-max-segment-size-bytes``)."""
        super().configure(args)
        self.max_age = max_age_seconds(args.get("x-max-age")) if "x-max-age" in args else None
        self.segment_size = _int_arg(args, "x-stream-max-segment-size-bytes") or SEGMENT_SIZE
        self.plain = False
        self.has_limits = False
        if self.slog is not None:
            self.slog.segment_size = max(4096, self.segment_size)

    def policy_changed(self, args: dict[str, Any]) -> None:
        self.configure(args)
        self.retain()

    def attach_stream(self, slog: StreamLog) -> None:
        """The node's persistence gives a stream its log (recovered)."""
        slog.recover()
        slog.segment_size = max(4096, self.segment_size)
        self.slog = slog
        self.synced = True

    @property
    def log(self) -> Any:
        return self.slog

    @property
    def stored(self) -> int:
        """Messages in the stream (the management API's ``messages``)."""
        return self.slog.count if self.slog is not None else 0

    # ---------------------------------------------------------------- publishing

    def publish(self, msg: Message) -> int:
        store = self.store
        store.stats_publish += 1
        slog = self.slog
        if slog is None:
            return REFUSED
        if not msg.ts:
            msg.ts = time.time()
        try:
            off, rolled = slog.append(0, msg.ts, msg.ex_rk, msg.header, msg.body)
        except OSError as exc:
            self.node.disk_error(exc)
            return REFUSED
        if self.readers:
            out: Message | None = None
            for c, r in self.readers.items():
                if r.next == off and c.ready():
                    if out is None:
                        out = with_offset(msg, off)
                    r.next = off + 1
                    r.pos = -1
                    c.sink.deliver(c, self, off, out, False)
        if rolled:
            self.retain()
        return PERSISTED if self.synced else ACCEPTED

    def retain(self) -> None:
        """Apply retention: whole segments from the old end."""
        if self.slog is not None and (self.max_bytes is not None or self.max_age is not None):
            self.slog.truncate(self.max_bytes, self.max_age)

    def maybe_compact(self) -> None:
        """(The persistence tick): retention by age happens here too."""
        self.retain()

    # ---------------------------------------------------------------- consumers

    def check_consume(self, global_prefetch: int, prefetch: int, no_ack: bool, args: dict[str, Any], where: str) -> None:
        """RabbitMQ 3.10.8's order: a valid offset (541), a prefetch count (406), no
        auto-ack (540), no global qos (540)."""
        parse_offset(args.get("x-stream-offset"), where)
        if not prefetch:
            raise AMQPError(PRECONDITION_FAILED, f"consumer prefetch count is not set for '{where}'", *Method.BASIC_CONSUME)
        if no_ack:
            raise AMQPError(NOT_IMPLEMENTED, f"automatic acknowledgement not supported by stream queues {where}", *Method.BASIC_CONSUME)
        self.qtype.check_consume(global_prefetch, where)

    def add_consumer(self, consumer: Consumer) -> None:
        hook = self.node.delivery_hook
        if hook is not None:
            consumer.sink = hook(consumer)
        slog = self.slog
        assert slog is not None
        kind, v = parse_offset(consumer.arguments.get("x-stream-offset"))
        if kind == "first":
            start = slog.first_offset
        elif kind == "last":
            start = slog.last_chunk
        elif kind == "next":
            start = slog.next_offset
        elif kind == "offset":
            start = v if v < slog.next_offset else (slog.next_offset if v == slog.next_offset else NEVER)
        else:
            start = slog.offset_at(v)
        self.readers[consumer] = Reader(max(start, slog.first_offset) if start != NEVER else NEVER, -1)
        self.consumers.append(consumer)
        self.had_consumers = True
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        self.readers.pop(consumer, None)
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return

    def dispatch(self) -> None:
        """Deliver from the log to every consumer behind the end that has credit."""
        if not self.readers or self.deleted:
            return
        slog = self.slog
        assert slog is not None
        end = slog.next_offset
        for c, r in list(self.readers.items()):
            while r.next < end and c.ready():
                credit = c.prefetch - c.unacked
                records, nxt, pos = slog.read(r.next, r.pos, min(READ_BATCH, max(1, credit)))
                if not records:
                    r.next, r.pos = nxt, pos
                    break
                templates = TEMPLATES
                pack = _Q.pack
                batch = getattr(c.sink, "deliver_stream", None)  # (the channel's batch path)
                if batch is not None:
                    items = []
                    for off, _, _, ex_rk, header, body in records:
                        t = templates.get(header)
                        h = t[0] + pack(off) + t[1] if t is not None else offset_header(header, off)
                        items.append((off, ex_rk, h, body))
                    batch(c, self, items)
                else:  # (a test hook's sink: one message at a time)
                    deliver = c.sink.deliver
                    for off, _, _, ex_rk, header, body in records:
                        names = NAMES.get(ex_rk) or exchange_rk(ex_rk)
                        h = offset_header(header, off)
                        deliver(c, self, off, Message(ex_rk, names[0], names[1], h, body), False)
                r.next, r.pos = nxt, pos
                if self.deleted or c not in self.readers:
                    return
                # the batch goes out now: the consumer works through it (and acks) while
                # the next one is read, instead of waiting for its whole credit
                self.node.flush_all()

    # ---------------------------------------------------------------- settling

    def get(self) -> None:  # type: ignore[override]
        return None  # (refused before: Session.get, QueueType.check_op)

    def requeue(self, entries: list[tuple[int, Message]]) -> None:
        """Unacked deliveries of a closed channel: nothing to put back (the stream keeps
        everything); nack/reject were refused before (540)."""

    def settle(self, seq: int, msg: Message, reject: bool) -> None:
        self.unacked_count -= 1
        self.store.stats_ack += 1

    def purge(self) -> int:
        """Only at deletion (queue.purge is refused): the log goes with the queue."""
        if self.deleted and self.slog is not None and self.slog.ephemeral:
            self.slog.destroy()
            self.slog = None
        return 0

    @property
    def message_count(self) -> int:
        return 0

    @property
    def consumer_count(self) -> int:
        return 0

    def total(self) -> int:
        return 0

    def reported_counts(self) -> tuple[int, int]:
        return self.stored, 0

    def __repr__(self) -> str:
        return f"<StreamQueue {self.name!r}>"


def _with_offset(header: bytes, offset: int) -> bytes:
    """``header`` (a raw content header) whose headers table carries ``x-stream-offset``
    = ``offset`` (a long), the table sorted by key as RabbitMQ writes it; every other
    property byte for byte."""
    if header[P.FLAGS_HI] & P.HI_HEADERS:
        at = P.scan(header).get("_headers_at")
        fields = P.table_fields(header, at) if at is not None else {}
        fields[OFFSET_KEY] = P.long_value(offset)
        table = P.table_bytes(sorted(fields.items()))
    else:
        table = P.table_bytes([(OFFSET_KEY, P.long_value(offset))])
    return P.rewrite(header, {P.F_HEADERS: table})


_PROBE = 0x0123456789ABCDEF
_Q = struct.Struct(">q")
#: raw content header -> (before, after) the 8 bytes of the offset in its rewritten form: a
#: stream's messages mostly share their properties, so the table is rewritten once for all
TEMPLATES: dict[bytes, tuple[bytes, bytes]] = {}


def offset_header(header: bytes, offset: int) -> bytes:
    """:func:`_with_offset`, through ``TEMPLATES`` (the delivery path)."""
    t = TEMPLATES.get(header)
    if t is None:
        full = _with_offset(header, _PROBE)
        i = full.find(OFFSET_KEY + b"l" + _Q.pack(_PROBE)) + len(OFFSET_KEY) + 1
        t = (full[:i], full[i + 8 :])
        if len(TEMPLATES) >= 1024:
            TEMPLATES.clear()
        TEMPLATES[header] = t
    return t[0] + _Q.pack(offset) + t[1]


def with_offset(msg: Message, offset: int) -> Message:
    """A copy of ``msg`` delivered from a stream: ``x-stream-offset`` in its headers."""
    out = Message(msg.ex_rk, msg.exchange, msg.routing_key, offset_header(bytes(msg.header), offset), msg.body)
    out.ts = msg.ts
    return out


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["StreamQueue", "parse_offset", "max_age_seconds", "offset_header", "with_offset"]
