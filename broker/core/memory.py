"""The node-wide memory budget: how much of the messages' RAM each queue may hold, and
giving freed memory back to the system.

One :class:`MemoryBudget` per node (``Broker.memory``), shared by every queue's backing
store.  The queues keep counting what they hold exactly as before (``ready_bytes``,
``len(messages)``, the node's ``queued_bytes``: integer adds on the hot path); what
changes is what they compare those counts with.  Instead of constants per queue, the
thresholds where a queue becomes *backlogged* (in flow, with consumers) and where it
*pages* to its log are recomputed by :meth:`MemoryBudget.update` on the node's load tick
(every 100 ms), never per message, and set as plain attributes of every backing store
when they change:

* the budget ``limit`` (``Config.memory_budget``, 256 MiB by default, never above half
  the memory high watermark) is shared among the queues that hold messages in RAM: each
  one's *fair share* is ``limit / holders`` bytes (at least ``MIN_SHARE``), a message
  counted as its body plus ``MESSAGE_COST`` (the ``Message``, its entry tuple, the header
  bytes: ~512 bytes);
* a queue pages from two thirds of its share in bodies (``page_bytes``, at most
  ``backing.PAGE_MAX_BYTES``, the threshold of a queue on its own) or a third of it in
  messages' ``MESSAGE_COST`` (``page_len``, at most ``PAGE_MAX``): so the two counts the
  hot path already keeps are what it compares, and what a queue holds stays within its
  share; it is backlogged from half of those (``flow_bytes``) and three quarters
  (``flow_len``), as a queue on its own was.  So the queues holding the most reach their
  share, and their overflow logs, first, and publishers into the fullest queues get flow
  first; a queue that holds little is not slowed;
* past the whole budget (queues that cannot page: priority queues, a node without a data
  directory), the memory high watermark blocks publishers, as before.

Memory given back.  After a 50-queue firehose's queues were deleted, the broker kept
~650 MB: not Python objects (``sys.getallocatedblocks`` back to idle, pymalloc's arenas
17 MB) but free chunks in glibc's main heap (``[heap]`` in ``/proc/self/smaps``), which
``brk`` cannot give back while a live chunk sits above them (``bench/memprobe.py``).
``malloc_trim(0)`` returns them (682 -> 37 MB).  :meth:`MemoryBudget.maybe_trim` calls it
at quiet moments: when the node's loop is not busy and, since the last trim, its RSS has
grown by ``TRIM_SLACK`` or message bodies of that much were freed, at most once per
``TRIM_INTERVAL``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from leveret.broker.core import backing

log = logging.getLogger("leveret.memory")

DEFAULT_BUDGET = 256 << 20
#: bytes a message in RAM costs besides its body (Message, entry tuple, header bytes)
MESSAGE_COST = backing.MESSAGE_COST
MIN_SHARE = 3 << 19  # a queue's share is never below this (1.5 MiB: it pages from 1 MiB of bodies)
TRIM_SLACK = 32 << 20  # RSS grown by this much since the last trim: trim when quiet
TRIM_INTERVAL = 1.0  # seconds between two trims at most

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _libc_function(name: str) -> Any:
    """A C library function of this process (None where there is none such: not glibc).
    (``CDLL(None)``, the process's own symbols, as ``cli.tune_malloc`` does:
    ``ctypes.util.find_library`` runs ldconfig, hundreds of ms.)"""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_MALLINFO2 = _libc_function("mallinfo2")  # (glibc 2.33 and later)
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2
_MALLOC_TRIM = _libc_function("malloc_trim")


def heap_free() -> int:
    """Free bytes the C allocator holds in its arenas (glibc's ``mallinfo2().fordblks``;
    0 where it cannot be told): memory the process has and does not use."""
    return int(_MALLINFO2().fordblks) if _MALLINFO2 is not None else 0


def rss_bytes() -> int:
    """This process's resident set (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


