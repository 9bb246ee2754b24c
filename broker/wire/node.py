"""What the wire layer needs from the node it runs in.

The wire layer never imports the server.  A :class:`~leveret.broker.wire.connection.Connection`
is given a ``WireNode`` (the server's :class:`~leveret.broker.server.Broker` implements it,
as it implements the core's :class:`~leveret.broker.core.node.Node`) and reaches through it
the settings, the event loop, the vhosts and users, the node's output batching and alarms,
flow control's bookkeeping, the direct reply-to registry and the node's counters of what
closed channels did.  Nothing else of the node is the wire's business.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from leveret.broker.config import Config
    from leveret.broker.core.access import AccessControl
    from leveret.broker.core.persistence import Persistence
    from leveret.broker.core.queue import Queue
    from leveret.broker.core.vhost import VHost
    from leveret.broker.wire.connection import Connection


class WireNode(Protocol):
    config: Config
    loop: asyncio.AbstractEventLoop
    vhosts: dict[str, VHost]
    #: users, passwords, permissions (login, connection.open)
    access: AccessControl
    #: group commit of persisted publishes (None: no data directory)
    persistence: Persistence | None
    #: bytes of message bodies held in RAM: a body being received counts in it
    queued_bytes: int
    #: the open connections (each adds itself when accepted, leaves when gone)
    connections: set[Connection]
    #: connections with output not yet written (see :meth:`mark_dirty`)
    dirty: list[Connection]
    #: a memory or disk alarm is on: publishing connections are blocked
    alarm: bool
    #: flow control: publishes into queues in flow cost credit only while the node is busy
    busy: bool
    #: connections out of flow credit, waiting for the queues' consumers
    in_flow: set[Connection]
    #: direct reply-to: reply key -> the channel consuming amq.rabbitmq.reply-to
    reply_channels: dict[str, Any]
    # the node's counters: channels opened, publishes received on closed confirm channels
    stats_channels_opened: int
    stats_received_confirm_gone: int

    @property
    def alarm_reason(self) -> str:
        """connection.blocked's reason, in RabbitMQ's words."""

    def mark_dirty(self, conn: Connection) -> None:
        """``conn`` got output: it is written at the end of this read (:meth:`flush_all`)."""

    def flush_all(self) -> None:
        """Write out the output of every connection that got some."""

    def check_alarm(self) -> None:
        """Compare the bytes held with the memory high watermark."""

    def server_properties(self) -> dict[str, Any]:
        """connection.start's server properties."""

    def reply_queue_gone(self, q: Queue) -> None:
        """A direct reply-to pseudo-queue goes: the node keeps its counters in its totals."""

    def trusted_login(self, user: str, password: str) -> bool:
        """A login of one of the node's own clients (a shovel's local end)."""
        ...

    def user_exists(self, user: str) -> bool:
        """EXTERNAL: the certificate's user is known."""

    def count_auth(self, protocol: str, ok: bool) -> None:
        """A login attempt."""
