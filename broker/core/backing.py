"""A queue's backing store: where its ready messages are kept, and their seqs.

:class:`BackingQueue` is to :class:`~leveret.broker.core.queue.Queue` what
``rabbit_variable_queue`` is to ``rabbit_amqqueue_process``: the queue decides *what*
happens to a message (TTL, limits, dead lettering, which consumer), the backing store keeps
the ready ones in order and in memory or on disk:

* ready entries ``(seq, message, redelivered, expires_at)`` in a deque (one deque per
  priority level for ``x-max-priority``), with their body bytes counted in
  ``ready_bytes`` and in the node's ``queued_bytes`` (the memory alarm);
* for a durable queue, its ``storage.QueueLog`` (``log``): persistent messages get a
  record;
* paging: past ``PAGE_MAX`` ready messages in RAM new ones are only kept as 8-byte log
  positions (``tail``) and read back ``PAGE_BATCH`` at a time.  A durable queue pages to
  its own log; any other queue to an *overflow log* of its own (an ephemeral
  ``QueueLog``: no fsync, no ack files, deleted at restart), opened when it first needs
  one.  Its records are acked as they are read back (the messages are in RAM then, and
  need not survive a restart), and once all are read back it is dropped from use
  (``plog`` back to None), so that a queue that has drained is back on the fast path;
* compaction of the durable log, moving every seq it holds.

Seqs.  ``seq`` increases per queue, so a requeued message goes back to its place.  In a
durable queue a message with a log record has ``seq = position << SEQ_SHIFT``; a message
without one gets the integers after the seq before it (``seq & SEQ_MASK != 0``).  So seq
order is queue order, and an ack finds its record from the seq alone.
"""

from __future__ import annotations

import logging
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from leveret.broker.core.message import NAMES, Message, exchange_rk, record_parts, to_record
from leveret.protocol.body import Body
from leveret.protocol.properties import FLAGS_HI, HI_EXPIRATION
from leveret.storage.log import VIEW_MIN, VIEW_RATIO
from leveret.storage.record import F_TRANSIENT

if TYPE_CHECKING:
    from leveret.broker.core.node import Node

log = logging.getLogger("leveret.queue")

Entry = tuple[int, Message, bool, float]

SEQ_SHIFT = 32
SEQ_MASK = (1 << SEQ_SHIFT) - 1
#: ready messages kept in RAM before a queue pages to its log, at most: a queue's share of
#: the node's memory budget (core.memory) is at most this
PAGE_MAX = 20000
PAGE_MAX_BYTES = 64 << 20  # ... or body bytes (large messages)
#: a queue is *backlogged* (with consumers: in flow) from here on, below the paging
#: thresholds, so that flow holds a publisher's backlog in RAM rather than at the edge
#: where every message past it is written out and read back (must be <= the above)
FLOW_LEN = PAGE_MAX * 3 // 4
FLOW_BYTES = PAGE_MAX_BYTES // 2
SHORT, LONG, PAGING = 0, 1, 2  # BackingQueue.length()
#: the queue counters (``BackingQueue.stats_<name>``) a vhost keeps for its deleted queues
#: (``VHost.stats_queue_gone``) and the node for its deleted vhosts and direct reply-to
#: (``Totals.stats_queue_gone``, broker/totals.py), beside deliver and ack (which have their own)
GONE_STATS = ("publish", "redeliver", "deliver_manual", "get", "get_noack", "get_empty")

#: a message in RAM costs ~512 bytes besides its body (the Message, its entry tuple, the
#: header bytes): the memory budget counts that too (core.memory)
MESSAGE_COST = 512
#: a message with a body this large is written to a log from its parts (record_parts)
PARTS_MIN = 4096
PAGE_BATCH = 2000  # messages loaded back from the log at a time
PAGE_BATCH_BYTES = 16 << 20  # ... or at most about this many body bytes
#: a queue with consumers draining from its log reads ahead: with fewer than READ_AHEAD
#: ready messages in RAM, READ_AHEAD_CHUNK more are read back on the next loop iteration
#: (``Queue._read_ahead``), while its consumers work on what they were just sent, rather
#: than PAGE_BATCH at once when RAM runs out, while they wait for it
READ_AHEAD = 500
READ_AHEAD_CHUNK = 100
#: ... and only while fewer than this many body bytes are ready in RAM, at most this many
#: read at a time (large messages: a few are enough to keep consumers busy)
READ_AHEAD_BYTES = 8 << 20
READ_AHEAD_CHUNK_BYTES = 4 << 20
#: records read back with one read_records call: about this many body bytes (from the
#: average size of what is paged out), so a batch of large messages is not read at once
#: past PAGE_BATCH_BYTES (at most 256 records; from an average of VIEW_MIN on, VIEW_RATIO)
REFILL_CHUNK_BYTES = 4 << 20