class MemoryBudget:
    """The thresholds every queue's backing store compares its counts with."""

    __slots__ = ("limit", "used", "share", "thresholds", "page_len", "page_bytes", "flow_len", "flow_bytes", "holders",
                 "_trim", "trim_mark", "queued_peak", "trimmed_at", "trims", "trimmed_bytes")

    def __init__(self, limit: int = DEFAULT_BUDGET) -> None:
        self.limit = limit
        self.holders = 0  # queues holding messages in RAM at the last update
        self.used = 0  # what they hold: bodies and MESSAGE_COST per message
        self.share = limit  # each one's share of the limit
        self.page_len = backing.PAGE_MAX
        self.page_bytes = backing.PAGE_MAX_BYTES
        self.flow_len = backing.FLOW_LEN
        self.flow_bytes = backing.FLOW_BYTES
        self.thresholds = (0, 0, 0, 0)  # (flow_len, flow_bytes, page_len, page_bytes), as given to the stores
        self._trim = _MALLOC_TRIM
        self.trim_mark = rss_bytes()  # RSS after the last trim (followed down while quiet)
        self.queued_peak = 0  # the node's queued_bytes at most, since the last trim
        self.trimmed_at = 0.0
        self.trims = 0
        self.trimmed_bytes = 0  # RSS given back by trims, in total
        self.update(())

    def update(self, stores: Iterable[Any]) -> None:
        """Recompute the shares from the backing stores that hold messages in RAM; when
        they change, every store gets them (its ``flow_len`` ... ``page_bytes``: plain
        attributes, which its ``length()`` reads as it read module constants before)."""
        stores = list(stores)
        holders = used = 0
        for s in stores:
            n = len(s.messages)
            if n:
                holders += 1
                used += s.ready_bytes + n * MESSAGE_COST
        self.holders = holders
        self.used = used
        share = self.share = max(MIN_SHARE, self.limit // (holders or 1))
        # a queue pages from 2/3 of its share in bodies or 1/3 of it in MESSAGE_COSTs
        # (messages of ~1 KiB reach both together: bodies + bookkeeping = the share; the
        # hot path compares two counts, as before, and adds nothing per message)
        page_bytes = min(backing.PAGE_MAX_BYTES, share * 2 // 3)
        page_len = min(backing.PAGE_MAX, share // (3 * MESSAGE_COST))
        self.page_bytes = page_bytes
        self.page_len = page_len
        # backlogged (flow) below paging, in the same proportions as a queue on its own
        self.flow_bytes = min(backing.FLOW_BYTES, page_bytes // 2)
        self.flow_len = min(backing.FLOW_LEN, page_len * backing.FLOW_LEN // backing.PAGE_MAX)
        t = self.thresholds
        if t != (self.flow_len, self.flow_bytes, self.page_len, self.page_bytes):
            t = self.thresholds = (self.flow_len, self.flow_bytes, self.page_len, self.page_bytes)
            for s in stores:
                s.flow_len, s.flow_bytes, s.page_len, s.page_bytes = t

    def maybe_trim(self, quiet: bool, queued: int) -> int:
        """Give free heap memory back to the system if the node is quiet and, since the
        last trim, its RSS grew by ``TRIM_SLACK`` or message bodies of that much were freed
        (``queued``, the node's ``queued_bytes``, fell that far below its peak); the bytes
        of RSS given back.  Called on every tick (the peak is followed while busy too).

        Either signal alone misses a case: a trim leaves free chunks free, only not
        resident, so a later load that reuses them raises the RSS with nothing freed;
        and a trim taken at a quiet moment mid-load leaves the RSS mark high, so the
        bodies freed after it (queues drained or deleted) show as a fall of ``queued``,
        not as RSS growth.  (The allocator's own count of its free memory,
        :func:`heap_free`, walks every free chunk: 25 ms for a heap with 250,000 of them,
        too slow for every tick.)"""
        if queued > self.queued_peak:
            self.queued_peak = queued
        if self._trim is None or not quiet:
            return 0
        rss = rss_bytes()
        if rss < self.trim_mark:
            self.trim_mark = rss
        if rss - self.trim_mark < TRIM_SLACK and self.queued_peak - queued < TRIM_SLACK:
            return 0
        now = time.monotonic()
        if now - self.trimmed_at < TRIM_INTERVAL:
            return 0
        self._trim(0)
        after = rss_bytes()
        self.trimmed_at = now
        self.trim_mark = after
        self.queued_peak = queued
        freed = max(0, rss - after)
        self.trims += 1
        self.trimmed_bytes += freed
        if freed:
            log.debug("malloc_trim gave back %d bytes (RSS %d -> %d)", freed, rss, after)
        return freed


#: the budget of a node that has none of its own (a bare Node in a test)
DEFAULT = MemoryBudget()
