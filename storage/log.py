"""Append-only segmented log of one durable queue (design after LavinMQ's message store).

Layout of a queue directory::

    msgs.0000000001      records: u32 length | u32 crc32c(payload) | payload  (big-endian)
    acks.0000000001      u64 big-endian positions of acked records of that segment
    msgs.0000000001.2    the same segment after its 2nd compaction (generation 2), with
    acks.0000000001.2    its own ack file

A position is ``(segment_number << 32) | byte_offset``. Segment numbers start at 1 and only
grow, so a stale ack entry can never hit a newer record, and an all-zero ack entry (which a
crash can leave behind on some file systems) names no record. Empty payloads are refused:
crc32c(b"") == 0, so an all-zero header would otherwise parse as a valid empty record.

Durability model: append()/ack() go to userspace buffers; flush() hands them to the OS
(cheap, loop thread); sync_job() flushes and returns a callable that fsyncs (worker thread).
A record is durable once the job of a sync_job() called after its append has completed.

Choices worth knowing:
* After recover(), appends start a NEW segment: recovered segments are never written again
  (except their ack files), so a cut tail or a stale ack can never alias a new record.
* Per segment we keep the offsets of all its records (array('I')) and one live flag byte per
  record: 5 bytes per record, independent of record size. ack() of an unknown, already
  acked or mid-record position is a no-op that returns False; counts are never corrupted.
* A segment whose records are all acked is deleted at once unless it is the active segment
  and still has room (a full active segment is deleted too; the next append starts another).
* Compaction rewrites a sparse segment as the next *generation* of the same segment number
  (new file name, fsynced and renamed before the old generation is removed), so a crash at
  any step leaves either the old pair (msgs, acks) or the new one, never old acks applied to
  the new layout. Recovery keeps the highest generation of each segment.
* Deleting a segment unlinks msgs.N at once but acks.N only after the next directory fsync
  (in the sync job), so a crash can never keep msgs.N while losing its acks.
* An *ephemeral* log (a transient queue's overflow log) is never recovered and is read back
  from the page cache by the process that wrote it: its records carry no checksum (0) and
  are not checked when read.
* A large payload (``append_parts``) is written from its pieces with one ``pwritev``, and
  read back (``read_records(views=True)``) as a view of what one ``pread`` read: its bytes
  are copied only by the kernel.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from crc32c import crc32c

from leveret.storage import record
from leveret.storage.record import Decoded

log = logging.getLogger(__name__)

_HDR = struct.Struct(">II")  # record header: payload length, crc32c(payload)
_HDR_REC = struct.Struct(_HDR.format + record.HEAD_FORMAT)  # ... and the payload's record head
_POS = struct.Struct(">Q")  # ack entry: position
_MASK = 0xFFFFFFFF
DELIVERED = 1 << 63  # ack-file entry flag: "delivered", not "acked"
_MAX_PAYLOAD = _MASK - _HDR.size
_WBUF_LIMIT = 1 << 20  # flush the message buffer to the OS beyond 1 MiB
_READ_GUESS = 4096  # first pread size in read(); one syscall for typical records
_fadvise = getattr(os, "posix_fadvise", None)  # (not on every platform)
_READ_RUN = 4 << 20  # read_many(): bytes read at most with one pread
#: append_parts(): a payload at least this large is written from its parts (pwritev), not
#: copied into the write buffer (a smaller one is: one copy, and one write for many records)
DIRECT_MIN = 256 << 10
#: read_records(views=True): a body at least this large may come back as a view of the
#: bytes one pread read, if it is at least 1/VIEW_RATIO of them (so a view never keeps
#: alive more than VIEW_RATIO times its body, whatever becomes of its neighbours)
VIEW_MIN = 16 << 10
VIEW_RATIO = 4
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16
_MAX_FDS = 8  # per log: cached read fds of inactive segments, and ack-file fds


class CorruptRecord(Exception):
    """A record read back from disk does not match its length or checksum."""


def _name(kind: str, n: int, gen: int) -> str:
    return f"{kind}.{n:010d}.{gen}" if gen else f"{kind}.{n:010d}"


def _write_at(fd: int, data: bytes | bytearray, offset: int) -> None:
    """Write all of data at offset. On OSError cut the file back to offset and re-raise,
    so a partial write (ENOSPC...) never leaves a torn record behind a good one."""
    with memoryview(data) as mv:
        done = 0
        try:
            while done < len(mv):
                done += os.pwrite(fd, mv[done:], offset + done)
        except OSError:
            try:
                os.ftruncate(fd, offset)
            except OSError:  # pragma: no cover - nothing better to do
                log.exception("could not truncate after failed write")
            raise


def _writev_at(fd: int, bufs: list[bytes | bytearray | memoryview], offset: int) -> None:
    """:func:`_write_at` of the buffers one after another (``pwritev``: no join), with the
    same cut back on error."""
    views = [memoryview(b).cast("B") for b in bufs if len(b)]
    at = offset
    try:
        while views:
            done = os.pwritev(fd, views[:_IOV_MAX], at)
            at += done
            while views and done >= len(views[0]):
                done -= len(views[0])
                del views[0]
            if done:
                views[0] = views[0][done:]
    except OSError:
        try:
            os.ftruncate(fd, offset)
        except OSError:  # pragma: no cover - nothing better to do
            log.exception("could not truncate after failed write")
        raise


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # directory destroyed meanwhile: nothing to make durable
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(paths: Iterable[str]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def fsync_job(fds: list[int], sync_dir: str | None, unlinks: list[str] | tuple[str, ...] = (),
              drops: list[str] | tuple[str, ...] = ()) -> Callable[[], None]:
    """The group-commit job of a log's ``sync_job``: fsync then close ``fds`` (dups of the
    files written since the last sync), remove the ``drops`` (segment files with no live
    record left), fsync the directory ``sync_dir`` (None: not needed), then remove the
    ``unlinks`` (their ack files: once a segment's removal is on disk, so that a crash
    never finds its records without their acks).  Removing a file that was written a
    moment ago can take tens of ms (its page cache goes with it): done here, in the
    syncer's thread, it does not hold up the event loop."""

    def job() -> None:
        try:
            try:
                for fd in fds:
                    os.fsync(fd)
            finally:
                for fd in fds:
                    os.close(fd)
        finally:  # (also when an fsync failed: a full disk needs that space back)
            _remove(drops)
        if sync_dir is not None:
            _fsync_dir(sync_dir)
        for p in unlinks:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    return job