class PriorityDeque:
    """The deque interface the backing store uses, over one deque per priority level."""

    def __init__(self, max_priority: int) -> None:
        self.max = max_priority
        self.levels: list[deque[Entry]] = [deque() for _ in range(max_priority + 1)]
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __iter__(self) -> Iterator[Entry]:
        for d in reversed(self.levels):
            yield from d

    def __getitem__(self, i: int) -> Entry:
        if i != 0:
            raise IndexError("only the head can be read")
        for d in reversed(self.levels):
            if d:
                return d[0]
        raise IndexError("empty")

    def _level(self, e: Entry) -> deque[Entry]:
        p = e[1].priority
        return self.levels[p if p <= self.max else self.max]

    def append(self, e: Entry) -> None:
        self._level(e).append(e)
        self.n += 1

    def popleft(self) -> Entry:
        for d in reversed(self.levels):
            if d:
                self.n -= 1
                return d.popleft()
        raise IndexError("pop from an empty queue")

    def clear(self) -> None:
        for d in self.levels:
            d.clear()
        self.n = 0

    def put_back(self, entries: list[Entry]) -> None:
        by_level: dict[int, list[Entry]] = {}
        for e in entries:
            p = e[1].priority
            by_level.setdefault(p if p <= self.max else self.max, []).append(e)
        for p, es in by_level.items():
            self.levels[p] = _merge(self.levels[p], es)
        self.n += len(entries)


def _merge(d: deque[Entry], entries: list[Entry]) -> deque[Entry]:
    """Put ``entries`` (sorted by seq) back into ``d`` at their original places."""
    if not d or entries[-1][0] < d[0][0]:
        d.extendleft(reversed(entries))
        return d
    return deque(sorted([*d, *entries], key=lambda e: e[0]))


