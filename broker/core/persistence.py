"""Durability: the broker's side of ``storage/``.

* Definitions (vhosts, users, permissions, vhost limits, policies and operator
  policies, durable exchanges, durable queues, bindings between durable objects) are saved as one JSON document through ``leveret.storage.MetadataStore`` whenever one
  changes; argument tables are stored as base64 of their AMQP encoding so every type
  survives.
* Persistent messages (delivery_mode 2) routed to durable queues are appended to the
  queue's ``leveret.storage.QueueLog`` (the record codec is ``leveret.storage.record``;
  the message side of it ``leveret.broker.core.message.to_record``).  A message with a
  record has ``seq = position << 32`` in its queue (``leveret.broker.core.backing``), so
  an ack, a requeue or recovery finds the record from the seq alone.
* Group commit: :class:`Syncer` runs one ``sync_job`` (fsync) at a time in a worker
  thread; everything appended before the job started is covered by it.  Publisher
  confirms and tx.commit-ok for persisted messages wait for it; without confirms a timer
  syncs every ``fsync_interval``.
* Disk alarm: below ``disk_free_limit`` bytes free (or after ENOSPC) publishers are
  blocked like in a memory alarm, until space returns.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import os
import shutil
import time
from array import array
from typing import TYPE_CHECKING, Any

from pamqp import decode as pdecode

from leveret.broker.core.policy import PolicyError, make_policy
from leveret.protocol import properties as P
from leveret.storage import DataDirLock, MessageStore, MetadataStore, QueueLog, record

if TYPE_CHECKING:
    from leveret.broker.core.delayed import DelayedStore
    from leveret.broker.core.node import Node
    from leveret.broker.core.queue import Queue

log = logging.getLogger("leveret.durable")

def encode_table(table: dict[str, Any]) -> str:
    return base64.b64encode(P.field_table(table or {})).decode()


def decode_table(data: str) -> dict[str, Any]:
    raw = base64.b64decode(data)
    return pdecode.field_table(raw)[1] if raw else {}


class Syncer:
    """Group commit: one fsync job at a time, covering every append made before it."""

    def __init__(self, node: Node, store: MessageStore) -> None:
        self.node = node
        self.store = store
        self.waiting: list[Any] = []  # objects with sync_started() / synced(ok)
        self.in_flight = False
        self._retry: asyncio.TimerHandle | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="leveret-fsync")

    def request(self, waiter: Any) -> None:
        self.waiting.append(waiter)
        if not self.in_flight and self._retry is None:
            self._start()

    def _start(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        try:
            job = self.store.sync_job()
        except OSError as exc:
            # e.g. ENOSPC while flushing: the data stays buffered in the logs and nothing
            # is confirmed until a later attempt writes it (publishers are blocked
            # meanwhile by the disk alarm)
            log.error("flush failed, retrying: %s", exc)
            self.node.disk_error(exc)
            if self._retry is None:
                self._retry = self.node.loop.call_later(0.5, self._start)
            return
        waiters, self.waiting = self.waiting, []
        for w in waiters:
            w.sync_started()
        if job is None:
            self.node.disk_write_ok()
            for w in waiters:
                w.synced(True)
            self.node.flush_all()
            return
        self.in_flight = True
        fut = self.node.loop.run_in_executor(self.executor, job)
        fut.add_done_callback(lambda f: self._done(f, waiters))

    def _done(self, fut: asyncio.Future[None], waiters: list[Any]) -> None:
        self.in_flight = False
        ok = True
        exc = fut.exception()
        if exc is not None:
            ok = False
            log.error("fsync failed: %s", exc)
        if ok:
            self.node.disk_write_ok()
        for w in waiters:
            w.synced(ok)
        if self.waiting:
            self._start()
        self.node.flush_all()

    def sync_now(self) -> None:
        """Blocking flush+fsync (shutdown)."""
        job = self.store.sync_job()
        if job is not None:
            job()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        self.executor.shutdown(wait=True)


class _Periodic:
    """Waiter used by the interval timer (nothing waits on it)."""

    def sync_started(self) -> None:
        pass

    def synced(self, ok: bool) -> None:
        pass


class Persistence:
    """Metadata + message store of one node, with recovery."""

    def __init__(self, node: Node, data_dir: str) -> None:
        self.node = node
        self.data_dir = data_dir
        # one broker per data directory: DataDirLocked (naming the holder's PID) otherwise
        self.lock = DataDirLock(data_dir)
        self.lock.acquire()
        try:
            self.meta = MetadataStore(os.path.join(data_dir, "definitions.json"))
            self.store = MessageStore(os.path.join(data_dir, "queues"), segment_size=node.config.segment_size)
        except BaseException:
            self.lock.release()
            raise
        # overflow logs of transient backlogs: never recovered, so wiped at every start
        self.overflow_root = os.path.join(data_dir, "overflow")
        shutil.rmtree(self.overflow_root, ignore_errors=True)
        self._overflows = 0
        self.syncer: Syncer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._disk_timer: asyncio.TimerHandle | None = None
        self._loading = False
        self.recovered_access = False  # recover() found saved users and permissions
        # the stores of durable delayed exchanges (their logs compacted by the tick)
        self.delayed_stores: set[DelayedStore] = set()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.syncer = Syncer(self.node, self.store)
        self._schedule()
        self._check_disk()

    def _schedule(self) -> None:
        self._timer = self.node.loop.call_later(self.node.config.fsync_interval, self._tick)

    def _tick(self) -> None:
        if self.syncer is not None and not self.syncer.in_flight:
            self.syncer.request(_Periodic())
        for v in self.node.vhosts.values():
            for q in v.queues.values():
                if q.log is not None:
                    q.maybe_compact()
        for store in list(self.delayed_stores):
            store.maybe_compact()
        self._schedule()

    def _check_disk(self) -> None:
        limit = self.node.config.disk_free_limit
        try:
            free = shutil.disk_usage(self.data_dir).free
        except OSError:
            free = limit + 1
        self.node.set_disk_alarm(free < limit or self.node.write_failed, free)
        self._disk_timer = self.node.loop.call_later(1.0, self._check_disk)

    def close(self) -> None:
        for t in (self._timer, self._disk_timer):
            if t is not None:
                t.cancel()
        if self.syncer is not None:
            try:
                self.syncer.sync_now()
            except OSError as exc:
                log.error("final fsync failed: %s", exc)
            self.syncer.close()
        try:
            try:
                self.store.close()
            except OSError as exc:  # e.g. still no space: what was fsynced is safe
                log.error("closing the message store failed: %s", exc)
            for v in self.node.vhosts.values():
                for q in v.queues.values():
                    q.store.drop_overflow()
            shutil.rmtree(self.overflow_root, ignore_errors=True)
        finally:
            self.lock.release()

    def open_overflow(self) -> QueueLog:
        """A new overflow log (see ``leveret.broker.core.backing``): an ephemeral
        ``QueueLog`` in its own directory under ``overflow/``."""
        self._overflows += 1
        path = os.path.join(self.overflow_root, str(self._overflows))
        qlog = QueueLog(path, self.node.config.segment_size, ephemeral=True)
        qlog.recover()
        return qlog

    # ------------------------------------------------------------------ definitions

    def save_definitions(self) -> None:
        if self._loading:
            return
        b = self.node
        exchanges, queues, bindings = [], [], []
        for v in b.vhosts.values():
            for x in v.exchanges.values():
                if x.durable and x.name and not x.name.startswith("amq."):
                    exchanges.append(
                        {
                            "vhost": v.name,
                            "name": x.name,
                            "type": x.type,
                            "auto_delete": x.auto_delete,
                            "internal": x.internal,
                            "arguments": encode_table(x.arguments),
                        }
                    )
                for (dest, rk, _), args in x.bindings.items():
                    if not x.durable or not dest.durable:
                        continue
                    kind = "exchange" if hasattr(dest, "bindings") else "queue"
                    bindings.append(
                        {
                            "vhost": v.name,
                            "source": x.name,
                            "destination": dest.name,
                            "kind": kind,
                            "routing_key": rk,
                            "arguments": encode_table(args),
                        }
                    )
            for q in v.queues.values():
                if q.durable:
                    queues.append(
                        {
                            "vhost": v.name,
                            "name": q.name,
                            "auto_delete": q.auto_delete,
                            "arguments": encode_table(q.arguments),
                        }
                    )
        data = {
            "version": 1,
            "vhosts": sorted(b.vhosts),
            "access": b.access.to_json(),
            "policies": [p.to_json() for v in b.vhosts.values() for p in v.policies.values()],
            "operator_policies": [p.to_json() for v in b.vhosts.values() for p in v.operator_policies.values()],
            "global_parameters": b.global_parameters,
            "exchanges": exchanges,
            "queues": queues,
            "bindings": bindings,
        }
        self.meta.save(data)

    def recover(self) -> None:
        """Rebuild durable definitions and queue contents from disk."""
        started = time.monotonic()
        b = self.node
        self._loading = True
        try:
            data = self.meta.load()
            known = set()
            for name in data.get("vhosts", []):
                b.add_vhost(name)
            if isinstance(data.get("global_parameters"), dict):  # (older data dirs: none)
                b.global_parameters.update(data["global_parameters"])
            if "access" in data:  # users, permissions, limits (older data dirs: none)
                b.access.restore(data["access"])
                self.recovered_access = True
            for section, operator in (("policies", False), ("operator_policies", True)):
                for pd in data.get(section, []):  # before the queues and exchanges they shape
                    v = b.vhosts.get(pd["vhost"])
                    if v is None:
                        continue
                    try:
                        v.set_policy(make_policy(v.name, pd["name"], pd, operator))
                    except PolicyError as exc:
                        log.error("cannot restore policy %r: %s", pd.get("name"), exc.reason)
            for e in data.get("exchanges", []):
                v = b.vhosts.get(e["vhost"])
                if v is None or e["name"] in v.exchanges:
                    continue
                if e["type"] == "x-delayed-message":
                    known.add(self.delayed_key(v.name, e["name"]))  # (its log: the messages it holds)
                try:
                    v.declare_exchange(e["name"], e["type"], durable=True, auto_delete=e["auto_delete"],
                                       internal=e["internal"], arguments=decode_table(e["arguments"]))
                except Exception as exc:  # (a type or arguments this version refuses: the rest still starts)
                    log.error("cannot restore exchange %r: %s", e, exc)
            nq = nmsg = 0
            for qd in data.get("queues", []):
                v = b.vhosts.get(qd["vhost"])
                if v is None:
                    continue
                q = v.declare_queue(
                    qd["name"], durable=True, auto_delete=qd["auto_delete"], arguments=decode_table(qd["arguments"]),
                    recovering=True,
                )
                known.add(self.key(q))
                nq += 1
                nmsg += q.message_count
            for bd in data.get("bindings", []):
                v = b.vhosts.get(bd["vhost"])
                if v is None:
                    continue
                args = decode_table(bd["arguments"])
                try:
                    if bd["kind"] == "queue":
                        dest = v.queues.get(bd["destination"])
                        if dest is not None:
                            v.bind_queue(dest, bd["source"], bd["routing_key"], args)
                    else:
                        v.bind_exchange(bd["destination"], bd["source"], bd["routing_key"], args)
                except Exception as exc:  # a dangling binding must not stop startup
                    log.error("cannot restore binding %r: %s", bd, exc)
            for key in self.store.list_queue_keys():
                if key not in known:
                    log.warning("removing the log of unknown queue %r", key)
                    self.store.delete_queue(key)
        finally:
            self._loading = False
        log.info(
            "recovered %d durable queues with %d messages in %.3f s",
            nq,
            nmsg,
            time.monotonic() - started,
        )

    # ------------------------------------------------------------------ queues

    @staticmethod
    def key(q: Queue) -> str:
        return f"{q.vhost.name}\x00{q.name}"

    @staticmethod
    def delayed_key(vhost: str, exchange: str) -> str:
        """The ``MessageStore`` key of a durable delayed exchange's log (no queue key
        starts with \x01)."""
        return f"\x01delayed\x00{vhost}\x00{exchange}"

    def attach(self, q: Queue) -> None:
        """Give a new durable queue its log, recovering what it holds."""
        if q.qtype.stream:  # (a stream's own log: storage.streamlog)
            q.attach_stream(self.store.open_stream(self.key(q), q.segment_size))  # type: ignore[attr-defined]
            return
        qlog = self.store.open_queue(self.key(q))
        transient: list[int] = []
        nbytes = 0

        def on_record(pos: int, payload: memoryview) -> None:
            nonlocal nbytes
            if payload[0] & record.F_TRANSIENT:
                transient.append(pos)
            else:
                nbytes += record.body_size(payload)

        positions = qlog.recover(on_record)
        if transient:
            drop = set(transient)
            for pos in transient:
                qlog.ack(pos)
            positions = array("Q", (p for p in positions if p not in drop))
        q.attach_log(qlog, positions, nbytes)

    def detach(self, q: Queue) -> None:
        if q.log is not None:
            q.store.detach_log()
            self.store.delete_queue(self.key(q))
            if q.qtype.stream:
                q.slog = None  # type: ignore[attr-defined]

    def request_sync(self, waiter: Any) -> None:
        assert self.syncer is not None
        self.syncer.request(waiter)
