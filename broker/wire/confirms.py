"""Publisher confirms of one channel (confirm.select).

Publishes are numbered from 1.  A publish is confirmed (basic.ack) once every queue took
it and, if a queue wrote it to its log, once the fsync covering that write is done (group
commit: the channel waits in ``wait_sync``); it is nacked when a queue refused it.  Acks
are sent as one multiple-ack per flush, up to ``upto``; a nack never lets a later
multiple-ack cover a publish that still waits for its fsync.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from leveret.broker.core.queue import PERSISTED, REFUSED
from leveret.protocol import methods as M

if TYPE_CHECKING:
    from leveret.broker.wire.channel import Channel


class Confirms:
    __slots__ = ("channel", "conn", "number", "publish_seq", "counted", "upto", "sent", "wait_sync", "sync_snapshot", "nacked_ahead")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.conn = channel.conn
        self.number = channel.number
        self.publish_seq = 0
        self.counted = 0  # of publish_seq: added to the node's received_confirm total at close
        self.upto = 0  # every publish <= this is ready to be acked
        self.sent = 0  # highest publish acked/nacked on the wire
        self.wait_sync: deque[int] = deque()  # persisted publishes awaiting fsync
        self.sync_snapshot = 0
        # publishes nacked while an earlier one waits for its fsync: a later multiple ack
        # covers them (as RabbitMQ's does), but they are not counted as confirmed
        self.nacked_ahead: list[int] = []

    def published(self, outcome: int) -> bool:
        """The current publish (``publish_seq``) was routed with ``outcome`` (an
        :class:`~leveret.broker.core.queue.Enqueued` value).  True: it waits for an fsync."""
        seq = self.publish_seq
        if outcome & REFUSED:
            self.nack(seq)
        elif outcome & PERSISTED:
            self.wait_sync.append(seq)
            return True
        elif not self.wait_sync:
            self.upto = seq
            self.conn.want_confirm_flush(self.channel)
        return False

    def nack(self, seq: int) -> None:
        """basic.nack for one publish, after acking everything confirmed before it."""
        ws = self.wait_sync
        waiting_before = bool(ws) and ws[0] < seq
        if not waiting_before:
            # every earlier publish is settled: ack those not acked yet
            self.upto = max(self.upto, seq - 1)
        if self.upto > self.sent:
            self.flush()
        self.conn.send(M.confirm_frame(self.number, seq, False, nack=True))
        if not waiting_before:
            # the watermark may only pass seq when no earlier publish still waits for
            # fsync (a later multiple ack must not cover it)
            self.sent = self.upto = seq
        else:
            self.nacked_ahead.append(seq)

    def flush(self) -> None:
        """Send one basic.ack covering every publish confirmed since the last flush."""
        upto = self.upto
        sent = self.sent
        if upto > sent:
            n = upto - sent
            top = upto
            if self.nacked_ahead:
                nacked = {s for s in self.nacked_ahead if s <= upto}
                n -= len(nacked)
                self.nacked_ahead = [s for s in self.nacked_ahead if s > upto]
                # the ack ends at a publish that was not nacked: a nacked one (say after
                # a failed fsync settled those before it) is never acked by its own tag
                while top > sent and top in nacked:
                    top -= 1
            if top > sent:
                self.conn.send(M.confirm_frame(self.number, top, top - sent > 1))
            self.channel.vhost.stats_confirm += n
            self.sent = upto

    # group commit (leveret.broker.core.persistence.Syncer), through the channel
    def sync_started(self) -> None:
        self.sync_snapshot = self.wait_sync[-1] if self.wait_sync else 0

    def synced(self, ok: bool) -> None:
        upto = self.sync_snapshot
        ws = self.wait_sync
        nacked: list[int] = []
        while ws and ws[0] <= upto:
            seq = ws.popleft()
            if not ok:
                nacked.append(seq)
        for seq in nacked:
            self.nack(seq)
        # (after a failed fsync too: the publishes between the nacked ones are fine)
        self.upto = max(self.upto, ws[0] - 1 if ws else self.publish_seq)
        self.conn.want_confirm_flush(self.channel)
