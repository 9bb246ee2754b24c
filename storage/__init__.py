"""Durable storage for Leveret: per-queue append-only logs and the definitions file.

Plain synchronous code (no asyncio, no AMQP): call it from the event loop thread and run
the callables returned by sync_job() in a worker thread to fsync.
"""

from .lock import DataDirLock, DataDirLocked
from .log import CorruptRecord, QueueLog
from .metadata import MetadataStore
from .store import MessageStore

__all__ = ["CorruptRecord", "DataDirLock", "DataDirLocked", "MessageStore", "MetadataStore", "QueueLog"]
