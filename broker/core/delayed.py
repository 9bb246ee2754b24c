"""The messages an ``x-delayed-message`` exchange holds until they are due.

One :class:`DelayedStore` per delayed exchange (``DelayedExchange.store``).  A message
the exchange holds (its ``x-delay`` header, see ``exchange.message_delay``) comes in
through ``DelayedHold.publish`` -> :meth:`DelayedStore.hold`, which rewrites its
``x-delay`` to ``-delay`` (signedint, as the plugin writes it on routing) right away, so
that releasing it needs no look at its headers:

* a *persistent* message in a *durable* exchange (with a data directory) is appended to
  the exchange's own log (a ``storage.QueueLog`` in the node's ``MessageStore``, key
  ``Persistence.delayed_key``), the record's time field holding its due time in ms; the
  outcome is ``PERSISTED``, so a publisher confirm waits for the fsync.  Only
  ``(due << 64) | position`` stays in RAM: one int in a heap (~48 bytes) plus the log's
  5 bytes per record; the body stays on disk until the message is due.
* any other message stays in RAM (``ram``, by a sequence number that takes the place of
  the position, with bit 63 set) and counts in ``node.queued_bytes``: the memory alarm
  bounds it, as it bounds queues.

One timer per store, set for the earliest due time (``_schedule``): never one per
message.  When it fires, every entry due (up to ``BATCH`` per loop iteration) leaves the
heap in due order (publish order within a millisecond); the logged ones are read back
with one ``pread`` per run of near records (``QueueLog.read_records``), and they are
routed as the exchange's ``x-delayed-type`` (``VHost.route`` from its inner exchange: the
same bindings, exchange-to-exchange bindings and alternate exchange).  Their records are acked once the fsync after that routing has completed
(so a message routed into a durable queue is on disk there before it leaves this log: a
crash in between routes it again after the restart, never loses it).

Read-ahead: a record written long ago may have left the page cache (seen here: a
release of 85 messages held the loop 0.28 s in ``pread``, waiting for the disk).  So the
entries due within ``AHEAD_MS`` leave the heap early for ``soon`` (a second heap: a
message held since with a shorter delay may be due before them; the release takes from
both in due order), and their records are asked of the kernel at once
(``QueueLog.will_need``, ``posix_fadvise(WILLNEED)``: the disk reads them in the
background); the timer wakes ``AHEAD_MS`` before a logged message held longer than
twice that is due.  Compaction asks for the segment it rewrites one tick ahead.

A logged message's BCC keys (``Message.bcc``: its ``BCC`` header was removed before it
got here, as RabbitMQ removes it) go into the record's header table as a ``BCC`` field
again, appended last, the record's flags saying so (``_F_BCC``); on release that field
is taken out again (the header as ``released_header`` made it, byte for byte) and the
keys route the message as they would have without the delay.

Compaction: records are acked in due order, not append order, so the log's segments
stay partly live (one long delay pins a segment).  The persistence tick calls
:meth:`DelayedStore.maybe_compact`: once the log's files exceed twice its live bytes by a
segment, it rewrites the sparsest segment(s) over twice their live bytes
(``COMPACT_SEGMENTS`` per tick, ~12 ms per 8 MiB segment: the loop is never held for a
whole pass, due messages keep their time).  The heap's entries keep the positions they
were given (rewriting a million of them per pass would hold the loop ~0.4 s): each
rewritten segment gets a translation (``_moves``: its records' first offsets, sorted,
and where they are now; composed over later rewrites, dropped with the segment), looked
up when an entry is released.  Released records waiting for their ack
(``_AckWhenSynced``: current positions) are moved at once.

Recovery (the durable exchange is declared again from the definitions) scans the log,
takes each record's due time from its time field, and schedules the first: late ones go
at once, in due order.
"""

from __future__ import annotations

import heapq
import logging
import math
import struct
import time
from array import array
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from leveret.broker.core.deadletter import cc_keys
from leveret.broker.core.message import NAMES, Message, exchange_rk
from leveret.broker.core.queue import ACCEPTED, PERSISTED, REFUSED
from leveret.protocol import properties as P
from leveret.protocol.body import Body
from leveret.storage import record

if TYPE_CHECKING:
    from leveret.broker.core.exchange import DelayedExchange
    from leveret.broker.core.vhost import VHost
    from leveret.storage import QueueLog

log = logging.getLogger("leveret.delayed")