class _Segment:
    __slots__ = ("n", "gen", "offs", "live", "count", "nbytes", "end", "disk",
                 "fd", "afd", "abuf", "asize", "adirty")

    def __init__(self, n: int, gen: int = 0) -> None:
        self.n = n
        self.gen = gen
        self.offs = array("I")  # offsets of every record in the file (live or not)
        self.live = bytearray()  # 1 per live record, parallel to offs
        self.count = 0  # live records
        self.nbytes = 0  # live record bytes (headers included)
        self.end = 0  # end of the last valid record (limits the last record's length)
        self.disk = 0  # size of msgs file (incl. buffered bytes for the active segment)
        self.fd: int | None = None  # msgs fd: read/write for the active segment
        self.afd: int | None = None  # acks fd, opened on first flushed ack
        self.abuf = bytearray()  # acks not yet flushed
        self.asize = 0  # flushed size of the acks file
        self.adirty = False  # acks flushed but not yet covered by a sync job

    def rec_len(self, i: int) -> int:
        offs = self.offs
        return (offs[i + 1] if i + 1 < len(offs) else self.end) - offs[i]

    def end_of(self, off: int) -> int:
        """Where the record starting at ``off`` ends; 0 if no record starts there."""
        offs = self.offs
        k = bisect_left(offs, off)
        return off + self.rec_len(k) if k < len(offs) and offs[k] == off else 0


