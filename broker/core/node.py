"""What the messaging core needs from the node it runs in.

The core never imports the server or the wire layer.  A :class:`~leveret.broker.core.vhost.VHost`
is given a ``Node`` (the server's :class:`~leveret.broker.server.Broker` implements it) and
reaches the event loop, memory accounting and the definitions/storage hooks through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from leveret.broker.config import Config
    from leveret.broker.core.access import AccessControl
    from leveret.broker.core.consumer import Consumer, DeliverySink
    from leveret.broker.core.memory import MemoryBudget
    from leveret.broker.core.persistence import Persistence
    from leveret.broker.core.queue import Queue
    from leveret.broker.core.vhost import VHost

# A delivery hook (see Node.delivery_hook): given a consumer, the sink its deliveries go to.
DeliveryHook = Callable[["Consumer"], "DeliverySink"]


class Node(Protocol):
    config: Config
    loop: asyncio.AbstractEventLoop
    vhosts: dict[str, VHost]
    access: AccessControl
    persistence: Persistence | None
    #: bytes of message bodies held in RAM (ready messages, partly received bodies):
    #: the memory alarm compares it with the high watermark
    queued_bytes: int
    #: RabbitMQ's global runtime parameters (``cluster_name``, ``internal_cluster_id``...):
    #: saved and restored with the definitions
    global_parameters: dict[str, Any]
    #: the node-wide budget of message bytes in RAM: every queue's thresholds
    memory: MemoryBudget
    #: set by :meth:`Broker.intercept_deliveries` (tests only); None on a normal node
    delivery_hook: DeliveryHook | None

    @property
    def write_failed(self) -> bool:
        """The last write to the message logs failed (the disk alarm holds)."""
        ...

    def add_vhost(self, name: str) -> VHost: ...

    def flush_all(self) -> None:
        """Write out the output that timers and other callbacks outside a read produced."""

    def disk_error(self, exc: OSError) -> None: ...

    def disk_write_ok(self) -> None: ...

    def set_disk_alarm(self, on: bool, free: int = 0) -> None: ...

    def definitions_changed(self, obj: Any) -> None:
        """A definition changed; ``obj`` is the durable one concerned (None: transient)."""

    def queue_created(self, q: Queue) -> None: ...

    def queue_deleted(self, q: Queue) -> None: ...

    def queue_compacted(self, q: Queue, remap: Callable[[int], int]) -> None:
        """``q``'s log moved records: every holder of one of its seqs (deliveries awaiting
        an ack, kept by the wire layer) must pass it through ``remap``."""