_MASK = (1 << 32) - 1  # the offset part of a log position
_GONE = _MASK  # Moves: the entry of a record released since
_SLOT = (1 << 64) - 1  # the low 64 bits of a heap entry: a log position or a RAM slot
_RAM = 1 << 63  # a RAM slot (positions stay below: segment numbers are < 2**31)
BATCH = 4096  # entries released per loop iteration at most
MAX_FDS = 512  # read fds and ack-file fds the log keeps open, each (4 GiB of 8 MiB segments)
_NEAR = 1 << 16  # records closer than this in the log are read back in one pread
_TS = struct.Struct(">d")  # the record's time field (after its flags byte)
COMPACT_SEGMENTS = 1  # delayed-log segments rewritten per persistence tick at most
AHEAD_MS = 1000  # logged entries due this soon leave the heap, their records read ahead
AHEAD_MAX = 50_000  # entries taken out of the heap ahead of their time at most
_F_BCC = 2  # record flag: the header's table ends with a BCC field (to take out on release)


def _with_bcc(header: bytes, fields: dict[bytes, bytes], bcc: list[str]) -> bytes:
    """``header`` (whose table is ``fields``) with a ``BCC`` field of ``bcc`` appended
    last: what a logged record keeps of the BCC keys."""
    value = P.array_value([P.longstr_value(k) for k in bcc])
    return P.rewrite(header, {P.F_HEADERS: P.table_bytes({**fields, b"BCC": value})})


def _without_bcc(msg: Message) -> None:
    """Take the ``BCC`` field :func:`_with_bcc` added out of ``msg``'s header again (every
    other byte as ``released_header`` made them) into ``msg.bcc``."""
    at = msg.props.get("_headers_at")
    if at is None:
        return
    fields = P.table_fields(msg.header, at)
    raw = fields.pop(b"BCC", None)
    if raw is None:
        return
    msg.bcc = cc_keys({"BCC": P.field_value(raw)}, "BCC") or None
    msg.set_header(P.rewrite(msg.header, {P.F_HEADERS: P.table_bytes(fields)}))


def _now_ms() -> float:
    return time.time() * 1000.0


def released_header(header: bytes, fields: dict[bytes, bytes], delay: int) -> bytes:
    """The content header with ``x-delay`` rewritten to ``-delay`` (signedint, as the
    plugin does; a long below -2**31), every other byte as it was.  Done when the message
    is taken, so releasing it needs no look at its headers."""
    fields[b"x-delay"] = P.signedint_value(-delay) if delay <= 1 << 31 else P.long_value(-delay)
    return P.rewrite(header, {P.F_HEADERS: P.table_bytes(fields)})


class Moves:
    """Where compaction moved a log's records, by the positions they were written at: per
    rewritten segment, its moved records' first offsets (sorted) and their offsets now,
    composed over later rewrites of the segment.  ~8 bytes per moved record; a segment's
    entry goes with the segment."""

    __slots__ = ("segs",)

    def __init__(self) -> None:
        self.segs: dict[int, tuple[array[int], array[int]]] = {}

    def __bool__(self) -> bool:
        return bool(self.segs)

    def apply(self, moved: dict[int, int], released: set[int] | frozenset[int] = frozenset()) -> None:
        """Take in one compaction's ``{position before: position after}``; ``released``:
        positions (before) of records no longer held here (released, waiting for their
        ack: moved by their waiter, no entry here)."""
        by_seg: dict[int, dict[int, int]] = {}
        for old, new in moved.items():
            if old not in released:
                by_seg.setdefault(old >> 32, {})[old & _MASK] = new & _MASK
        for n, now in by_seg.items():
            table: dict[int, int] = {}
            prior = self.segs.get(n)
            if prior is not None:  # first offset -> offset before this rewrite: compose
                for first, before in zip(*prior, strict=True):
                    if before != _GONE:  # (a released record's entry goes)
                        table[first] = now.pop(before, before)
            table.update(now)  # moved for the first time: the offset before was the first
            firsts = sorted(table)
            self.segs[n] = (array("I", firsts), array("I", [table[f] for f in firsts]))

    def current(self, pos: int, take: bool = False) -> int:
        """Where the record written at ``pos`` is now; ``take``: and forget it (it is
        being released: its offset may be another record's after the next rewrite)."""
        t = self.segs.get(pos >> 32)
        if t is None:
            return pos
        firsts, now = t
        off = pos & _MASK
        i = bisect_left(firsts, off)
        if i < len(firsts) and firsts[i] == off:
            cur = now[i]
            if take:
                now[i] = _GONE
            return (pos & ~_MASK) | cur
        return pos

    def take(self, pos: int) -> int:
        return self.current(pos, True)

    def forget(self, exists: Any) -> None:
        """Drop the entries of segments for which ``exists(n)`` is false (fully acked)."""
        for n in [n for n in self.segs if not exists(n)]:
            del self.segs[n]

    def clear(self) -> None:
        self.segs.clear()


