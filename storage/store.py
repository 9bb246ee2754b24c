"""MessageStore: the durable queue logs under one data directory.

Each queue key (any string, e.g. "vhost/queue") maps to ``root/<sha1(key) hex>/``, which
holds the QueueLog files plus a ``key`` file with the original key (UTF-8).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable

from .log import QueueLog, _fsync_dir
from .streamlog import StreamLog

log = logging.getLogger(__name__)


class MessageStore:
    def __init__(self, root: str | os.PathLike[str], segment_size: int = 8 * 1024 * 1024):
        self.root = os.fspath(root)
        self.segment_size = segment_size
        self._logs: dict[str, QueueLog] = {}
        os.makedirs(self.root, exist_ok=True)
        for name in os.listdir(self.root):  # leftovers of an interrupted delete_queue()
            if name.endswith(".deleted"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def _dir(self, key: str) -> str:
        return os.path.join(self.root, hashlib.sha1(key.encode()).hexdigest())

    def open_queue(self, key: str) -> QueueLog:
        """Return the (cached) log of a queue, creating its directory durably if new.
        A log opened here for the first time still needs recover() (an append() on it
        recovers implicitly, which suits a new queue)."""
        qlog = self._logs.get(key)
        if qlog is None:
            path = self._dir(key)
            keyfile = os.path.join(path, "key")
            if not os.path.exists(keyfile):
                os.makedirs(path, exist_ok=True)
                tmp = keyfile + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(key.encode())
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, keyfile)
                _fsync_dir(path)
                _fsync_dir(self.root)
            qlog = self._logs[key] = QueueLog(path, self.segment_size)
        return qlog

    def open_stream(self, key: str, segment_size: int) -> StreamLog:
        """The log of a stream (``storage.streamlog``), in the queue directory of ``key``,
        fsynced and closed with the queue logs; ``delete_queue`` removes it."""
        slog = self._logs.get(key)
        if isinstance(slog, StreamLog):
            return slog
        self.open_queue(key)  # (the directory and its key file)
        stream = StreamLog(self._dir(key), segment_size)
        self._logs[key] = stream  # type: ignore[assignment]
        return stream

    def list_queue_keys(self) -> list[str]:
        """Keys of every queue directory present on disk (sorted)."""
        keys = []
        for name in os.listdir(self.root):
            if name.endswith(".deleted"):
                continue
            try:
                with open(os.path.join(self.root, name, "key"), "rb") as f:
                    keys.append(f.read().decode())
            except (FileNotFoundError, NotADirectoryError):
                continue
            except (OSError, UnicodeDecodeError):
                log.error("unreadable queue key in %s", name)
        return sorted(keys)

    def delete_queue(self, key: str) -> None:
        """Close the queue's log (if open) and remove its directory. Missing key: no-op."""
        qlog = self._logs.pop(key, None)
        if qlog is None:
            path = self._dir(key)
            if not os.path.isdir(path):
                return
            qlog = QueueLog(path, self.segment_size)
        qlog.destroy()

    def sync_job(self) -> Callable[[], None] | None:
        """One callable fsyncing every open log's dirty files, or None if all are clean."""
        jobs = [j for j in (q.sync_job() for q in self._logs.values()) if j is not None]
        if not jobs:
            return None
        if len(jobs) == 1:
            return jobs[0]

        def job() -> None:
            error: BaseException | None = None
            for j in jobs:  # run all even if one fails: each closes its own fds
                try:
                    j()
                except BaseException as e:  # re-raised below
                    error = error or e
            if error is not None:
                raise error

        return job

    def close(self) -> None:
        """Flush, fsync and close every open log."""
        logs, self._logs = list(self._logs.values()), {}
        for qlog in logs:
            qlog.close()