class BackingQueue:
    def __init__(self, node: Node, max_priority: int | None, overflow: Callable[[], Any] | None = None) -> None:
        self.node = node
        #: the thresholds of length(): this queue's share of the node's memory budget,
        #: set by it (core.memory.MemoryBudget.update) when they change; a bare node
        #: (a test's) has no budget: the module's default one
        budget: Any = getattr(node, "memory", None)
        if budget is None:
            from leveret.broker.core import memory

            budget = memory.DEFAULT
        self.flow_len, self.flow_bytes, self.page_len, self.page_bytes = budget.thresholds
        self.max_priority = max_priority
        self.open_overflow = overflow  # opens an overflow log (None: this node has no disk)
        #: ready entries in RAM, in delivery order (the queue's fast path appends here)
        self.messages: deque[Entry] | PriorityDeque = PriorityDeque(max_priority) if max_priority else deque()
        self.ready_bytes = 0  # body bytes of the entries in RAM
        self.next_seq = 0
        # durable queues: the log; every queue: the log it pages to (the durable log, or
        # the overflow log while it holds records), and the positions paged out to it
        self.log: Any = None
        self.plog: Any = None
        self.overflow: Any = None
        self.tail: array[int] = array("Q")
        self.tail_start = 0
        self.tail_bytes = 0  # body bytes of the paged-out messages (x-max-length-bytes)
        self.recovered_delivered: set[int] | frozenset[int] = frozenset()
        self.reading_ahead = False  # a read-ahead is scheduled (Queue._read_ahead)
        #: a quorum queue's look at each message read back from its log:
        #: ``(seq, message, delivered before a crash) -> (seq, message, redelivered)``
        self.recovered_hook: Callable[[int, Message, bool], tuple[int, Message, bool]] | None = None
        # the queue's message counters (the management API samples them into rates)
        self.stats_publish = 0
        self.stats_deliver = 0
        self.stats_redeliver = 0
        self.stats_ack = 0
        # ... of stats_deliver: the manual-ack ones (consume or get; counted in the ack branch
        # of UnackedTracker.hand_out, so the no-ack path pays nothing), the basic.get-oks and
        # the no-ack get-oks; and the basic.gets that found the queue empty.  (Prometheus'
        # delivered_{consume,get}_{auto,manual}_ack split is derived from these)
        self.stats_deliver_manual = 0
        self.stats_get = 0
        self.stats_get_noack = 0
        self.stats_get_empty = 0
        # persistent messages (delivery mode 2 with a record in the durable log), ready and
        # unacked, as RabbitMQ's messages_persistent / message_bytes_persistent: added where
        # one is written (:meth:`write`, recovery), taken off where its record is acked
        # (:meth:`discard`, :meth:`purge`); ``tail_persistent*``: those paged out
        self.persistent_count = 0
        self.persistent_bytes = 0
        self.tail_persistent = 0
        self.tail_persistent_bytes = 0

    # ---------------------------------------------------------------- counts

    def total(self) -> int:
        """Ready messages, in RAM and paged out."""
        return len(self.messages) + len(self.tail) - self.tail_start

    def total_bytes(self) -> int:
        return self.ready_bytes + self.tail_bytes

    def empty(self) -> bool:
        return not self.messages and self.tail_start >= len(self.tail)

    def head(self) -> Entry | None:
        """The entry that would be delivered next, if it is in RAM (else None)."""
        msgs = self.messages
        return msgs[0] if msgs else None

    def __iter__(self) -> Iterator[Entry]:
        """The ready entries in RAM, in delivery order."""
        return iter(self.messages)

    # ---------------------------------------------------------------- adding

    def take_seq(self) -> int:
        """The seq of a message that gets no log record."""
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    def length(self) -> int:
        """The rule for a long queue, as a state:

        * ``SHORT``: fewer than ``flow_len`` messages (and ``flow_bytes`` of bodies) in
          RAM, nothing paged out;
        * ``LONG`` (*backlogged*): from ``flow_len`` messages (``flow_bytes``), all in
          RAM.  With consumers such a queue is in flow (``Queue.in_flow``);
        * ``PAGING`` (backlogged too): messages paged out, or from ``page_len`` messages
          (``page_bytes``) in RAM: new ready messages go to disk (:meth:`wants_page`).

        The thresholds are the queue's fair share of the node's memory budget
        (``core.memory.MemoryBudget``: at most FLOW_LEN / FLOW_BYTES and PAGE_MAX /
        PAGE_MAX_BYTES, a queue's thresholds on its own).

        Only a SHORT queue takes the queue's hot path; a LONG one its warm path."""
        if self.tail_start < len(self.tail):
            return PAGING
        n = len(self.messages)
        b = self.ready_bytes
        if n < self.flow_len and b < self.flow_bytes:
            return SHORT
        if n < self.page_len and b < self.page_bytes:
            return LONG
        return PAGING

    def backlogged(self) -> bool:
        """LONG or PAGING (:meth:`length`)."""
        return self.length() != SHORT

    def wants_page(self) -> bool:
        """A PAGING queue keeps new ready messages on disk only (opening its overflow
        log if it needs one; False when it cannot, or for a priority queue)."""
        if self.max_priority or self.length() != PAGING:
            return False
        if self.plog is None:
            if self.overflow is None and self.open_overflow is not None:
                try:
                    self.overflow = self.open_overflow()
                except OSError as exc:
                    log.error("cannot open an overflow log, keeping the backlog in memory: %s", exc)
                    self.open_overflow = None
            self.plog = self.overflow
        return self.plog is not None

    def write(self, msg: Message, persistent: bool) -> int:
        """Append ``msg`` to the durable log, or (paging a transient message) to the log
        it pages to (raises OSError); its seq, which follows the record."""
        qlog = self.log if persistent else self.plog
        if msg.size < PARTS_MIN:
            pos = qlog.append(to_record(msg, transient=not persistent))
        else:  # (a large body is not joined into a record first: QueueLog.append_parts)
            pos = qlog.append_parts(record_parts(msg, transient=not persistent))
        if persistent:
            self.persistent_count += 1
            self.persistent_bytes += msg.size
        seq = pos << SEQ_SHIFT
        self.next_seq = seq + 1
        return seq

    def append(self, seq: int, msg: Message, expires_at: float) -> None:
        """A ready message, kept in RAM."""
        self.messages.append((seq, msg, False, expires_at))
        size = msg.size
        self.ready_bytes += size
        self.node.queued_bytes += size

    def page(self, seq: int, msg: Message, persistent: bool = False) -> None:
        """A ready message already written with :meth:`write`, kept on disk only."""
        self.tail.append(seq >> SEQ_SHIFT)
        size = msg.size
        self.tail_bytes += size
        if persistent:
            self.tail_persistent += 1
            self.tail_persistent_bytes += size

    def put_back(self, entries: list[Entry]) -> None:
        """Requeued entries (sorted by seq) go back to their places."""
        added = 0
        for e in entries:
            added += e[1].size
        self.ready_bytes += added
        self.node.queued_bytes += added
        msgs = self.messages
        if isinstance(msgs, PriorityDeque):
            msgs.put_back(entries)
        else:
            self.messages = _merge(msgs, entries)

    def put_returned(self, entries: list[Entry], ahead: bool) -> None:
        """Returned entries of a quorum queue, in return order: ``ahead`` of the ready
        messages (after the returns still waiting there, the redelivered entries at the
        head), else behind them, on disk when the queue pages (each has a log record
        then: a quorum queue with a log writes every message to it)."""
        msgs = self.messages
        assert not isinstance(msgs, PriorityDeque)  # (a quorum queue has no priorities)
        if not ahead and self.tail_start < len(self.tail):
            for seq, msg, _, _ in entries:  # (redelivered when read back: see recovered_hook)
                self.tail.append(seq >> SEQ_SHIFT)
                self.tail_bytes += msg.size
            return
        added = 0
        for e in entries:
            added += e[1].size
        self.ready_bytes += added
        self.node.queued_bytes += added
        if not ahead:
            msgs.extend(entries)
            return
        i, n = 0, len(msgs)
        while i < n and msgs[i][2]:
            i += 1
        # (in one go: a channel closing may return thousands)
        msgs.rotate(-i)
        msgs.extendleft(reversed(entries))
        msgs.rotate(i)

    # ---------------------------------------------------------------- taking

    def pop(self) -> Entry:
        """Remove the head entry (in RAM: :meth:`refill` first when there is none)."""
        e = self.messages.popleft()
        size = e[1].size
        self.ready_bytes -= size
        self.node.queued_bytes -= size
        return e

    def refill(
        self, expires_at: Callable[[Message, float], float], queue_ttl: bool = True, batch: int = 0,
        max_bytes: int = 0,
    ) -> bool:
        """Load the next batch of paged-out messages from the log into RAM; False when
        there is none.  ``expires_at(msg, now)`` gives each one's expiry (0: none); it
        is only asked for messages with an expiration when not ``queue_ttl``.  A batch is
        ``batch`` (``PAGE_BATCH``) messages or about ``max_bytes`` (``PAGE_BATCH_BYTES``)
        of bodies, whichever comes first (at least one message); a large body comes back
        as a view of what was read (a ``Body``), not copied out of it."""
        tail = self.tail
        start = self.tail_start
        n = len(tail)
        plog = self.plog
        if start >= n or plog is None:
            return False
        # a priority queue loads everything: delivery order depends on all of it
        last = n if self.max_priority else min(n, start + (batch or PAGE_BATCH))
        redelivered_set = self.recovered_delivered
        msgs = self.messages
        names_of = NAMES.get
        release = plog is self.overflow
        hook = self.recovered_hook
        loaded = 0
        pers = pers_bytes = 0  # persistent messages read back (from the durable log)
        end = start
        limit = max_bytes or PAGE_BATCH_BYTES
        # (in chunks of about REFILL_CHUNK_BYTES, so that a batch of large messages stops
        # near its byte limit: the average paged-out body tells how many records that is)
        # large bodies 4 at a time (VIEW_RATIO): each then comes back as a view of the read
        avg = self.tail_bytes // (n - start) + 1
        chunk = VIEW_RATIO if avg >= VIEW_MIN else max(1, min(256, min(limit, REFILL_CHUNK_BYTES) // avg))
        while end < last and (loaded < limit or self.max_priority):
            positions = tail[end : min(last, end + chunk)]
            end += len(positions)
            for pos, rec in zip(positions, plog.read_records(positions, True), strict=True):
                if rec.__class__ is not tuple:  # CorruptRecord, or a record we cannot decode
                    log.error("dropping unreadable record %#x: %s", pos, rec)
                    plog.ack(pos)
                    continue
                flags, ts, ex_rk, header, body = rec
                if not flags & F_TRANSIENT:
                    pers += 1
                    pers_bytes += len(body)
                names = names_of(ex_rk)
                if names is None:
                    try:
                        names = exchange_rk(ex_rk)
                    except IndexError:  # (not the two short strings of a record we wrote)
                        log.error("dropping unreadable record %#x: no exchange and routing key", pos)
                        plog.ack(pos)
                        if not flags & F_TRANSIENT:
                            self.persistent_count -= 1
                            self.persistent_bytes -= len(body)
                        continue
                if body.__class__ is memoryview:
                    body = Body((body,), len(body))
                msg = Message(ex_rk, names[0], names[1], header, body)
                msg.ts = ts
                exp = expires_at(msg, ts) if queue_ttl or header[FLAGS_HI] & HI_EXPIRATION else 0.0
                if hook is None:
                    msgs.append((pos << SEQ_SHIFT, msg, pos in redelivered_set, exp))
                else:
                    seq, msg, red = hook(pos << SEQ_SHIFT, msg, pos in redelivered_set)
                    msgs.append((seq, msg, red, exp))
                loaded += len(body)
            if release:
                # an overflow log's records are done with once read back: the messages are
                # in RAM now, and nothing of them need survive a restart (no ack later)
                plog.ack_many(positions)
        self.ready_bytes += loaded
        self.tail_bytes -= loaded
        if pers:
            self.tail_persistent -= pers
            self.tail_persistent_bytes -= pers_bytes
        self.node.queued_bytes += loaded
        if end >= n:
            self.tail = array("Q")
            self.tail_start = 0
            self.tail_bytes = 0
            self.tail_persistent = self.tail_persistent_bytes = 0
            if release and not plog.live_count:
                self.plog = None  # all read back: the queue is in RAM only again
        elif end > 65536 and end > n // 2:
            self.tail = tail[end:]
            self.tail_start = 0
        else:
            self.tail_start = end
        return True

    def discard(self, seq: int, msg: Message) -> None:
        """A message left the queue for good: ack its record in the durable log, if it
        has one.  (A message paged to the overflow log had its record acked when it was
        read back: :meth:`refill`.)"""
        log = self.log
        if log is not None and not seq & SEQ_MASK:
            log.ack(seq >> SEQ_SHIFT)
            if msg.persistent:
                self.persistent_count -= 1
                self.persistent_bytes -= msg.size

    def mark_delivered(self, seq: int) -> None:
        """A message with a log record was handed out for the first time: a crash now
        brings it back with redelivered=true."""
        if self.log is not None and not seq & SEQ_MASK:
            self.log.mark_delivered(seq >> SEQ_SHIFT)

    def purge(self) -> int:
        """Drop every ready message (acking their records); return how many there were."""
        n = self.total()
        plog = self.plog
        if plog is not None:
            tail, start = self.tail, self.tail_start
            self.tail = array("Q")
            self.tail_start = 0
            for e in self.messages:
                self.discard(e[0], e[1])
            plog.ack_many(tail[start:])
            self.persistent_count -= self.tail_persistent
            self.persistent_bytes -= self.tail_persistent_bytes
            if plog is self.overflow and not plog.live_count:
                self.plog = None
        self.tail = array("Q")
        self.tail_start = 0
        self.tail_bytes = 0
        self.tail_persistent = self.tail_persistent_bytes = 0
        self.node.queued_bytes -= self.ready_bytes
        self.messages.clear()
        self.ready_bytes = 0
        return n

    # ---------------------------------------------------------------- the log

    def attach_log(self, qlog: Any, positions: array[int], nbytes: int) -> None:
        """Durable queue: its log, and the positions (and body bytes) of the messages
        recovered from it, all ready (paged out) at first."""
        self.log = self.plog = qlog
        self.recovered_delivered = qlog.delivered
        self.tail = positions
        self.tail_start = 0
        self.tail_bytes = nbytes
        # (transient records were dropped by recovery: every one left is persistent)
        self.persistent_count = self.tail_persistent = len(positions)
        self.persistent_bytes = self.tail_persistent_bytes = nbytes
        if len(positions):
            self.next_seq = (positions[-1] << SEQ_SHIFT) + 1

    def detach_log(self) -> None:
        """The queue was deleted: its log goes (the caller deletes the files)."""
        self.log = self.plog = None

    def drop_overflow(self) -> None:
        """The queue was deleted: remove its overflow log, if it had one."""
        if self.overflow is not None:
            self.overflow.destroy()
            self.overflow = self.plog = None

    def compact(self) -> Callable[[int], int] | None:
        """Compact the log when it holds much more than the live data (for example one
        old unacked message pinning a segment).  The seqs held here are moved; the
        returned ``remap`` (None: nothing moved) is for the seqs held elsewhere
        (deliveries awaiting an ack)."""
        if self.log is None or self.max_priority:
            return None
        moved = self.log.maybe_compact()
        if not moved:
            return None

        def remap(seq: int) -> int:
            # a seq without a record counts on from the record before it: move it along
            base = seq >> SEQ_SHIFT
            return (moved.get(base, base) << SEQ_SHIFT) | (seq & SEQ_MASK)

        self.messages = deque((remap(s), m, r, e) for s, m, r, e in self.messages)
        if len(self.tail) - self.tail_start:
            self.tail = array("Q", (moved.get(p, p) for p in self.tail[self.tail_start :]))
            self.tail_start = 0
        if self.recovered_delivered:
            self.recovered_delivered = {moved.get(p, p) for p in self.recovered_delivered}
        return remap