class _AckWhenSynced:
    """Group-commit waiter: acks released records once what they were routed into is on
    disk."""

    __slots__ = ("store", "positions")

    def __init__(self, store: DelayedStore, positions: list[int]) -> None:
        self.store = store
        self.positions = positions  # (moved by DelayedStore.maybe_compact while waiting)
        store.unacked.add(self)

    def sync_started(self) -> None:
        pass

    def synced(self, ok: bool) -> None:
        store = self.store
        qlog = store.log
        if store.closed or qlog is None:
            return
        if not ok:  # (the routed copies may not be on disk: keep ours, ask again)
            persistence = store.node.persistence
            if persistence is not None:
                persistence.request_sync(self)
            return
        store.unacked.discard(self)
        for pos in self.positions:
            qlog.ack(pos)


class DelayedStore:
    """The messages one delayed exchange holds (see the module docstring)."""

    def __init__(self, vhost: VHost, exchange: DelayedExchange) -> None:
        self.vhost = vhost
        self.node = vhost.node
        self.exchange = exchange
        self.heap: list[int] = []  # (due ms << 64) | slot
        # entries due within AHEAD_MS, taken out of the heap (their records asked of the
        # disk ahead: see _ahead); a heap too (a message held since, with a shorter
        # delay, may come in before them), released merged with the other in due order
        self.soon: list[int] = []
        self._advised: list[int] = []  # segments read ahead for the next compaction
        self.ram: dict[int, Message] = {}  # RAM slot -> message
        self.count = 0  # messages held (messages_delayed)
        self.ram_bytes = 0  # bodies held in RAM (also in node.queued_bytes)
        self.closed = False
        self._seq = 0
        self._timer: Any = None
        self._timer_due: float | None = None  # what the timer is set for (ms; 0: at once)
        self.log: QueueLog | None = None
        self.key: str | None = None
        # released records not yet acked (their waiters hold positions compaction moves)
        self.unacked: set[_AckWhenSynced] = set()
        self._moves = Moves()  # where compaction moved the records the heap names
        persistence = self.node.persistence
        if exchange.durable and persistence is not None:
            self.key = persistence.delayed_key(vhost.name, exchange.name)
            persistence.delayed_stores.add(self)  # (compacted by its tick)
            self.log = persistence.store.open_queue(self.key)
            # due messages are read back, and acked, all over the log: keep its segments'
            # files open rather than open and close (and fsync) one per read or ack
            self.log.max_fds = MAX_FDS
            self._recover()

    def _recover(self) -> None:
        assert self.log is not None
        heap = self.heap
        unpack = _TS.unpack_from

        def on_record(pos: int, payload: memoryview) -> None:
            heap.append((int(unpack(payload, 1)[0]) << 64) | pos)

        self.log.recover(on_record)
        heapq.heapify(heap)
        self.count = len(heap)
        if heap:
            log.info("delayed exchange %r in vhost %r: %d messages recovered", self.exchange.name, self.vhost.name, len(heap))
            self._schedule(heap[0] >> 64)

    # ------------------------------------------------------------------ holding

    def hold(self, msg: Message, delay: int, fields: dict[bytes, bytes]) -> int:
        """Keep ``msg`` for ``delay`` ms (``fields``: its raw header table, see
        ``exchange.message_delay``); the :class:`Enqueued` outcome."""
        if self.closed:
            return ACCEPTED
        due = math.ceil(_now_ms()) + delay  # (never before delay ms have passed)
        header = released_header(msg.header, fields, delay)
        qlog = self.log
        if qlog is not None and msg.persistent:
            body = msg.body
            flags = 0
            if msg.bcc:
                header = _with_bcc(header, fields, msg.bcc)
                flags = _F_BCC
            if body.__class__ is Body:
                payload = record.encode_parts(flags, float(due), msg.ex_rk, header, body)  # type: ignore[arg-type]
            else:
                payload = record.encode(flags, float(due), msg.ex_rk, header, body)  # type: ignore[arg-type]
            try:
                slot = qlog.append(payload)
            except OSError as exc:
                self.node.disk_error(exc)
                return REFUSED
            outcome = PERSISTED
        else:
            self._seq += 1
            slot = _RAM | self._seq
            held = Message(msg.ex_rk, msg.exchange, msg.routing_key, header, msg.body)  # (msg may be in queues too)
            held.bcc = msg.bcc
            self.ram[slot] = held
            size = msg.size
            self.ram_bytes += size
            self.node.queued_bytes += size
            outcome = ACCEPTED
        heapq.heappush(self.heap, (due << 64) | slot)
        self.count += 1
        # (a logged record held long may have left the page cache by its time: wake up
        # AHEAD_MS early to read it ahead; a short delay finds it still there)
        wake = due - AHEAD_MS if outcome == PERSISTED and delay > 2 * AHEAD_MS else due
        if self._timer_due is None or wake < self._timer_due:
            self._schedule(wake)
        return outcome

    def _schedule(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        # (whole ms, rounded up: the loop's timers count whole ms from the time its
        # iteration began, and round; a fraction of a ms comes back at once, before the
        # message is due, over and over until it is: 15 empty fires per ms were seen)
        wait = due - _now_ms()
        self._timer = self.node.loop.call_later(math.ceil(wait) / 1000.0 if wait > 0 else 0.0, self._fire)

    # ------------------------------------------------------------------ releasing

    def _fire(self) -> None:
        self._timer = None
        self._timer_due = None
        if self.closed:
            return
        now = _now_ms()
        heap, soon = self.heap, self.soon
        batch: list[int] = []
        pop = heapq.heappop
        while len(batch) < BATCH:
            # due order over both: a message held after the entries in soon left the heap
            # may be due before them
            if soon and (not heap or soon[0] < heap[0]):
                if soon[0] >> 64 > now:
                    break
                batch.append(pop(soon))
            elif heap and heap[0] >> 64 <= now:
                batch.append(pop(heap))
            else:
                break
        try:
            if batch:
                self._release(batch)
        finally:
            more = self._ahead(now)
            if len(batch) >= BATCH or more:
                self._schedule(0)
            else:
                wake = self._next_wake()
                if wake is not None:
                    self._schedule(wake)
            if batch:
                self.node.flush_all()

    def _next_wake(self) -> int | None:
        """When the timer is next needed: the first due entry, or the time to read the
        heap's first ahead (AHEAD_MS before it is due)."""
        soon, heap = self.soon, self.heap
        wake = soon[0] >> 64 if soon else None
        if heap:
            due = heap[0] >> 64
            if self.log is not None and len(soon) < AHEAD_MAX:
                due -= AHEAD_MS
            wake = due if wake is None else min(wake, due)
        return wake

    def _ahead(self, now: float) -> bool:
        """Take the heap's entries due within AHEAD_MS (up to BATCH per call, AHEAD_MAX in
        all) into ``soon`` and ask the kernel for their records (``QueueLog.will_need``):
        a record written long ago may be on disk only, and reading it when due would
        hold the loop for the disk (up to 0.47 s per release was seen).  True if more are
        left to take now."""
        qlog = self.log
        heap, soon = self.heap, self.soon
        if qlog is None or not heap:
            return False
        horizon = int(now + AHEAD_MS) << 64 | _SLOT
        room = min(BATCH, AHEAD_MAX - len(soon))
        if room <= 0 or heap[0] > horizon:
            return False
        pop = heapq.heappop
        taken: list[int] = []
        while heap and heap[0] <= horizon and len(taken) < room:
            taken.append(pop(heap))
        push = heapq.heappush
        for k in taken:
            push(soon, k)  # (O(1) each: they come in due order)
        moves = self._moves
        cur = moves.current if moves else None
        positions = sorted(
            (k & _SLOT if cur is None else cur(k & _SLOT)) for k in taken if not k & _RAM
        )
        if positions:
            qlog.will_need(positions, _NEAR)
        return bool(heap) and heap[0] <= horizon and len(soon) < AHEAD_MAX

    def _release(self, batch: list[int]) -> None:
        """Route the entries of ``batch`` (in due order) through the exchange."""
        moves = self._moves
        if moves:
            take = moves.take
            where = {slot: take(slot) for k in batch if not (slot := k & _SLOT) & _RAM}
            positions = sorted(where.values())
        else:
            where = None
            positions = sorted(k & _SLOT for k in batch if not k & _RAM)
        records: dict[int, Any] = {}
        if positions:
            assert self.log is not None
            read = self.log.read_records
            # records due together are scattered over the log: read runs of near ones
            # with one pread each, not the gaps between far ones
            start = 0
            for i in range(1, len(positions) + 1):
                if i == len(positions) or positions[i] - positions[i - 1] > _NEAR:
                    run = positions[start:i]
                    records.update(zip(run, read(run), strict=True))
                    start = i
        self.count -= len(batch)
        persisted = 0
        for k in batch:
            slot = k & _SLOT
            if slot & _RAM:
                msg = self.ram.pop(slot)
                self.ram_bytes -= msg.size
                self.node.queued_bytes -= msg.size
            else:
                rec = records[slot if where is None else where[slot]]
                if isinstance(rec, Exception):
                    log.error("delayed exchange %r: cannot read a held message back: %s", self.exchange.name, rec)
                    continue
                flags, _, ex_rk, header, body = rec
                names = NAMES.get(ex_rk) or exchange_rk(ex_rk)
                msg = Message(ex_rk, names[0], names[1], header, body)
                if flags & _F_BCC:
                    _without_bcc(msg)
            try:
                persisted |= self._route(msg)
            except Exception:  # (one bad message must not stop the others)
                log.exception("delayed exchange %r: routing a due message failed", self.exchange.name)
        if positions:
            persistence = self.node.persistence
            if persisted and persistence is not None:
                # (a copy went to a queue's log: ours go once that is on disk)
                persistence.request_sync(_AckWhenSynced(self, positions))
            else:
                # nothing of them needs the disk now (the acks are fsynced by the next
                # periodic sync; a crash before that routes them again)
                _AckWhenSynced(self, positions).synced(True)

    def _route(self, msg: Message) -> int:
        """Route a due message (its header already says ``-delay``) as the exchange's
        ``x-delayed-type``, through its inner exchange: the same bindings, exchange
        bindings and alternate exchange, without the delay check; PERSISTED if a queue
        wrote it to its log."""
        x = self.exchange.inner
        vhost = self.vhost
        extra = cc_keys(msg.headers, "CC") if b"\x02CC" in msg.header else []
        if msg.bcc:
            extra += msg.bcc
        if extra:
            queues: Any = vhost.route_keys(x, (msg.routing_key, *extra), msg)
        else:
            queues = vhost.route(x, msg.routing_key, msg)
        return vhost.enqueue(queues, msg) & PERSISTED if queues else 0

    # ------------------------------------------------------------------ compaction

    def maybe_compact(self) -> None:
        """Rewrite the sparsest segment(s) of the log once its files exceed twice its
        live bytes by a segment (see the module docstring): ``COMPACT_SEGMENTS`` per
        call, ~12 ms each for 8 MiB."""
        qlog = self.log
        if qlog is None or self.closed:
            return
        self._moves.forget(qlog.has_segment)
        if qlog.disk_bytes - 2 * qlog.live_bytes <= qlog.segment_size:
            return
        picks = qlog.compaction_candidates(limit=COMPACT_SEGMENTS)
        if not picks:
            return
        if picks != self._advised:
            # the rewrite reads the whole segment on the loop, and a segment written long
            # ago may be on disk only: ask the kernel for it now, rewrite it on a later
            # tick if it is still the sparsest.  (Rewriting what was asked for even when
            # another had become sparser rewrote more live bytes for what it freed: in a
            # run of a million, 142 rewrites of 14.9 ms on average against 104 of 10.7,
            # 45 against 35 us of CPU per release, and a p99 of 24 ms against 12.)
            qlog.will_need_segments(picks)
            self._advised = picks
            return
        started = time.monotonic()
        moved = qlog.compact(limit=COMPACT_SEGMENTS, only=picks)  # (a failed rewrite is logged there)
        self._advised = qlog.compaction_candidates(limit=COMPACT_SEGMENTS)  # (the next one)
        qlog.will_need_segments(self._advised)
        if not moved:
            return
        get = moved.get
        released: set[int] = set()
        for waiter in self.unacked:
            released.update(waiter.positions)
            waiter.positions = [get(p, p) for p in waiter.positions]
        self._moves.apply(moved, released)
        log.debug(
            "delayed exchange %r in vhost %r: %d log records moved by compaction in %.3f s",
            self.exchange.name, self.vhost.name, len(moved), time.monotonic() - started,
        )

    # ------------------------------------------------------------------ lifecycle

    def close(self, delete: bool = False) -> None:
        """Stop the timer and let go of the RAM messages; ``delete`` (the exchange was
        deleted): the log goes too."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due = None
        if self.closed:
            return
        self.closed = True
        self.unacked.clear()
        self._moves.clear()
        persistence = self.node.persistence
        if persistence is not None:
            persistence.delayed_stores.discard(self)
        self.node.queued_bytes -= self.ram_bytes
        self.ram_bytes = 0
        self.ram.clear()
        if delete:
            self.heap = []
            self.soon = []
            self.count = 0
            if self.key is not None and persistence is not None:
                persistence.store.delete_queue(self.key)
            self.log = None
