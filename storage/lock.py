"""The data directory lock: one broker per data directory.

A broker takes an exclusive ``flock`` on ``<data dir>/leveret.lock`` for as long as it
uses the directory and writes its PID into the file.  A second broker (another process,
or another one in the same process) is refused with :class:`DataDirLocked`, which names
the directory and the PID holding it.  The kernel drops the lock when its holder dies
(kill -9 included), so a crashed broker never leaves a stale lock behind; the file itself
stays (deleting it would let two brokers lock two different files).
"""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "leveret.lock"


class DataDirLocked(Exception):
    """Another broker uses this data directory."""

    def __init__(self, data_dir: str, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        holder = f"PID {pid}" if pid is not None else "unknown PID"
        super().__init__(
            f"data directory {data_dir} is in use by another Leveret broker ({holder}; "
            f"lock file {os.path.join(data_dir, LOCK_FILE)})"
        )


class DataDirLock:
    """The exclusive lock of one data directory (:meth:`acquire`, :meth:`release`)."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.join(self.data_dir, LOCK_FILE)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Lock the directory (created if missing) or raise :class:`DataDirLocked`."""
        if self._fd is not None:
            return
        os.makedirs(self.data_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise DataDirLocked(self.data_dir, pid) from None
            except BaseException:
                os.close(fd)
                raise
        try:
            line = f"{os.getpid()}\n".encode()
            os.pwrite(fd, line, 0)
            os.ftruncate(fd, len(line))
        except OSError:
            pass  # (a full disk): the lock itself holds
        self._fd = fd

    def release(self) -> None:
        """Unlock (the file stays; the next holder writes its own PID)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
