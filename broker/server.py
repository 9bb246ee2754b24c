"""The broker: the composition root of a node.

:class:`Broker` owns the vhosts (messaging core), the client connections (wire layer),
the per-read write flush, flow control and the persistence hooks.  It implements
:class:`leveret.broker.core.node.Node` and :class:`leveret.broker.wire.node.WireNode`, the
interfaces through which the core and the wire reach it, and offers the test tooling
(``leveret.testing``) its one hook, :meth:`Broker.intercept_deliveries`.  What merely hangs
off the node is composed, its public names kept here as thin delegations: the listeners
(``listening.Listeners``), the memory and disk alarms (``alarms.Alarms``), the counters and
totals (``totals.Totals``) and the users/permissions admin API (``admin.Admin``).
"""

from __future__ import annotations

import asyncio
import logging
import platform
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from leveret import __version__
from leveret.broker.admin import Admin
from leveret.broker.alarms import Alarms
from leveret.broker.config import Config
from leveret.broker.core import access as A
from leveret.broker.core.memory import MESSAGE_COST, MemoryBudget, heap_free, rss_bytes
from leveret.broker.core.node import DeliveryHook
from leveret.broker.core.persistence import Persistence
from leveret.broker.core.queue import Queue
from leveret.broker.core.vhost import VHost
from leveret.broker.definitions import apply_definitions, read_definitions
from leveret.broker.listener import Listener, check_ports
from leveret.broker.listening import Listeners
from leveret.broker.shovel import ShovelManager
from leveret.broker.totals import Totals
from leveret.broker.wire.acktimeout import AckTimeout
from leveret.broker.wire.connection import Connection
from leveret.protocol.constants import CONNECTION_FORCED

log = logging.getLogger("leveret")

VERSION = __version__  # (leveret/__init__.py: the one home of the version)
LOAD_INTERVAL = 0.1  # seconds between samples of the loop's CPU use (flow control)
QUIET_CPU = 0.25  # below this share of a core the node is quiet: free heap memory is given back


