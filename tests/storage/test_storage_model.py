"""Property-based test of QueueLog against a model, with simulated crashes.

Durability model: what flush() (or a sync job) pushed to the OS is durable; records appended
and acks made after the last flush may or may not survive a crash. A crash drops the object
without flushing, then either cuts the last segment somewhere in its non-durable tail (a
torn write) or cuts an ack file at any byte (those acks are lost, so those records may
come back). Recovery must return, in order and with exact payloads, every durable unacked
record, never a record whose ack was flushed (unless that ack entry was cut), and never
anything that was not appended.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from leveret.storage import QueueLog
from leveret.storage import log as log_module

pytestmark = pytest.mark.slow  # a hundred examples of up to 50 steps

SEG = 512


def segment_files(d: Path, kind: str) -> list[tuple[int, int, str]]:
    out = []
    for name in os.listdir(d):
        parts = name.split(".")
        if parts[0] == kind and len(parts) in (2, 3) and all(x.isdigit() for x in parts[1:]):
            out.append((int(parts[1]), int(parts[2]) if len(parts) == 3 else 0, name))
    return sorted(out)


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # (append_parts writes payloads of 128 bytes or more from their parts, directly)
        self.direct_min, log_module.DIRECT_MIN = log_module.DIRECT_MIN, 128
        self.dir = Path(tempfile.mkdtemp(prefix="qlog-model-"))
        self.log = QueueLog(self.dir, SEG)
        self.log.recover()
        self.live: dict[int, bytes] = {}  # what the log holds now
        self.payloads: dict[int, bytes] = {}  # every position handed out (after remaps)
        self.durable: set[int] = set()  # appended before the last flush
        self.pending: set[int] = set()  # appended since the last flush
        self.acked_durable: set[int] = set()
        self.acked_pending: set[int] = set()
        self.counter = 0
        self.mark = self.tail()

    def tail(self) -> tuple[int, int]:
        """(number, size) of the last segment file: its bytes below size are durable."""
        segs = segment_files(self.dir, "msgs")
        if not segs:
            return (0, 0)
        n, _, name = segs[-1]
        return (n, os.path.getsize(self.dir / name))

    def teardown(self) -> None:
        log_module.DIRECT_MIN = self.direct_min
        self.log._close_fds()
        shutil.rmtree(self.dir, ignore_errors=True)

    def remap(self, moved: dict[int, int]) -> None:
        if not moved:
            return

        def m(s: set[int]) -> set[int]:
            return {moved.get(p, p) for p in s}

        self.live = {moved.get(p, p): b for p, b in self.live.items()}
        for old, new in moved.items():
            self.payloads[new] = self.payloads[old]
        self.durable, self.pending = m(self.durable), m(self.pending)
        # an acked position may now name a moved live record: forget that ack
        self.acked_durable -= self.live.keys()
        self.acked_pending -= self.live.keys()
        for p, b in self.live.items():
            assert self.log.read(p) == b

    # ------------------------------------------------------------------ operations

    @rule(size=st.integers(1, 300) | st.just(SEG + 100))
    def append(self, size: int) -> None:
        self.counter += 1
        data = bytes((self.counter + k) % 256 for k in range(size))
        p = self.log.append(data)
        # (a number can be reused only once every file of it is gone, e.g. an emptied log)
        assert p not in self.live
        assert not self.live or p > max(self.live)
        self.live[p] = data
        self.payloads[p] = data
        self.pending.add(p)

    @rule(size=st.integers(1, 300) | st.just(SEG + 100), cuts=st.lists(st.integers(1, 299), max_size=3))
    def append_parts(self, size: int, cuts: list[int]) -> None:
        self.counter += 1
        data = bytes((self.counter + k) % 256 for k in range(size))
        edges = sorted({0, size, *(c for c in cuts if c < size)})
        p = self.log.append_parts([memoryview(data)[a:b] for a, b in zip(edges, edges[1:], strict=False)])
        assert p not in self.live
        assert not self.live or p > max(self.live)
        self.live[p] = data
        self.payloads[p] = data
        self.pending.add(p)

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        if not self.live:
            return
        p = data.draw(st.sampled_from(sorted(self.live)))
        assert self.log.ack(p)
        assert not self.log.ack(p)
        del self.live[p]
        self.acked_pending.add(p)

    def _flushed(self) -> None:
        self.durable |= self.pending
        self.pending.clear()
        self.acked_durable |= self.acked_pending
        self.acked_pending.clear()
        self.mark = self.tail()

    @rule()
    def flush(self) -> None:
        self.log.flush()
        self._flushed()

    @rule()
    def sync(self) -> None:
        job = self.log.sync_job()
        if job is not None:
            job()
        self._flushed()
        on_disk = sum(os.path.getsize(self.dir / name)
                      for kind in ("msgs", "acks") for _, _, name in segment_files(self.dir, kind))
        assert on_disk == self.log.disk_bytes

    @rule()
    def compact(self) -> None:
        self.remap(self.log.compact())

    @rule()
    def maybe_compact(self) -> None:
        self.remap(self.log.maybe_compact())
        # disk use stays bounded (acks of the active segment aside)
        assert self.log.disk_bytes <= 2 * self.log.live_bytes + 3 * SEG + 8 * 64

    @rule(data=st.data(), target_acks=st.booleans())
    def crash(self, data: st.DataObject, target_acks: bool) -> None:
        self.log._close_fds()  # the process dies: userspace buffers are gone
        resurrect: set[int] = set()
        if target_acks and segment_files(self.dir, "acks"):
            _, _, name = data.draw(st.sampled_from(segment_files(self.dir, "acks")))
            raw = (self.dir / name).read_bytes()
            cut = data.draw(st.integers(0, len(raw)))
            resurrect = {struct.unpack_from(">Q", raw, i)[0]
                         for i in range(0, len(raw) - 7, 8) if i + 8 > cut}
            os.truncate(self.dir / name, cut)
        elif segment_files(self.dir, "msgs"):
            n, gen, name = segment_files(self.dir, "msgs")[-1]
            size = os.path.getsize(self.dir / name)
            lo = size if gen or n < self.mark[0] else self.mark[1] if n == self.mark[0] else 0
            os.truncate(self.dir / name, data.draw(st.integers(min(lo, size), size)))

        self.log = QueueLog(self.dir, SEG)
        seen: list[tuple[int, bytes]] = []
        out = list(self.log.recover(lambda p, v: seen.append((p, bytes(v)))))
        assert out == [p for p, _ in seen]
        assert out == sorted(set(out))
        got = dict(seen)
        for p, b in got.items():
            assert self.payloads.get(p) == b, "unknown record or wrong payload"
            assert p in self.live or p in self.acked_pending or p in resurrect, \
                "acked and flushed record came back"
        for p in self.durable & self.live.keys():
            assert got.get(p) == self.live[p], "durable record lost"
        self.live = got
        self.durable, self.pending = set(got), set()
        self.acked_durable.clear()
        self.acked_pending.clear()
        self.mark = self.tail()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def counts(self) -> None:
        assert self.log.live_count == len(self.live)
        assert self.log.live_bytes == sum(len(b) + 8 for b in self.live.values())

    @invariant()
    def reads(self) -> None:
        if self.live:
            p = max(self.live)
            assert self.log.read(p) == self.live[p]
            p = min(self.live)
            assert self.log.read(p) == self.live[p]


LogMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("STORAGE_MODEL_EXAMPLES", "100")), stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueLogModel = LogMachine.TestCase
