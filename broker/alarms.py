"""The node's resource alarms, as RabbitMQ's: the memory alarm (message bodies held in RAM,
``Broker.queued_bytes``, over ``memory_high_watermark``; cleared under 80% of it) and the
disk alarm (free space under ``disk_free_limit``, or a failed write to the message logs
until a write succeeds again).  While either is on, publishing connections are blocked
(connection.blocked) and a sweep every ``SWEEP_INTERVAL`` s drops the blocked publishers
whose peer has gone.

:class:`Alarms` is composed by :class:`leveret.broker.server.Broker`, which keeps the
public names (``check_alarm``, ``set_disk_alarm``, ``memory_alarm``...) as thin
delegations; ``Broker.alarm`` (read on the publish path) stays a plain attribute of the
node, set here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leveret.broker.server import Broker

log = logging.getLogger("leveret")

SWEEP_INTERVAL = 1.0  # during an alarm: seconds between looks for blocked peers that left
# TCP states (linux/tcp_states.h) of a socket whose peer closed or reset it
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8


def peer_gone(transport: Any) -> bool:
    """The peer closed or reset the connection, even if unread bytes are still queued
    before its end of file (Linux TCP_INFO state); False where that cannot be told."""
    if transport is None or not hasattr(socket, "TCP_INFO"):
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return True
    return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


class Alarms:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.memory_alarm = False
        self.disk_alarm = False
        self.write_failed = False  # the last write to the log failed (ENOSPC, EIO)
        self._sweep: asyncio.TimerHandle | None = None

    def stop(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def check_alarm(self) -> None:
        b = self.broker
        high = b.config.memory_high_watermark
        if not self.memory_alarm:
            if b.queued_bytes > high:
                self.memory_alarm = True
                log.warning("memory alarm: %d bytes queued > %d, blocking publishers", b.queued_bytes, high)
                self._update_alarm()
        elif b.queued_bytes < high * 0.8:
            self.memory_alarm = False
            log.warning("memory alarm cleared")
            self._update_alarm()

    def set_disk_alarm(self, on: bool, free: int = 0) -> None:
        if on == self.disk_alarm:
            return
        self.disk_alarm = on
        if on:
            log.warning("disk alarm: %d bytes free < %d, blocking publishers", free, self.broker.config.disk_free_limit)
        else:
            log.warning("disk alarm cleared")
        self._update_alarm()

    def disk_error(self, exc: OSError) -> None:
        """A write failed (ENOSPC, EIO): block publishers until a write succeeds again."""
        log.error("disk write failed: %s", exc)
        self.write_failed = True
        self.set_disk_alarm(True)

    def disk_write_ok(self) -> None:
        """A flush+fsync went through: a write failure no longer holds the disk alarm."""
        if self.write_failed:
            self.write_failed = False
            log.warning("disk writes succeed again")

    def vhosts_down(self) -> list[str]:
        """The vhosts that cannot work as they should (RabbitMQ's ``rabbit_vhost_sup_sup:check``,
        for ``/api/health/checks/virtual-hosts``): while writes to the message logs fail,
        those with durable queues (RabbitMQ's vhost goes down with its message store)."""
        if not self.write_failed:
            return []
        return sorted(v.name for v in self.broker.vhosts.values() if any(q.log is not None for q in v.queues.values()))

    @property
    def alarm_reason(self) -> str:
        """connection.blocked's reason, in RabbitMQ's words."""
        return "low on memory" if self.memory_alarm else "low on disk"

    def _update_alarm(self) -> None:
        b = self.broker
        alarm = self.memory_alarm or self.disk_alarm
        if alarm == b.alarm:
            return
        b.alarm = alarm
        if alarm and self._sweep is None:
            self._sweep = b.loop.call_later(SWEEP_INTERVAL, self._sweep_blocked)
        for c in list(b.connections):
            if alarm:
                if c.is_publisher:
                    c.block(self.alarm_reason)
            else:
                c.unblock()
        b.flush_all()

    def _sweep_blocked(self) -> None:
        """During an alarm, drop the blocked publishers whose peer has gone.  A blocked
        connection is not read from, so its end of file is never seen; what it holds
        (parts of bodies) would keep the alarm up, and every publisher blocked, for good."""
        self._sweep = None
        self.check_alarm()  # bytes released by the connections dropped last time
        b = self.broker
        if not b.alarm:
            return
        for c in list(b.connections):
            if c.blocked and peer_gone(c.transport):
                log.info("blocked connection %s: the peer has gone, dropping it", c.peer)
                c.drop()
        self._sweep = b.loop.call_later(SWEEP_INTERVAL, self._sweep_blocked)