def _cpu_demand() -> float:
    """Seconds the calling thread ran or waited to run (Linux schedstat: on a shared
    machine a broker starved of CPU is as busy as one using it all); elsewhere, the
    process's CPU time."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            run, wait = f.read().split()[:2]
        return (int(run) + int(wait)) / 1e9
    except (OSError, ValueError):
        return time.process_time()


class Broker:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.vhosts: dict[str, VHost] = {}
        self.connections: set[Connection] = set()
        self.listeners = Listeners(self)  # AMQP, amqps, HTTP, Prometheus (leveret.broker.listening)
        self.dirty: list[Connection] = []
        self._flush_scheduled = False
        self.queued_bytes = 0
        self.alarm = False  # a memory or disk alarm is on (set by self.alarms; read per publish)
        self.alarms = Alarms(self)  # the memory and disk alarms (leveret.broker.alarms)
        # the node-wide budget of message bytes in RAM: each queue's thresholds (core.memory)
        self.memory = MemoryBudget(min(self.config.memory_budget, self.config.memory_high_watermark // 2))
        self.persistence: Persistence | None = None
        self.started_at = time.time()
        self.totals = Totals(self)  # the node's counters and totals (leveret.broker.totals)
        self.delivery_hook: DeliveryHook | None = None  # see intercept_deliveries (tests only)
        self.reply_channels: dict[str, Any] = {}  # direct reply-to key -> channel
        # flow control: the node is *busy* while its loop uses most of a core (sampled
        # every LOAD_INTERVAL s); only then do publishes into queues in flow cost credit
        self.busy = self.config.flow_cpu <= 0
        self.in_flow: set[Connection] = set()  # connections waiting for credit
        self._load_timer: asyncio.TimerHandle | None = None
        self.ack_timeout: AckTimeout | None = None  # consumer_timeout (leveret.broker.wire.acktimeout)
        self._load_mark = (0.0, 0.0)
        self._idle_samples = 0
        self.access = A.AccessControl()
        self.shovels = ShovelManager(self)  # dynamic shovels (leveret.broker.shovel)
        self._access_loading = True  # (no per-change work while the config is applied)
        self.admin = Admin(self)  # users, permissions, limits (leveret.broker.admin)
        self.access.on_change = self._access_changed
        # RabbitMQ's global runtime parameters (definitions' "global_parameters"): the
        # node's permanent id (Prometheus' rabbitmq_cluster_permanent_id), and cluster_name
        # once one is set; saved with the definitions
        self.global_parameters: dict[str, Any] = {
            "internal_cluster_id": "leveret-cluster-id-" + secrets.token_urlsafe(16)}
        # load_definitions: read (and checked) now, applied in start() after recovery;
        # raises definitions.DefinitionsError
        path = self.config.load_definitions
        self._definitions = read_definitions(path) if path else None
        for name in self.config.vhosts:
            self.add_vhost(name)
        self.apply_access_config()
        self._access_loading = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await check_ports(self.loop, self.listeners.configured_ports())  # every clash at once, before any listens
        if self.config.data_dir and self.persistence is None:
            # raises storage.DataDirLocked when another broker uses the directory
            self.persistence = Persistence(self, self.config.data_dir)
            try:
                self.persistence.recover()
                self.persistence.start()
            except BaseException:
                self.persistence.close()
                self.persistence = None
                raise
        try:
            self.shovels.load()
            if self._definitions is not None:
                apply_definitions(self, self._definitions, self.config.load_definitions or "")
            if self.persistence is not None and self.persistence.recovered_access:
                # the config is applied again over what was saved (the config wins)
                self.apply_access_config()
            if self.persistence is not None:
                self.persistence.save_definitions()
        except BaseException:
            if self.persistence is not None:
                self.persistence.close()
                self.persistence = None
            raise
        try:
            await self.listen()
        except BaseException:
            if self.persistence is not None:  # (port in use, ...): free the data directory
                self.persistence.close()
                self.persistence = None
            raise
        try:
            await self.listeners.start_http()
        except BaseException:
            await self.stop_listening(0)
            if self.persistence is not None:
                self.persistence.close()
                self.persistence = None
            raise
        self._load_mark = (self.loop.time(), _cpu_demand())
        self._load_timer = self.loop.call_later(LOAD_INTERVAL, self._sample_load)
        if self.config.consumer_timeout and self.ack_timeout is None:
            self.ack_timeout = AckTimeout(self, self.config.consumer_timeout)
            self.ack_timeout.start()
        self.shovels.start()

    def _sample_load(self) -> None:
        """Busy or not: the share of a core the loop's thread used or waited for since
        the last sample, with hysteresis (busy at once, idle after two quiet samples)."""
        now, cpu = self.loop.time(), _cpu_demand()
        wall0, cpu0 = self._load_mark
        self._load_mark = (now, cpu)
        threshold = self.config.flow_cpu
        # the queues' shares of the memory budget; free heap given back when quiet
        demand = (cpu - cpu0) / max(1e-9, now - wall0)
        memory = self.memory
        memory.update(q.store for vh in self.vhosts.values() for q in vh.queues.values())
        memory.maybe_trim(demand < QUIET_CPU, self.queued_bytes)
        if threshold > 0:
            if cpu - cpu0 >= threshold * (now - wall0):
                self.busy = True
                self._idle_samples = 0
            elif self.busy:
                self._idle_samples += 1
                if self._idle_samples >= 2:
                    self.busy = False
                    for c in list(self.in_flow):
                        c.flow_granted(None, None)
                    self.flush_all()
        self._load_timer = self.loop.call_later(LOAD_INTERVAL, self._sample_load)

    # the listeners (leveret.broker.listening.Listeners), under their old names

    async def listen(
        self, host: str | list[str] | None = None, port: int | None = None, tls_port: int | None = None
    ) -> None:
        """Open the listening socket(s): see :meth:`Listeners.listen`."""
        await self.listeners.listen(host, port, tls_port)

    async def stop_listening(self, grace: float = 1.0, abort: bool = True) -> tuple[list[str], int]:
        """Close the listeners and the connections: see :meth:`Listeners.stop_listening`."""
        return await self.listeners.stop_listening(grace, abort)

    @property
    def server(self) -> Listener | None:
        return self.listeners.server

    @property
    def tls_server(self) -> Listener | None:
        return self.listeners.tls_server

    @property
    def http(self) -> Any:
        """The management HTTP API (leveret.broker.http), when on."""
        return self.listeners.http

    @property
    def prometheus(self) -> Any:
        """The Prometheus endpoint, when on."""
        return self.listeners.prometheus

    @property
    def addresses(self) -> list[str]:
        return self.listeners.addresses

    @property
    def port(self) -> int:
        return self.listeners.port

    @property
    def tls_port(self) -> int | None:
        return self.listeners.tls_port

    @property
    def http_port(self) -> int | None:
        return self.listeners.http_port

    @property
    def http_tls_port(self) -> int | None:
        return self.listeners.http_tls_port

    @property
    def prometheus_port(self) -> int | None:
        return self.listeners.prometheus_port

    @property
    def prometheus_tls_port(self) -> int | None:
        return self.listeners.prometheus_tls_port

    async def stop(self, timeout: float = 1.0) -> None:
        """Close the listener, send connection.close 320 to every client, then stop."""
        await self.shovels.stop()
        await self.listeners.stop_http()
        await self.stop_listening(timeout)
        if self._load_timer is not None:
            self._load_timer.cancel()
            self._load_timer = None
        if self.ack_timeout is not None:
            self.ack_timeout.stop()
            self.ack_timeout = None
        self.alarms.stop()
        if self.persistence is not None:
            self.persistence.close()
            self.persistence = None
        for v in self.vhosts.values():
            for q in v.queues.values():
                q.cancel_timers()
            for x in v.exchanges.values():
                x.close()
        await asyncio.sleep(0)

    # ------------------------------------------------------------------ output batching

    def mark_dirty(self, conn: Connection) -> None:
        self.dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        """Write out everything queued for every connection since the last flush."""
        self._flush_scheduled = False
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for conn in dirty:
                conn.flush()
        self.alarms.check_alarm()

    # the alarms (leveret.broker.alarms.Alarms); Broker.alarm stays a plain attribute (hot path)

    def memory_breakdown(self) -> dict[str, Any]:
        """Where the process's memory is, in RabbitMQ's ``/api/nodes/{name}/memory`` parts
        (bytes): ``binary`` the message bodies held in RAM by queues and being received,
        ``queue_procs`` the queues' bookkeeping of them (``core.memory.MESSAGE_COST`` per
        message in RAM, 8 bytes per paged-out position), ``connection_writers`` output
        not yet taken by the sockets, ``allocated_unused`` free memory the C allocator
        keeps (``core.memory.heap_free``: it walks the free chunks, some ms in a fragmented
        heap, so only this asks it), ``other_proc`` the rest of the RSS (the interpreter,
        code, connections, unacked deliveries, the overflow logs' write buffers)."""
        rss = rss_bytes()
        queue_procs = 0
        for vh in self.vhosts.values():
            for q in vh.queues.values():
                s = q.store
                queue_procs += len(s.messages) * MESSAGE_COST + 8 * (len(s.tail) - s.tail_start)
        writers = 0
        for c in self.connections:
            writers += sum(len(p) for p in c.out)
            t = c.transport
            if t is not None:
                try:
                    writers += t.get_write_buffer_size()
                except (AttributeError, RuntimeError):
                    pass
        unused = heap_free()
        parts = {"connection_readers": 0, "connection_writers": writers, "connection_channels": 0,
                 "connection_other": 0, "queue_procs": queue_procs, "queue_slave_procs": 0,
                 "quorum_queue_procs": 0, "plugins": 0, "metrics": 0, "mgmt_db": 0, "mnesia": 0,
                 "other_ets": 0, "binary": max(0, self.queued_bytes), "msg_index": 0, "code": 0, "atom": 0,
                 "other_system": 0, "allocated_unused": unused, "reserved_unallocated": 0}
        parts["other_proc"] = max(0, rss - sum(parts.values()))
        m = self.memory
        return {
            "memory": {**parts, "strategy": "rss", "total": {"erlang": rss, "rss": rss, "allocated": rss}},
            # Leveret's own: the node-wide budget of message bytes in RAM (core.memory)
            "budget": {"limit": m.limit, "used": m.used, "queues_holding": m.holders,
                       "queue_share": m.share, "queue_page_bytes": m.page_bytes, "queue_page_messages": m.page_len,
                       "trims": m.trims, "trimmed_bytes": m.trimmed_bytes},
        }

    def check_alarm(self) -> None:
        self.alarms.check_alarm()

    def set_disk_alarm(self, on: bool, free: int = 0) -> None:
        self.alarms.set_disk_alarm(on, free)

    def disk_error(self, exc: OSError) -> None:
        self.alarms.disk_error(exc)

    def disk_write_ok(self) -> None:
        self.alarms.disk_write_ok()

    def vhosts_down(self) -> list[str]:
        return self.alarms.vhosts_down()

    @property
    def alarm_reason(self) -> str:
        return self.alarms.alarm_reason

    @property
    def memory_alarm(self) -> bool:
        return self.alarms.memory_alarm

    @property
    def disk_alarm(self) -> bool:
        return self.alarms.disk_alarm

    @property
    def write_failed(self) -> bool:
        return self.alarms.write_failed

    # ------------------------------------------------------------------ vhosts / auth

    def add_vhost(self, name: str) -> VHost:
        """Create a vhost (if new: the default users get full permissions on it)."""
        v = self.vhosts.get(name)
        if v is None:
            v = self.vhosts[name] = VHost(self, name)
            for user in self.admin.default_users:
                if user in self.access.users:
                    self.access.set_permissions(user, name)
            self._save_definitions()
        return v

    def delete_vhost(self, name: str) -> None:
        """Delete a vhost: its connections are closed (320), its queues, permissions
        and limits deleted."""
        v = self.vhosts.pop(name, None)
        if v is None:
            return
        for c in list(self.connections):
            if c.vhost is v:
                c.close_forced(CONNECTION_FORCED, f"vhost '{name}' is deleted")
        for q in list(v.queues.values()):
            v.delete_queue(q)
        for x in v.exchanges.values():
            x.removed()  # (a delayed exchange's timer and log)
        self.totals.vhost_deleted(v)
        self.access.forget_vhost(name)
        self.shovels.vhost_deleted(name)
        self._save_definitions()

    def _save_definitions(self) -> None:
        if self.persistence is not None and not self._access_loading:
            self.persistence.save_definitions()

    # ------------------------------------------------------------------ users and permissions
    #
    # The runtime admin API (leveret.broker.admin.Admin), under its old names.

    def apply_access_config(self) -> None:
        self.admin.apply_access_config()

    def _access_changed(self) -> None:
        self.admin.access_changed()

    def add_user(
        self,
        name: str,
        password: str | None = None,
        *,
        password_hash: str | None = None,
        hashing_algorithm: str = A.SHA256,
        tags: list[str] | str = (),  # type: ignore[assignment]
    ) -> A.User:
        return self.admin.add_user(
            name, password, password_hash=password_hash, hashing_algorithm=hashing_algorithm, tags=tags
        )

    def delete_user(self, name: str) -> bool:
        return self.admin.delete_user(name)

    def set_permissions(self, user: str, vhost: str, configure: str = ".*", write: str = ".*", read: str = ".*") -> None:
        self.admin.set_permissions(user, vhost, configure, write, read)

    def clear_permissions(self, user: str, vhost: str) -> None:
        self.admin.clear_permissions(user, vhost)

    def set_topic_permissions(self, user: str, vhost: str, exchange: str, write: str = ".*", read: str = ".*") -> None:
        self.admin.set_topic_permissions(user, vhost, exchange, write, read)

    def clear_topic_permissions(self, user: str, vhost: str, exchange: str | None = None) -> None:
        self.admin.clear_topic_permissions(user, vhost, exchange)

    def set_vhost_limits(self, vhost: str, limits: dict[str, int]) -> None:
        self.admin.set_vhost_limits(vhost, limits)

    def authenticate(self, user: str, password: str) -> bool:
        return self.admin.authenticate(user, password)

    def user_exists(self, user: str) -> bool:
        return self.admin.user_exists(user)

    def trusted_login(self, user: str, password: str) -> bool:
        """A login of one of this broker's own clients: a shovel's local end
        (``leveret.broker.shovel``), with a secret that never leaves the process."""
        return self.shovels.trusted_login(user, password)

    @property
    def cluster_name(self) -> str:
        """The ``cluster_name`` global parameter, else ``leveret@<hostname>``."""
        name = self.global_parameters.get("cluster_name")
        return name if isinstance(name, str) and name else f"leveret@{socket.gethostname()}"

    def set_global_parameter(self, name: str, value: Any) -> None:
        self.global_parameters[name] = value
        self._save_definitions()

    def server_properties(self) -> dict[str, Any]:
        return {
            "product": "Leveret",
            "version": VERSION,
            "platform": f"Python {platform.python_version()}",
            "copyright": "Leveret contributors",
            "information": "An AMQP 0-9-1 broker on asyncio; see https://www.rabbitmq.com/ for the protocol",
            "cluster_name": self.cluster_name,
            "capabilities": {
                "publisher_confirms": True,
                "exchange_exchange_bindings": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "connection.blocked": True,
                "consumer_priorities": True,
                "authentication_failure_close": True,
                "per_consumer_qos": True,
                "direct_reply_to": True,
            },
        }

    # ------------------------------------------------------------------ totals
    #
    # The counters and sums (leveret.broker.totals.Totals), under their old names.

    @property
    def stats_published(self) -> int:
        return self.totals.stats_published

    @property
    def stats_delivered(self) -> int:
        return self.totals.stats_delivered

    @property
    def stats_acked(self) -> int:
        return self.totals.stats_acked

    @property
    def stats_received_confirm(self) -> int:
        return self.totals.stats_received_confirm

    # (written by the wire layer, through WireNode)
    @property
    def stats_channels_opened(self) -> int:
        return self.totals.stats_channels_opened

    @stats_channels_opened.setter
    def stats_channels_opened(self, n: int) -> None:
        self.totals.stats_channels_opened = n

    @property
    def stats_received_confirm_gone(self) -> int:
        return self.totals.stats_received_confirm_gone

    @stats_received_confirm_gone.setter
    def stats_received_confirm_gone(self, n: int) -> None:
        self.totals.stats_received_confirm_gone = n

    def queue_stat(self, name: str) -> int:
        return self.totals.queue_stat(name)

    def reply_queue_gone(self, q: Queue) -> None:
        self.totals.reply_queue_gone(q)

    def count_auth(self, protocol: str, ok: bool) -> None:
        self.totals.count_auth(protocol, ok)

    def message_totals(self) -> dict[str, int]:
        return self.totals.message_totals()

    # ------------------------------------------------------------------ storage hooks

    def definitions_changed(self, obj: Any) -> None:
        """A definition changed; ``obj`` is the durable one concerned (None: transient)."""
        if obj is not None and self.persistence is not None:
            self.persistence.save_definitions()

    def queue_created(self, q: Any) -> None:
        self.totals.stats_queues_created += 1
        if q.durable and self.persistence is not None:
            self.persistence.attach(q)
            self.persistence.save_definitions()

    def queue_deleted(self, q: Any) -> None:
        self.totals.stats_queues_deleted += 1
        if q.durable and self.persistence is not None:
            self.persistence.detach(q)
            self.persistence.save_definitions()

    def queue_compacted(self, q: Queue, remap: Callable[[int], int]) -> None:
        for conn in self.connections:
            conn.remap_unacked(q, remap)

    # ------------------------------------------------------------------ the test hook

    def intercept_deliveries(self, hook: DeliveryHook | None) -> None:
        """The one hook for test tooling (``leveret.testing``): while ``hook`` is set,
        every consumer's deliveries, present and future, go to ``hook(consumer)`` (a
        :class:`~leveret.broker.core.consumer.DeliverySink` that may delay or drop them,
        and hands the others to ``consumer.channel``).  None restores direct delivery.
        A node without a hook pays nothing for it on the delivery path."""
        self.delivery_hook = hook
        queues = [q for v in self.vhosts.values() for q in v.queues.values()]
        queues += [ch.reply_queue for ch in self.reply_channels.values() if ch.reply_queue is not None]
        for q in queues:
            for c in q.consumers:
                c.sink = hook(c) if hook is not None else c.channel