class QueueLog:
    """The append-only log of one durable queue. Not thread-safe: use it from one thread;
    only the callables returned by sync_job() may run elsewhere."""

    def __init__(
        self, directory: str | os.PathLike[str], segment_size: int = 8 * 1024 * 1024, ephemeral: bool = False
    ):
        """``ephemeral``: an overflow log, never recovered (deleted at restart): acks and
        delivered marks stay in memory, nothing is ever fsynced (no sync_job)."""
        if not 64 <= segment_size <= 1 << 31:
            raise ValueError("segment_size must be within 64 B .. 2 GiB")
        self.path = os.fspath(directory)
        self.segment_size = segment_size
        self.ephemeral = ephemeral
        os.makedirs(self.path, exist_ok=True)
        self._segs: dict[int, _Segment] = {}  # by number, ascending
        self._active: _Segment | None = None
        self._wbuf = bytearray()  # unflushed tail of the active segment
        self._flushed = 0  # flushed size of the active segment
        self._next_n = 1
        self._recovered = False
        self._closed = False
        self._live_count = 0
        self._live_bytes = 0
        self._disk_bytes = 0
        # fd caches (insertion order = eviction order)
        self._rfds: dict[int, _Segment] = {}  # read-only fds of inactive segments
        self._afds: dict[int, _Segment] = {}  # open ack-file fds
        self._ack_pending: dict[int, _Segment] = {}  # segments with unflushed acks
        # fds kept open of each kind: a queue reads and acks near its head, a delayed
        # exchange's log all over (it raises this)
        self.max_fds = _MAX_FDS
        # what the next sync job must cover
        self._msgs_dirty = False  # active segment written since the last sync_job
        self._sync_fds: list[int] = []  # dirty fds already closed by us, owned by next job
        self._dir_dirty = False
        self._unlinks: list[str] = []  # ack files to remove after the next dir fsync
        self._drops: list[str] = []  # dropped segments (*.drop) to remove before it
        self._compact_threshold = segment_size
        # positions of live records that had been delivered before the crash (recover())
        self.delivered: set[int] = set()

    # ------------------------------------------------------------------ recovery

    def recover(self, on_record: Callable[[int, memoryview], None] | None = None) -> array:
        """Scan the directory; call on_record(position, payload) for each live record in
        log order (the view is valid only during the call) and return the live positions.
        Never raises for bad data: torn tails are cut (warning), corrupt records skipped
        (error). Fully acked segments are deleted. Appends then go to a new segment."""
        if self._recovered:
            raise RuntimeError("recover() already done")
        self._recovered = True
        msgs: dict[int, list[int]] = {}  # n -> generations present
        acks: list[tuple[int, int]] = []
        for name in os.listdir(self.path):
            parts = name.split(".")
            if parts[0] not in ("msgs", "acks"):
                continue
            if parts[-1] in ("tmp", "drop"):  # unfinished compaction output, or a dropped
                self._unlink(name)  # segment the sync job had not removed yet
                continue
            if not 2 <= len(parts) <= 3:
                continue
            if not all(p.isdigit() for p in parts[1:]):
                continue
            n, gen = int(parts[1]), int(parts[2]) if len(parts) == 3 else 0
            self._next_n = max(self._next_n, n + 1)
            if parts[0] == "msgs":
                msgs.setdefault(n, []).append(gen)
            else:
                acks.append((n, gen))
        keep = {n: max(gens) for n, gens in msgs.items()}
        for n, gens in msgs.items():  # older generations: compaction crashed before cleanup
            for gen in gens:
                if gen != keep[n]:
                    self._unlink(_name("msgs", n, gen))
        for n, gen in acks:  # ack files without their segment
            if keep.get(n) != gen:
                self._unlink(_name("acks", n, gen))

        out = array("Q")
        last = max(keep, default=0)
        self._scratch = bytearray()  # read buffer shared by all segments: the views
        for n in sorted(keep):  # given to on_record are only valid during the call
            seg = self._scan(n, keep[n], n == last, out, on_record)
            if seg.count:
                self._segs[n] = seg
                self._live_count += seg.count
                self._live_bytes += seg.nbytes
                self._disk_bytes += seg.disk + seg.asize
            else:  # fully acked: same order of removal as _delete()
                self._unlink(_name("msgs", n, seg.gen))
                self._unlinks.append(os.path.join(self.path, _name("acks", n, seg.gen)))
                self._dir_dirty = True
        del self._scratch
        return out

    def _scan(self, n: int, gen: int, is_last: bool, out: array,
              on_record: Callable[[int, memoryview], None] | None) -> _Segment:
        """Validate one segment file, read whole into a buffer reused across segments."""
        seg = _Segment(n, gen)
        mpath = os.path.join(self.path, _name("msgs", n, gen))
        with open(mpath, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            buf = self._scratch
            if size > len(buf):  # (never resize: a caller might still hold a view on it)
                buf = self._scratch = bytearray(max(size, self.segment_size))
            mv = payload = memoryview(buf)
            size = f.readinto(mv[:size])
        acked = self._load_acks(seg)
        delivered = {e & ~DELIVERED for e in acked if e & DELIVERED} if acked else ()
        base = n << 32
        unpack = _HDR.unpack_from
        offs = seg.offs
        offs_append, out_append = offs.append, out.append
        dead: list[int] = []  # indices into offs of acked or corrupt records (usually few)
        off = 0
        problem = ""
        while off < size:  # hot loop: keep it lean (~1 us per 1 KiB record)
            if size - off < 8:
                problem = "partial record header"
                break
            length, crc = unpack(buf, off)
            end = off + 8 + length
            if end > size or not length:
                problem = (f"record length {length} runs past end of file" if length
                           else "zero length field")
                break
            payload = mv[off + 8:end]
            if crc32c(payload) != crc:
                if is_last and end == size:
                    problem = "checksum mismatch on the last record"
                    break
                log.error("%s: checksum mismatch at offset %d, record skipped", mpath, off)
                dead.append(len(offs))  # kept (not live) so neighbours' lengths stay right
            else:
                pos = base | off
                if pos in acked:
                    dead.append(len(offs))
                else:
                    out_append(pos)
                    if delivered and pos in delivered:
                        self.delivered.add(pos)
                    if on_record is not None:
                        on_record(pos, payload)
            offs_append(off)
            off = end
        del payload, mv  # release buf
        seg.end = off
        seg.live = bytearray(b"\1") * len(offs)
        for i in dead:
            seg.live[i] = 0
        seg.count = len(offs) - len(dead)
        seg.nbytes = off - sum(seg.rec_len(i) for i in dead)
        seg.disk = size
        if problem:
            if is_last:
                # A torn write at the tail (zero fill included) is expected after a crash.
                torn = problem != "zero length field" or not buf[off:size].strip(b"\0")
                log.log(logging.WARNING if torn else logging.ERROR,
                        "%s: %s at offset %d, truncating %d bytes", mpath, problem, off,
                        size - off)
                os.truncate(mpath, off)
                seg.disk = off
            else:
                log.error("%s: %s at offset %d, dropping the rest of the segment (%d bytes)",
                          mpath, problem, off, size - off)
        return seg

    def _load_acks(self, seg: _Segment) -> set[int] | frozenset[int]:
        apath = os.path.join(self.path, _name("acks", seg.n, seg.gen))
        try:
            with open(apath, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return frozenset()
        k = len(raw) // 8
        if len(raw) % 8:  # torn last entry: drop it (that ack is lost, the message comes back)
            log.warning("%s: partial ack entry at end, truncated", apath)
            os.truncate(apath, k * 8)
        seg.asize = k * 8
        return set(struct.unpack_from(f">{k}Q", raw)) if k else frozenset()

    # ------------------------------------------------------------------ writing

    def append(self, payload: bytes | bytearray | memoryview) -> int:
        """Buffer one record and return its position. Raises ValueError for an empty or
        over-long payload and OSError if flushing earlier data fails (then this record is
        not stored, and what was stored before stays intact)."""
        n = len(payload)
        if not 0 < n <= _MAX_PAYLOAD:
            raise ValueError("payload must be 1 byte .. 4 GiB")
        rec = n + 8
        seg = self._active
        if seg is None or (seg.end and seg.end + rec > self.segment_size):
            seg = self._roll()
        elif len(self._wbuf) + rec > _WBUF_LIMIT and self._wbuf:
            self._flush_msgs()
        off = seg.end
        wbuf = self._wbuf
        # (an overflow log is read back unchecked, by the process that wrote it: no checksum)
        wbuf += _HDR.pack(n, 0 if self.ephemeral else crc32c(payload))
        wbuf += payload
        seg.end = seg.disk = off + rec
        seg.offs.append(off)
        seg.live.append(1)
        seg.count += 1
        seg.nbytes += rec
        self._live_count += 1
        self._live_bytes += rec
        self._disk_bytes += rec
        return (seg.n << 32) | off

    def append_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        """:meth:`append` of the payload made of ``parts`` (a record head and the body's
        pieces, say), never joined: its checksum is computed over the parts, which are
        copied into the write buffer, or, for a payload of ``DIRECT_MIN`` or more, written
        at once from where they are, after what the buffer holds (one ``pwritev``: their
        bytes are not copied).  The same errors as :meth:`append`; a failed write cuts the
        file back and keeps what was buffered before, as a failed flush does."""
        n = 0
        for p in parts:
            n += len(p)
        if not 0 < n <= _MAX_PAYLOAD:
            raise ValueError("payload must be 1 byte .. 4 GiB")
        rec = n + 8
        direct = n >= DIRECT_MIN
        seg = self._active
        if seg is None or (seg.end and seg.end + rec > self.segment_size):
            seg = self._roll()
        elif not direct and len(self._wbuf) + rec > _WBUF_LIMIT and self._wbuf:
            self._flush_msgs()
        crc = 0
        if not self.ephemeral:
            for p in parts:
                crc = crc32c(p, crc)
        off = seg.end
        wbuf = self._wbuf
        if direct:
            assert seg.fd is not None and self._flushed + len(wbuf) == off
            _writev_at(seg.fd, [wbuf, _HDR.pack(n, crc), *parts], self._flushed)
            self._flushed = off + rec
            if wbuf:
                self._wbuf = bytearray()
            self._msgs_dirty = True
        else:
            wbuf += _HDR.pack(n, crc)
            for p in parts:
                wbuf += p
        seg.end = seg.disk = off + rec
        seg.offs.append(off)
        seg.live.append(1)
        seg.count += 1
        seg.nbytes += rec
        self._live_count += 1
        self._live_bytes += rec
        self._disk_bytes += rec
        return (seg.n << 32) | off

    def append_many(self, payloads: Iterable[bytes | bytearray | memoryview]) -> list[int]:
        append = self.append
        return [append(p) for p in payloads]

    def _roll(self) -> _Segment:
        """Retire the active segment (if any) and create the next one."""
        if self._closed:
            raise ValueError("log is closed")
        if not self._recovered:
            self.recover()  # implicit for a fresh directory; callers normally recover first
        old = self._active
        if old is not None:
            self._flush_msgs()  # may raise: then nothing has changed
            self._active = None
            self._wbuf = bytearray()
            if old.count == 0:
                self._delete(old)
            else:
                self._release_fd(old, self._msgs_dirty)
            self._msgs_dirty = False
        n = self._next_n
        fd = os.open(os.path.join(self.path, _name("msgs", n, 0)),
                     os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._next_n = n + 1
        seg = _Segment(n)
        seg.fd = fd
        self._segs[n] = seg
        self._active = seg
        self._flushed = 0
        self._dir_dirty = True
        return seg

    def _flush_msgs(self) -> None:
        if self._wbuf:
            assert self._active is not None and self._active.fd is not None
            _write_at(self._active.fd, self._wbuf, self._flushed)
            self._flushed += len(self._wbuf)
            self._wbuf = bytearray()
            self._msgs_dirty = True

    def flush(self) -> None:
        """Push buffered records and acks to the OS (no fsync). Raises OSError on a failed
        write; the unwritten data stays buffered and the files are cut back, so a later
        flush() can retry."""
        self._flush_msgs()
        pending = self._ack_pending
        while pending:
            seg = next(iter(pending.values()))
            if seg.afd is None:
                self._open_acks(seg)
            _write_at(seg.afd, seg.abuf, seg.asize)  # type: ignore[arg-type]
            seg.asize += len(seg.abuf)
            seg.abuf = bytearray()
            seg.adirty = True
            del pending[seg.n]

    def _open_acks(self, seg: _Segment) -> None:
        if len(self._afds) >= self.max_fds:
            victim = next(iter(self._afds.values()))
            del self._afds[victim.n]
            fd, victim.afd = victim.afd, None
            self._give_or_close(fd, victim.adirty)  # type: ignore[arg-type]
            victim.adirty = False
        path = os.path.join(self.path, _name("acks", seg.n, seg.gen))
        if not seg.asize:
            self._dir_dirty = True  # (possibly) a new directory entry
        seg.afd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        self._afds[seg.n] = seg

    def _give_or_close(self, fd: int, dirty: bool) -> None:
        """Closing a written fd: hand it to the next sync job, which fsyncs and closes it."""
        if dirty and not self.ephemeral:
            self._sync_fds.append(fd)
        else:
            os.close(fd)

    def _release_fd(self, seg: _Segment, dirty: bool = False) -> None:
        if seg.fd is not None:
            self._rfds.pop(seg.n, None)
            self._give_or_close(seg.fd, dirty)
            seg.fd = None

    # ------------------------------------------------------------------ reading, acking

    def _read_fd(self, seg: _Segment) -> int:
        if seg.fd is None:
            if len(self._rfds) >= self.max_fds:
                self._release_fd(next(iter(self._rfds.values())))
            seg.fd = os.open(os.path.join(self.path, _name("msgs", seg.n, seg.gen)),
                             os.O_RDONLY)
            self._rfds[seg.n] = seg
        return seg.fd

    def read(self, position: int) -> bytes:
        """Return the payload at position (also when still in the write buffer).
        Raises ValueError for a position in no segment, CorruptRecord on a bad record."""
        seg = self._segs.get(position >> 32)
        if seg is None:
            raise ValueError(f"unknown position {position:#x}")
        off = position & _MASK
        if seg is self._active and off >= self._flushed:
            buf: bytes | bytearray = self._wbuf
            i = off - self._flushed
        else:
            fd = self._read_fd(seg)
            buf = os.pread(fd, _READ_GUESS, off)
            i = 0
            if len(buf) >= 8:
                need = _HDR.unpack_from(buf)[0] + 8
                if off + need > seg.end:  # garbage length (not a record start?)
                    raise CorruptRecord(f"bad record length at {position:#x}")
                if need > len(buf):
                    buf += os.pread(fd, need - len(buf), off + len(buf))
        if len(buf) - i < 8:
            raise CorruptRecord(f"no record header at {position:#x}")
        length, crc = _HDR.unpack_from(buf, i)
        payload = bytes(memoryview(buf)[i + 8:i + 8 + length])
        if len(payload) != length or (not self.ephemeral and crc32c(payload) != crc):
            raise CorruptRecord(f"bad record at {position:#x}")
        return payload

    def read_many(self, positions: Sequence[int]) -> list[bytes | Exception]:
        """The payloads at ``positions`` (in log order, as a queue's paged-out tail is),
        each one as :meth:`read` would return it or the exception it would raise.  Runs
        of records in one segment are read with one ``pread`` of up to ``_READ_RUN``
        bytes instead of one per record."""
        return self._read_runs(positions, False)

    def read_records(self, positions: Sequence[int], views: bool = False) -> list[Decoded | Exception]:
        """:meth:`read_many` with each payload decoded as :func:`record.decode` does, in
        the same pass over the bytes read (paging a queue back in: no copy of the whole
        payload, no call per record).  ``views``: a body of ``VIEW_MIN`` bytes or more
        comes back as a ``memoryview`` of the bytes one ``pread`` read, not copied out of
        them, when it is at least a quarter of those bytes (``VIEW_RATIO``: a view never
        keeps alive more than four times its body; a caller wanting views reads large
        records a few at a time); a record larger than ``_READ_RUN`` is read on its own,
        at its size."""
        return self._read_runs(positions, True, views)

    def will_need(self, positions: Sequence[int], near: int = 1 << 16) -> int:
        """Ask the kernel to bring the records at ``positions`` (sorted) into the page
        cache ahead of reading them (``posix_fadvise(WILLNEED)``: it starts the reads and
        returns, the disk works in the background), one range per run of records closer
        than ``near`` bytes.  Positions in no segment, or still in the write buffer, are
        skipped.  A reader that knows what it reads next (due delayed messages) then does
        not hold its thread on the disk: the page cache may have let go of records written
        long ago.  Returns the number of ranges advised."""
        if _fadvise is None:
            return 0
        ranges = 0
        n = len(positions)
        i = 0
        while i < n:
            pos = positions[i]
            seg = self._segs.get(pos >> 32)
            start = pos & _MASK
            top = self._flushed if seg is self._active else (seg.end if seg is not None else 0)
            if seg is None or start >= top:
                i += 1
                continue
            end = start
            while i < n and positions[i] >> 32 == seg.n:
                off = positions[i] & _MASK
                if off >= top or off > end + near:
                    break
                end = max(end, seg.end_of(off) or off + 1)
                i += 1
            self._advise(seg, start, min(end, top) - start)
            ranges += 1
        return ranges

    def will_need_segments(self, numbers: Iterable[int]) -> None:
        """:meth:`will_need` for whole segments (before a compaction rewrites them)."""
        for n in numbers:
            seg = self._segs.get(n)
            if seg is not None and seg is not self._active:
                self._advise(seg, 0, seg.end)

    def _advise(self, seg: _Segment, off: int, length: int) -> None:
        if _fadvise is not None:
            try:
                _fadvise(self._read_fd(seg), off, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # (a hint: the read itself reports what is wrong)

    def _read_runs(self, positions: Sequence[int], decode: bool, views: bool = False) -> list[Any]:
        out: list[Any] = []
        n = len(positions)
        verify = not self.ephemeral
        i = 0
        while i < n:
            pos = positions[i]
            seg = self._segs.get(pos >> 32)
            off = pos & _MASK
            if seg is None or (seg is self._active and off >= self._flushed):
                out.append(self._read_or_error(pos, decode))
                i += 1
                continue
            # the run: following positions in the same (flushed part of the) segment
            limit = min(seg.end if seg is not self._active else self._flushed, off + _READ_RUN)
            j = i + 1
            while j < n:
                p = positions[j]
                if p >> 32 != seg.n or not off <= (p & _MASK) < limit:
                    break
                j += 1
            end = 0
            while j > i:
                last = positions[j - 1] & _MASK
                end = seg.end_of(last)
                # (one record larger than a run is read on its own, whole)
                if 0 < end - off and (end - off <= _READ_RUN or j - i == 1):
                    break
                j -= 1  # (the last record runs past the limit, or is no record start)
                end = 0
            if not end:
                out.append(self._read_or_error(pos, decode))
                i += 1
                continue
            try:
                buf = os.pread(self._read_fd(seg), end - off, off)
            except OSError as exc:
                out.extend([exc] * (j - i))
                i = j
                continue
            nb = len(buf)
            append = out.append
            if decode:
                unpack = _HDR_REC.unpack_from
                head = _HDR_REC.size
                mv = memoryview(buf) if views or verify else None
                # a view of buf only for a record of at least a quarter of it (VIEW_RATIO)
                view_min = VIEW_MIN if views else nb + 1
                quarter = nb // VIEW_RATIO
                for t in range(i, j):
                    p = positions[t]
                    at = (p & _MASK) - off
                    if at + head > nb:
                        append(CorruptRecord(f"no record header at {p:#x}"))
                        continue
                    length, crc, flags, ts, al, bl = unpack(buf, at)
                    a = at + head
                    b = a + al
                    c = b + bl
                    e = at + 8 + length
                    # (an overflow log is read back by the process that wrote it, from
                    # the page cache: its checksums are not worth their cost)
                    if e > nb or c > e or (verify and crc32c(mv[at + 8 : e]) != crc):  # type: ignore[index]
                        append(CorruptRecord(f"bad record at {p:#x}"))
                    elif e - c >= view_min and e - at >= quarter:
                        append((flags, ts, buf[a:b], buf[b:c], mv[c:e]))  # type: ignore[index]
                    else:
                        append((flags, ts, buf[a:b], buf[b:c], buf[c:e]))
                i = j
                continue
            unpack = _HDR.unpack_from
            for t in range(i, j):
                p = positions[t]
                at = (p & _MASK) - off
                if at + 8 > nb:
                    append(CorruptRecord(f"no record header at {p:#x}"))
                    continue
                length, crc = unpack(buf, at)
                at += 8
                payload = buf[at : at + length]  # (read_many: bytes, as read() returns)
                if len(payload) != length or (verify and crc32c(payload) != crc):
                    append(CorruptRecord(f"bad record at {p:#x}"))
                else:
                    append(payload)
            i = j
        return out

    def _read_or_error(self, position: int, decode: bool = False) -> Any:
        try:
            payload = self.read(position)
            return record.decode(payload) if decode else payload
        except (ValueError, OSError, CorruptRecord, struct.error) as exc:
            return exc

    def ack(self, position: int) -> bool:
        """Mark a record consumed. Returns False (and changes nothing) if the position is
        unknown or already acked. Deletes the segment once all its records are acked."""
        seg = self._segs.get(position >> 32)
        if seg is None:
            return False
        off = position & _MASK
        offs = seg.offs
        i = bisect_left(offs, off)
        n = len(offs)
        if i == n or offs[i] != off or not seg.live[i]:
            return False
        seg.live[i] = 0
        rec = (offs[i + 1] if i + 1 < n else seg.end) - off  # (seg.rec_len(i), inlined)
        seg.count -= 1
        seg.nbytes -= rec
        self._live_count -= 1
        self._live_bytes -= rec
        if seg.count == 0 and (seg is not self._active or seg.end >= self.segment_size):
            self._delete(seg)
        elif not self.ephemeral:
            seg.abuf += _POS.pack(position)
            self._disk_bytes += 8
            self._ack_pending[seg.n] = seg
        return True

    def ack_many(self, positions: Sequence[int]) -> None:
        """:meth:`ack` each of ``positions``.  A run of them that are the consecutive
        records of a segment (a paged-out tail read back in order) is acked in one step
        per segment: its live flags cleared with one slice, its counts by the run."""
        n = len(positions)
        i = 0
        segs = self._segs
        while i < n:
            p = positions[i]
            seg = segs.get(p >> 32)
            if seg is None:
                i += 1
                continue
            offs = seg.offs
            k = bisect_left(offs, p & _MASK)
            m = len(offs)
            base = p & ~_MASK
            # the run: the positions in this segment (sorted, as a tail is), if they are
            # offs[k..] one for one
            j = bisect_left(positions, base + (1 << 32), i) if positions[n - 1] > p else n
            run = j - i
            live = seg.live
            if (
                run < 2
                or k + run > m
                or list(positions[i:j]) != [base | o for o in offs[k : k + run]]
                or live.count(0, k, k + run)
            ):
                # (a single record, a gap, some already acked: one by one)
                for t in range(i, max(j, i + 1)):
                    self.ack(positions[t])
                i = max(j, i + 1)
                continue
            live[k : k + run] = bytes(run)
            end = offs[k + run] if k + run < m else seg.end
            nbytes = end - offs[k]
            seg.count -= run
            seg.nbytes -= nbytes
            self._live_count -= run
            self._live_bytes -= nbytes
            if seg.count == 0 and (seg is not self._active or seg.end >= self.segment_size):
                self._delete(seg)
            elif not self.ephemeral:
                seg.abuf += b"".join(_POS.pack(q) for q in positions[i:j])
                self._disk_bytes += 8 * run
                self._ack_pending[seg.n] = seg
            i = j

    def mark_delivered(self, position: int) -> None:
        """Record that a live record was handed to a consumer, so that after a crash it
        comes back flagged as redelivered (kept in the segment's ack file, top bit set)."""
        seg = self._segs.get(position >> 32)
        if seg is None or self.ephemeral:
            return
        seg.abuf += _POS.pack(position | DELIVERED)
        self._disk_bytes += 8
        self._ack_pending[seg.n] = seg

    def _delete(self, seg: _Segment) -> None:
        """Drop a segment with no live records: msgs now, acks after the next dir fsync."""
        if seg is self._active:
            self._active = None
            self._wbuf = bytearray()
            self._msgs_dirty = False
        self._release_fd(seg)
        if seg.afd is not None:
            os.close(seg.afd)
            del self._afds[seg.n]
            seg.afd = None
        self._ack_pending.pop(seg.n, None)
        del self._segs[seg.n]
        self._disk_bytes -= seg.disk + seg.asize + len(seg.abuf)
        if self.ephemeral:
            self._unlink(_name("msgs", seg.n, seg.gen))
        else:
            # renamed now (a crash must not find the records again: their last acks are
            # not written), removed by the next sync job, off the event loop
            self._drop(_name("msgs", seg.n, seg.gen))
            # (the acks file may not exist; the job ignores that)
            self._unlinks.append(os.path.join(self.path, _name("acks", seg.n, seg.gen)))
            self._dir_dirty = True

    def _drop(self, name: str) -> None:
        """Rename a file no longer needed to ``*.drop``, for the next sync job to remove
        (removing a file just written frees its page cache: it can take tens of ms)."""
        path = os.path.join(self.path, name)
        try:
            os.rename(path, path + ".drop")
        except FileNotFoundError:
            return
        self._drops.append(path + ".drop")

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.path, name))
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ durability

    def sync_job(self) -> Callable[[], None] | None:
        """Flush, then return a callable that fsyncs everything written so far (safe to run
        in a worker thread, even after close/destroy), or None if nothing is dirty."""
        try:
            self.flush()
        except OSError:  # (e.g. ENOSPC: the dropped segments' space is needed now)
            drops, self._drops = self._drops, []
            _remove(drops)
            raise
        fds, self._sync_fds = self._sync_fds, []
        try:
            if self._msgs_dirty:
                fds.append(os.dup(self._active.fd))  # type: ignore[union-attr, arg-type]
                self._msgs_dirty = False
            for seg in self._afds.values():
                if seg.adirty:
                    fds.append(os.dup(seg.afd))  # type: ignore[arg-type]
                    seg.adirty = False
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        sync_dir, self._dir_dirty = self._dir_dirty, False
        unlinks, self._unlinks = self._unlinks, []
        drops, self._drops = self._drops, []
        if not (fds or sync_dir or unlinks or drops):
            return None
        return fsync_job(fds, self.path if sync_dir else None, unlinks, drops)

    # ------------------------------------------------------------------ compaction

    def compact(
        self, max_ratio: float = 2.0, limit: int | None = None, only: Iterable[int] | None = None,
    ) -> dict[int, int]:
        """Rewrite every inactive segment whose disk use (msgs + acks) exceeds max_ratio x
        its live bytes, keeping only live records in order (``limit``: at most that many,
        the sparsest first; ``only``: of these segment numbers). Returns {old: new position}
        for every record that moved; the caller must apply it to its index at once.
        Blocking (fsyncs the new files); meant to be called rarely, see maybe_compact().
        An OSError rewriting a segment (ENOSPC...) leaves that segment as it was and ends
        the pass, logged: the moves of the segments rewritten before it are returned all
        the same (raising would lose them, and the caller's index would point into the
        new files at the old offsets)."""
        moved: dict[int, int] = {}
        for seg in self._candidates(max_ratio, limit, only):
            try:
                self._rewrite(seg, moved)
            except OSError as exc:
                log.error("%s: compacting segment %d failed, kept as it was: %s", self.path, seg.n, exc)
                break
        return moved

    def _candidates(self, max_ratio: float, limit: int | None, only: Iterable[int] | None = None) -> list[_Segment]:
        pool = self._segs.values() if only is None else [g for n in only if (g := self._segs.get(n)) is not None]
        segs = [seg for seg in pool
                if seg is not self._active and seg.count and seg.disk + seg.asize + len(seg.abuf) > max_ratio * seg.nbytes]
        if limit is not None and len(segs) > limit:
            segs = sorted(segs, key=lambda g: g.nbytes / (g.disk + g.asize + len(g.abuf)))[:limit]
        return segs

    def compaction_candidates(self, max_ratio: float = 2.0, limit: int | None = None) -> list[int]:
        """The numbers of the segments :meth:`compact` with the same arguments would
        rewrite now (to read them ahead with :meth:`will_need_segments`)."""
        return [seg.n for seg in self._candidates(max_ratio, limit)]

    def has_segment(self, n: int) -> bool:
        """Whether segment ``n`` still exists (not yet dropped as fully acked)."""
        return n in self._segs

    def maybe_compact(self) -> dict[int, int]:
        """O(1) unless disk use exceeds 2 x live bytes + segment_size; then compact().
        After a pass that could not get below that (e.g. acks piling up in the active
        segment), wait for the excess to grow by half a segment before scanning again."""
        excess = self._disk_bytes - 2 * self._live_bytes
        if excess <= self._compact_threshold:
            if excess <= self.segment_size:
                self._compact_threshold = self.segment_size
            return {}
        moved = self.compact()
        excess = self._disk_bytes - 2 * self._live_bytes
        self._compact_threshold = max(self.segment_size, excess + self.segment_size // 2)
        return moved

    def _rewrite(self, seg: _Segment, moved: dict[int, int]) -> None:
        fd = self._read_fd(seg)
        data = os.pread(fd, seg.end, 0)
        new = bytearray()
        offs = array("I")
        base = seg.n << 32
        with memoryview(data) as mv:
            for i, live in enumerate(seg.live):
                if live:
                    off = seg.offs[i]
                    if off != len(new):
                        moved[base | off] = base | len(new)
                    offs.append(len(new))
                    new += mv[off:off + seg.rec_len(i)]
        gen = seg.gen + 1
        final = os.path.join(self.path, _name("msgs", seg.n, gen))
        tmp = final + ".tmp"
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                _write_at(wfd, new, 0)
                os.fsync(wfd)
            finally:
                os.close(wfd)
            os.rename(tmp, final)
            _fsync_dir(self.path)  # new generation durable before the old one goes
        except OSError:
            for k in [k for k in moved if k >> 32 == seg.n]:
                del moved[k]
            self._unlink(os.path.basename(tmp))
            self._unlink(os.path.basename(final))  # (renamed, but not known durable)
            raise
        # "delivered" marks of live records live in the old ack file: carry them over
        marks = self._delivered_marks(seg)
        # switch over: the old pair (msgs, acks) is now garbage
        self._release_fd(seg)
        if seg.afd is not None:
            os.close(seg.afd)
            del self._afds[seg.n]
            seg.afd = None
        self._ack_pending.pop(seg.n, None)
        old_pair = (_name("msgs", seg.n, seg.gen), _name("acks", seg.n, seg.gen))
        if self.ephemeral:
            for name in old_pair:
                self._unlink(name)
        else:  # (by the next sync job, off the event loop)
            for name in old_pair:
                self._drop(name)
            self._dir_dirty = True
        self._disk_bytes += len(new) - seg.disk - seg.asize - len(seg.abuf)
        seg.gen, seg.offs, seg.live = gen, offs, bytearray(b"\1") * len(offs)
        seg.end = seg.disk = len(new)
        seg.abuf, seg.asize, seg.adirty = bytearray(), 0, False
        if marks:
            for p in sorted(marks):
                seg.abuf += _POS.pack(moved.get(p, p) | DELIVERED)
            self._disk_bytes += len(seg.abuf)
            self._ack_pending[seg.n] = seg

    def _delivered_marks(self, seg: _Segment) -> set[int]:
        """Live positions flagged delivered in a segment's ack file (flushed and buffered)."""
        raw = bytes(seg.abuf)
        if seg.asize:
            try:
                with open(os.path.join(self.path, _name("acks", seg.n, seg.gen)), "rb") as f:
                    raw = f.read(seg.asize) + raw
            except FileNotFoundError:
                pass
        k = len(raw) // 8
        entries = struct.unpack_from(f">{k}Q", raw) if k else ()
        out = set()
        for e in entries:
            if e & DELIVERED:
                p = e & ~DELIVERED
                i = bisect_left(seg.offs, p & _MASK)
                if i < len(seg.offs) and seg.offs[i] == p & _MASK and seg.live[i]:
                    out.add(p)
        return out

    # ------------------------------------------------------------------ misc

    @property
    def live_count(self) -> int:
        """Number of live (appended or recovered, not acked) records."""
        return self._live_count

    @property
    def live_bytes(self) -> int:
        """Bytes of live records, 8-byte headers included."""
        return self._live_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes of segment and ack files (buffered bytes included)."""
        return self._disk_bytes

    def close(self) -> None:
        """Flush, fsync what is dirty and close all files. Idempotent."""
        if self._closed:
            return
        try:
            job = self.sync_job()
            if job is not None:
                job()
        finally:
            self._close_fds()

    def _close_fds(self) -> None:
        self._closed = True
        for seg in self._segs.values():
            if seg.fd is not None:
                os.close(seg.fd)
            if seg.afd is not None:
                os.close(seg.afd)
            seg.fd = seg.afd = None
        for fd in self._sync_fds:
            os.close(fd)
        self._sync_fds = []
        self._segs.clear()
        self._rfds.clear()
        self._afds.clear()
        self._ack_pending.clear()
        self._active = None
        self._wbuf = bytearray()

    def destroy(self) -> None:
        """Close without flushing and remove the directory (queue deletion)."""
        self._close_fds()
        # Rename first so a crash mid-rmtree never leaves a half queue that looks valid.
        doomed = self.path.rstrip(os.sep) + ".deleted"
        try:
            os.rename(self.path, doomed)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return
            doomed = self.path
        shutil.rmtree(doomed, ignore_errors=True)
