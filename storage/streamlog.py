"""The append-only log of one stream: segment files read by offset, nothing per message in RAM.

A stream keeps every message until retention removes whole segments from its old end;
readers never remove anything.  The records are the queue log's (``u32 length | u32
crc32c(payload) | payload``, the payload a ``storage.record``), written with the same
helpers (:func:`leveret.storage.log._write_at`, ``_fsync_dir``), so the durability model is
``QueueLog``'s: ``append`` buffers, ``flush`` hands the buffer to the OS, ``sync_job``
returns the fsync for the worker thread.  What differs is the index:

* a record has an *offset*, its rank in the stream (0, 1, 2 ... never reused); segment
  ``stream.<first offset>`` holds the records from its first offset on, so a record's
  offset is its segment's first offset plus its rank in the file;
* per segment the log keeps its first offset, record count, size, first and last publish
  time, and a *sparse* index: the byte position (and publish time) of every
  ``INDEX_EVERY``-th record.  Finding an offset or a time is a bisection over the segments,
  then over the sparse index, then a scan of at most ``INDEX_EVERY`` record headers.  The
  log's memory does not grow with the number of messages (24 bytes per 256 records);
* a *chunk* (RabbitMQ's unit: the ``last`` offset spec starts at the last chunk) is here
  the records handed to the OS in one write: the first record appended after a flush
  carries ``F_CHUNK`` in its flags, so chunk starts survive a restart;
* retention (:meth:`StreamLog.truncate`) deletes whole inactive segments from the old
  end, by total size (``max_bytes``) or by age (a segment goes when its newest record is
  older than ``max_age``); the active segment is never deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from crc32c import crc32c

from leveret.storage import record
from leveret.storage.log import _write_at, fsync_job

log = logging.getLogger(__name__)

_HDR = struct.Struct(">II")
_REC = struct.Struct(">II" + record.HEAD_FORMAT)  # header + the record's head
_WBUF_LIMIT = 1 << 20
_READ_SIZE = 1 << 18  # one pread of a reader's batch
_MAX_FDS = 8  # read fds of inactive segments kept open, per stream
_SCAN_RUN = 4 << 20  # recovery reads a segment in runs of this size
INDEX_EVERY = 256
#: record flag: the first record of a chunk (see the module's text)
F_CHUNK = 2
_PREFIX = "stream."

#: one record read back: (offset, flags, publish time, a, b, body)
Entry = tuple[int, int, float, bytes, bytes, bytes]


class _Seg:
    __slots__ = ("first", "count", "size", "first_ts", "last_ts", "idx_pos", "idx_ts", "fd", "last_chunk", "name")

    def __init__(self, first: int) -> None:
        self.first = first
        self.name = f"{_PREFIX}{first:020d}"
        self.count = 0
        self.size = 0
        self.first_ts = 0.0
        self.last_ts = 0.0
        self.idx_pos = array("Q")  # byte position of record k * INDEX_EVERY
        self.idx_ts = array("d")  # its publish time
        self.fd: int | None = None
        self.last_chunk = -1  # offset of the last chunk start in this segment (-1: none)

    def add(self, pos: int, ts: float, flags: int, reclen: int) -> None:
        k = self.count
        if not k % INDEX_EVERY:
            self.idx_pos.append(pos)
            self.idx_ts.append(ts)
        if not k:
            self.first_ts = ts
        self.last_ts = ts
        if flags & F_CHUNK:
            self.last_chunk = self.first + k
        self.count = k + 1
        self.size = pos + reclen


class StreamLog:
    """The log of one stream (see the module's text).  Not thread-safe, except the
    callables returned by :meth:`sync_job`."""

    def __init__(self, directory: str | os.PathLike[str], segment_size: int = 500_000_000, ephemeral: bool = False) -> None:
        self.path = os.fspath(directory)
        self.segment_size = max(4096, segment_size)
        self.ephemeral = ephemeral  # no fsync (a broker without a data directory)
        os.makedirs(self.path, exist_ok=True)
        self.segs: list[_Seg] = []
        self._firsts: list[int] = []  # the segments' first offsets (bisection)
        self._active: _Seg | None = None
        self._wbuf = bytearray()
        self._flushed = 0  # flushed size of the active segment
        self._dirty = False
        self._dir_dirty = False
        self._closed = False
        self._recovered = False
        self.next_offset = 0
        self._rfds: dict[int, _Seg] = {}  # read-only fds of inactive segments (at most _MAX_FDS)
        self.bytes = 0  # total size of the segment files (buffered bytes included)

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """Scan the segments: their counts, times, sparse index, chunk starts.  A torn tail
        of the last segment is cut.  Returns the number of records."""
        if self._recovered:
            return self.count
        self._recovered = True
        names = sorted(n for n in os.listdir(self.path) if n.startswith(_PREFIX) and n[len(_PREFIX):].isdigit())
        for i, name in enumerate(names):
            seg = _Seg(int(name[len(_PREFIX):]))
            self._scan(seg, is_last=i == len(names) - 1)
            if not seg.count:  # (created, then killed before a record reached it)
                os.unlink(os.path.join(self.path, name))
                self.next_offset = max(self.next_offset, seg.first)
                continue
            if self.segs and seg.first != self.next_offset:
                log.error("%s: segment %s does not follow the previous one (offset %d)", self.path, name, self.next_offset)
            self.segs.append(seg)
            self._firsts.append(seg.first)
            self.next_offset = seg.first + seg.count
            self.bytes += seg.size
        return self.count

    def _scan(self, seg: _Seg, is_last: bool) -> None:
        """Index one segment, reading it in runs of ``_SCAN_RUN`` bytes (a 500 MB segment
        is never in RAM at once); checksums are verified on the last segment only."""
        path = os.path.join(self.path, seg.name)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            off = 0  # file position of the next record
            unpack = _REC.unpack_from
            head = _REC.size
            bad = False
            while off < size and not bad:
                data = os.pread(fd, _SCAN_RUN, off)
                at = 0
                n = len(data)
                while at + head <= n:
                    length, crc, flags, ts, _, _ = unpack(data, at)
                    end = at + 8 + length
                    if not length or off + end - at > size:
                        bad = True
                        break
                    if end > n:
                        if at:
                            break  # (the next run starts with this record)
                        data = os.pread(fd, 8 + length, off)  # one record larger than a run
                        n = len(data)
                        if end > n:
                            bad = True
                            break
                    if is_last and crc32c(memoryview(data)[at + 8 : end]) != crc:
                        bad = True
                        break
                    seg.add(off, ts, flags, 8 + length)
                    off += end - at
                    at = end
                if not bad and at + head > n and off + head > size:
                    break  # (a partial header at the very end)
        finally:
            os.close(fd)
        if off < size:
            log.warning("%s: torn tail at offset %d, truncating %d bytes", path, off, size - off)
            os.truncate(path, off)
        seg.size = off

    # ------------------------------------------------------------------ writing

    @property
    def first_offset(self) -> int:
        """The oldest offset still stored (``next_offset`` when empty)."""
        return self.segs[0].first if self.segs else self.next_offset

    @property
    def count(self) -> int:
        return self.next_offset - self.first_offset

    @property
    def last_chunk(self) -> int:
        """The first offset of the last chunk written (``next_offset`` when empty)."""
        for seg in reversed(self.segs):
            if seg.last_chunk >= 0:
                return seg.last_chunk
        return self.segs[-1].first if self.segs and self.segs[-1].count else self.next_offset

    def append(self, flags: int, ts: float, a: bytes, b: bytes, body: Any) -> tuple[int, bool]:
        """Buffer one record; returns (its offset, whether a new segment was started:
        the moment to apply retention)."""
        if not self._recovered:
            self.recover()
        if not self._wbuf:
            flags |= F_CHUNK
        if body.__class__ is bytes or body.__class__ is bytearray or body.__class__ is memoryview:
            payload = record.encode(flags, ts, a, b, body)
        else:
            payload = record.encode_parts(flags, ts, a, b, body)
        n = len(payload)
        rolled = False
        seg = self._active
        if seg is None or (seg.size and seg.size + n + 8 > self.segment_size):
            seg = self._roll()
            rolled = True
        elif len(self._wbuf) > _WBUF_LIMIT:
            self._flush()
        pos = seg.size
        self._wbuf += _HDR.pack(n, crc32c(payload))
        self._wbuf += payload
        seg.add(pos, ts, flags, n + 8)
        self.bytes += n + 8
        off = self.next_offset
        self.next_offset = off + 1
        return off, rolled

    def _roll(self) -> _Seg:
        if self._closed:
            raise ValueError("log is closed")
        old = self._active
        if old is not None:
            self._flush()
            self._active = None
            if old.fd is not None:
                if self._dirty and not self.ephemeral:
                    os.fsync(old.fd)  # (rare: once per segment)
                os.close(old.fd)  # (read again through _fd, as any inactive segment)
                old.fd = None
            self._dirty = False
        seg = _Seg(self.next_offset)
        seg.fd = os.open(os.path.join(self.path, seg.name), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.segs.append(seg)
        self._firsts.append(seg.first)
        self._active = seg
        self._flushed = 0
        self._dir_dirty = True
        return seg

    def _flush(self) -> None:
        if self._wbuf:
            seg = self._active
            assert seg is not None and seg.fd is not None
            _write_at(seg.fd, self._wbuf, self._flushed)
            self._flushed += len(self._wbuf)
            self._wbuf = bytearray()
            self._dirty = True

    def flush(self) -> None:
        """Hand the buffered records to the OS (readers read only what is flushed); the
        next append starts a new chunk."""
        self._flush()

    def sync_job(self) -> Callable[[], None] | None:
        """Flush, then a callable that fsyncs what was written (None: nothing to do)."""
        self._flush()
        if self.ephemeral or self._closed:
            return None
        fds: list[int] = []
        if self._dirty and self._active is not None and self._active.fd is not None:
            fds.append(os.dup(self._active.fd))
            self._dirty = False
        sync_dir, self._dir_dirty = self._dir_dirty, False
        if not fds and not sync_dir:
            return None
        return fsync_job(fds, self.path if sync_dir else None)

    # ------------------------------------------------------------------ retention

    def truncate(self, max_bytes: int | None, max_age: float | None, now: float | None = None) -> int:
        """Delete whole inactive segments from the old end while the stream is over
        ``max_bytes`` or their newest record is older than ``max_age`` seconds.  Returns
        the number of segments deleted."""
        n = 0
        now = now or time.time()
        while len(self.segs) > 1:
            seg = self.segs[0]
            over = max_bytes is not None and self.bytes > max_bytes
            old = max_age is not None and seg.last_ts < now - max_age
            if not (over or old):
                break
            self.segs.pop(0)
            self._firsts.pop(0)
            self.bytes -= seg.size
            self._rfds.pop(seg.first, None)
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None
            try:
                os.unlink(os.path.join(self.path, seg.name))
            except FileNotFoundError:
                pass
            self._dir_dirty = True
            n += 1
        return n

    # ------------------------------------------------------------------ reading

    def _seg_of(self, offset: int) -> _Seg | None:
        i = bisect_right(self._firsts, offset) - 1
        return self.segs[i] if i >= 0 else None

    def locate(self, offset: int) -> tuple[int, int]:
        """(offset, byte position) where a reader of ``offset`` starts: the oldest record
        if ``offset`` was removed, the end if it is not written yet."""
        if offset <= self.first_offset:
            return self.first_offset, 0
        if offset >= self.next_offset:
            return self.next_offset, -1
        seg = self._seg_of(offset)
        assert seg is not None
        rank = offset - seg.first
        k = rank // INDEX_EVERY
        pos = seg.idx_pos[k]
        at = k * INDEX_EVERY
        if at < rank:
            self._flush_if(seg)
            pos = self._skip(seg, pos, rank - at)
        return offset, pos

    def _flush_if(self, seg: _Seg) -> None:
        if seg is self._active and self._wbuf:
            self._flush()

    def _skip(self, seg: _Seg, pos: int, n: int) -> int:
        fd = self._fd(seg)
        while n:
            buf = os.pread(fd, min(_READ_SIZE, seg.size - pos), pos)
            at = 0
            while n and at + 8 <= len(buf):
                length = _HDR.unpack_from(buf, at)[0]
                if at + 8 + length > len(buf) and at:
                    break
                at += 8 + length
                n -= 1
            pos += at
        return pos

    def offset_at(self, ts: float) -> int:
        """The first offset published at or after ``ts`` (``next_offset``: none)."""
        for seg in self.segs:
            if seg.last_ts >= ts:
                break
        else:
            return self.next_offset
        k = max(0, bisect_right(seg.idx_ts, ts) - 1)
        off = seg.first + k * INDEX_EVERY
        pos = seg.idx_pos[k]
        self._flush_if(seg)
        fd = self._fd(seg)
        while pos < seg.size:
            buf = os.pread(fd, min(_READ_SIZE, seg.size - pos), pos)
            at = 0
            while at + _REC.size <= len(buf):
                length, _, _, rts, _, _ = _REC.unpack_from(buf, at)
                if rts >= ts:
                    return off
                if at + 8 + length > len(buf) and at:
                    break
                at += 8 + length
                off += 1
            pos += at
        return off

    def _fd(self, seg: _Seg) -> int:
        if seg.fd is None:
            rfds = self._rfds
            if len(rfds) >= _MAX_FDS:  # (readers far apart: the least recently opened goes)
                old = rfds.pop(next(iter(rfds)))
                if old.fd is not None:
                    os.close(old.fd)
                    old.fd = None
            seg.fd = os.open(os.path.join(self.path, seg.name), os.O_RDONLY)
            rfds[seg.first] = seg
        return seg.fd

    def read(self, offset: int, pos: int, max_n: int, max_bytes: int = _READ_SIZE) -> tuple[list[Entry], int, int]:
        """Up to ``max_n`` records from ``offset`` (at byte ``pos`` of its segment, as
        :meth:`locate` or a previous read gave it): ``(records, next offset, its
        position)``.  An offset removed by retention reads from the oldest one on."""
        out: list[Entry] = []
        if offset < self.first_offset or pos < 0:
            offset, pos = self.locate(offset)
        if offset >= self.next_offset or max_n <= 0:
            return out, offset, pos
        seg = self._seg_of(offset)
        assert seg is not None
        if offset == seg.first:  # (a position at the end of the previous segment)
            pos = 0
        self._flush_if(seg)
        buf = os.pread(self._fd(seg), min(max(max_bytes, 4096), seg.size - pos), pos)
        nb = len(buf)
        at = 0
        unpack = _REC.unpack_from
        head = _REC.size
        append = out.append
        while len(out) < max_n and at + head <= nb:
            length, _, flags, ts, al, bl = unpack(buf, at)
            end = at + 8 + length
            if end > nb:
                if not at:  # one record larger than the read: read it whole
                    buf = os.pread(seg.fd, 8 + length, pos)  # type: ignore[arg-type]
                    nb = len(buf)
                    if end > nb:
                        break
                else:
                    break
            a = at + head
            b = a + al
            c = b + bl
            append((offset, flags, ts, buf[a:b], buf[b:c], buf[c:end]))
            offset += 1
            at = end
        return out, offset, pos + at

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._closed:
            return
        try:
            job = self.sync_job()
            if job is not None:
                job()
        finally:
            self._closed = True
            for seg in self.segs:
                if seg.fd is not None:
                    os.close(seg.fd)
                    seg.fd = None

    def destroy(self) -> None:
        """Close without flushing and remove the directory (the stream was deleted)."""
        self._closed = True
        for seg in self.segs:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None
        self.segs.clear()
        self._firsts.clear()
        shutil.rmtree(self.path, ignore_errors=True)
