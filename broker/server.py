"""The broker: the composition root of a node.

:class:`Broker` owns the event loop's listener, the vhosts (messaging core), the client
connections (wire layer), the per-read write flush, the memory and disk alarms and the
persistence hooks.  It implements :class:`leveret.broker.core.node.Node`, the interface
through which the core reaches it, and offers the test tooling (``leveret.testing``) its
one hook, :meth:`Broker.intercept_deliveries`.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from leveret import __version__
from leveret.broker.config import DEFAULT_HOSTS, DEFAULT_USERS, PORTS, Config, user_password
from leveret.broker.core import access as A
from leveret.broker.core.errors import AMQPError
from leveret.broker.core.memory import MESSAGE_COST, MemoryBudget, heap_free, rss_bytes
from leveret.broker.core.message import Message
from leveret.broker.core.node import DeliveryHook
from leveret.broker.core.persistence import Persistence
from leveret.broker.core.queue import Queue
from leveret.broker.core.vhost import VHOST_COUNTERS, VHost
from leveret.broker.definitions import apply_access_definitions, apply_definitions, read_definitions
from leveret.broker.listener import Listener, check_ports, open_listener
from leveret.broker.tls import http_context, server_context
from leveret.broker.wire.connection import Connection
from leveret.protocol.constants import ACCESS_REFUSED, NOT_FOUND
from leveret.protocol.methods import shortstr

log = logging.getLogger("leveret")

VERSION = __version__  # (leveret/__init__.py: the one home of the version)
LOAD_INTERVAL = 0.1  # seconds between samples of the loop's CPU use (flow control)
QUIET_CPU = 0.25  # below this share of a core the node is quiet: free heap memory is given back

SWEEP_INTERVAL = 1.0  # during an alarm: seconds between looks for blocked peers that left
# TCP states (linux/tcp_states.h) of a socket whose peer closed or reset it
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8


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


def peer_gone(transport: Any) -> bool:
    """The peer closed or reset the connection, even if unread bytes are still queued
    before its end of file (Linux TCP_INFO state); False where that cannot be told."""
    if transport is None or not hasattr(socket, "TCP_INFO"):
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return True
    return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


class Broker:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.vhosts: dict[str, VHost] = {}
        self.connections: set[Connection] = set()
        self.server: Listener | None = None
        self.tls_server: Listener | None = None  # the amqps listener (config.tls_port)
        self.ssl_context: ssl.SSLContext | None = None
        self._tls_bound: int | None = None  # the port the amqps listener got (listen again there)
        self.dirty: list[Connection] = []
        self._flush_scheduled = False
        self.queued_bytes = 0
        # the node-wide budget of message bytes in RAM: each queue's thresholds (core.memory)
        self.memory = MemoryBudget(min(self.config.memory_budget, self.config.memory_high_watermark // 2))
        self.alarm = False
        self.memory_alarm = False
        self.disk_alarm = False
        self.write_failed = False  # the last write to the log failed (ENOSPC, EIO)
        self._sweep: asyncio.TimerHandle | None = None
        self.persistence: Persistence | None = None
        self.stats_published_gone = 0  # messages published in vhosts since deleted
        self.stats_delivered_gone = 0  # ... delivered from them, and from direct reply-to
        self.stats_acked_gone = 0  # ... acked in them
        self.started_at = time.time()
        # churn, for the Prometheus endpoint (counted off the hot path)
        self.stats_connections_opened = 0
        self.stats_queues_created = 0
        self.stats_queues_deleted = 0
        # the message counters of deleted vhosts (VHost.stats_*), kept in the node's totals
        self.stats_deleted_vhosts = dict.fromkeys(VHOST_COUNTERS, 0)
        self.http: Any = None  # the management HTTP API (leveret.broker.http), when on
        self.prometheus: Any = None  # the Prometheus endpoint, when on
        self.delivery_hook: DeliveryHook | None = None  # see intercept_deliveries (tests only)
        self.reply_channels: dict[str, Any] = {}  # direct reply-to key -> channel
        # flow control: the node is *busy* while its loop uses most of a core (sampled
        # every LOAD_INTERVAL s); only then do publishes into queues in flow cost credit
        self.busy = self.config.flow_cpu <= 0
        self.in_flow: set[Connection] = set()  # connections waiting for credit
        self._load_timer: asyncio.TimerHandle | None = None
        self._load_mark = (0.0, 0.0)
        self._idle_samples = 0
        self.access = A.AccessControl()
        self._access_loading = True  # (no per-change work while the config is applied)
        self.access.on_change = self._access_changed
        self.default_users: list[str] = []  # full permissions on every vhost (Config.users)
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
        await check_ports(self.loop, self._configured_ports())  # every clash at once, before any listens
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
            await self._start_http()
        except BaseException:
            await self.stop_listening(0)
            if self.persistence is not None:
                self.persistence.close()
                self.persistence = None
            raise
        self._load_mark = (self.loop.time(), _cpu_demand())
        self._load_timer = self.loop.call_later(LOAD_INTERVAL, self._sample_load)

    def _configured_ports(self) -> list[tuple[str, str | list[str] | None, int]]:
        """(flag, hosts, port) of every listener the config asks for."""
        cfg = self.config
        hosts = {"port": cfg.host, "tls_port": cfg.host, "http_port": cfg.http_host or cfg.host,
                 "http_tls_port": cfg.http_host or cfg.host, "prometheus_port": cfg.prometheus_host or cfg.host,
                 "prometheus_tls_port": cfg.prometheus_host or cfg.host}
        return [(flag, hosts[name], getattr(cfg, name)) for name, flag in PORTS if getattr(cfg, name)]

    async def _start_http(self) -> None:
        """The management HTTP API and the Prometheus endpoint, if configured."""
        cfg = self.config
        http_on = cfg.http_port is not None or cfg.http_tls_port is not None
        prometheus_on = cfg.prometheus_port is not None or cfg.prometheus_tls_port is not None
        if not http_on and not prometheus_on:
            return
        from leveret.broker.http import start_http, start_prometheus

        ctx = http_context(cfg) if cfg.http_tls_port is not None or cfg.prometheus_tls_port is not None else None
        if http_on:
            self.http = await start_http(self, cfg.http_host or cfg.host, cfg.http_port, cfg.http_tls_port, ctx)
        if prometheus_on:
            try:
                self.prometheus = await start_prometheus(self, cfg.prometheus_host or cfg.host, cfg.prometheus_port,
                                                         cfg.prometheus_tls_port, ctx)
            except BaseException:
                if self.http is not None:
                    await self.http.stop()
                    self.http = None
                raise

    @property
    def http_port(self) -> int | None:
        """The port the HTTP API listens on (None: off)."""
        return self.http.port or None if self.http is not None else None

    @property
    def http_tls_port(self) -> int | None:
        """The port the HTTP API listens on over TLS (None: off)."""
        return self.http.tls_port or None if self.http is not None else None

    @property
    def prometheus_port(self) -> int | None:
        return self.prometheus.port or None if self.prometheus is not None else None

    @property
    def prometheus_tls_port(self) -> int | None:
        return self.prometheus.tls_port or None if self.prometheus is not None else None

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

    async def listen(
        self, host: str | list[str] | None = None, port: int | None = None, tls_port: int | None = None
    ) -> None:
        """Open the listening socket(s): the configured ones, or ``host``/``port`` (again,
        after :meth:`stop_listening`).  With ``config.tls_port`` set, an amqps listener on
        the same hosts too: at ``tls_port``, else the port it had before, else the
        configured one."""
        host = self.config.host if host is None else host
        port = self.config.port if port is None else port
        if tls_port is None:
            tls_port = self._tls_bound if self._tls_bound is not None else self.config.tls_port
        self.server = await self._open_listener(host, port, None)
        if tls_port is not None:
            try:
                if self.ssl_context is None:
                    self.ssl_context = server_context(self.config)
                self.tls_server = await self._open_listener(host, tls_port, self.ssl_context)
            except BaseException:
                self.server.close()
                self.server = None
                raise
            self._tls_bound = self.tls_server.sockets[0].getsockname()[1]
        # (debug: the command line prints the startup line itself, once)
        log.debug("Leveret %s listening on %s", VERSION, ", ".join(self.addresses))

    async def _open_listener(self, host: str | list[str], port: int, ctx: ssl.SSLContext | None) -> Listener:
        def factory() -> Connection:
            self.stats_connections_opened += 1
            return Connection(self, tls=ctx)

        timeout = self.config.handshake_timeout
        try:
            return await open_listener(self.loop, factory, host, port, 1024, self._count, ctx, timeout)
        except OSError:
            if not isinstance(host, list) or tuple(host) != DEFAULT_HOSTS:
                raise  # addresses asked for explicitly must all work
            # the default, on a machine without an IPv6 loopback: IPv4 alone
            return await open_listener(self.loop, factory, host[0], port, 1024, self._count, ctx, timeout)

    def _count(self) -> int:
        return len(self.connections)

    @property
    def addresses(self) -> list[str]:
        """Where it listens: ``127.0.0.1:5672``, ``[::1]:5672``, then the amqps listener's
        as ``127.0.0.1:5671 (amqps)``."""
        out = []
        for server, suffix in ((self.server, ""), (self.tls_server, " (amqps)")):
            for s in server.sockets if server else []:
                addr = s.getsockname()
                where = f"[{addr[0]}]:{addr[1]}" if s.family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}"
                out.append(where + suffix)
        return out

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def tls_port(self) -> int | None:
        """The port of the amqps listener (None: no TLS)."""
        if self.tls_server is None:
            return None
        return self.tls_server.sockets[0].getsockname()[1]

    async def stop_listening(self, grace: float = 1.0, abort: bool = True) -> tuple[list[str], int]:
        """Close the listener and send connection.close 320 to every client; after
        ``grace`` seconds drop those that did not answer (``abort``: reset; else close
        after what is queued for them).  Returns the hosts and port it listened on."""
        server, self.server = self.server, None
        tls_server, self.tls_server = self.tls_server, None
        addrs = [s.getsockname() for s in server.sockets] if server is not None else []
        for listener in (server, tls_server):
            if listener is not None:
                listener.close()
        for c in list(self.connections):
            c.close_forced()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.005)
        for c in list(self.connections):
            c.drop(abort)
        for listener in (server, tls_server):
            if listener is not None:
                await listener.wait_closed()
        return [a[0] for a in addrs], addrs[0][1] if addrs else 0

    async def stop(self, timeout: float = 1.0) -> None:
        """Close the listener, send connection.close 320 to every client, then stop."""
        for srv in (self.http, self.prometheus):
            if srv is not None:
                await srv.stop()
        self.http = self.prometheus = None
        await self.stop_listening(timeout)
        if self._load_timer is not None:
            self._load_timer.cancel()
            self._load_timer = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self.persistence is not None:
            self.persistence.close()
            self.persistence = None
        for v in self.vhosts.values():
            for q in v.queues.values():
                q.cancel_timers()
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
        self.check_alarm()

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
        high = self.config.memory_high_watermark
        if not self.memory_alarm:
            if self.queued_bytes > high:
                self.memory_alarm = True
                log.warning("memory alarm: %d bytes queued > %d, blocking publishers", self.queued_bytes, high)
                self._update_alarm()
        elif self.queued_bytes < high * 0.8:
            self.memory_alarm = False
            log.warning("memory alarm cleared")
            self._update_alarm()

    def set_disk_alarm(self, on: bool, free: int = 0) -> None:
        if on == self.disk_alarm:
            return
        self.disk_alarm = on
        if on:
            log.warning("disk alarm: %d bytes free < %d, blocking publishers", free, self.config.disk_free_limit)
        else:
            log.warning("disk alarm cleared")
        self._update_alarm()

    def disk_error(self, exc: OSError) -> None:
        """A write failed (ENOSPC, EIO): block publishers until a write succeeds again."""
        log.error("disk write failed: %s", exc)
        self.write_failed = True
        self.set_disk_alarm(True)

    def disk_write_ok(self) -> None:
        """A flush+fsync went through: a write failure no longer holds the disk alarm."""
        if self.write_failed:
            self.write_failed = False
            log.warning("disk writes succeed again")

    @property
    def alarm_reason(self) -> str:
        """connection.blocked's reason, in RabbitMQ's words."""
        return "low on memory" if self.memory_alarm else "low on disk"

    def _update_alarm(self) -> None:
        alarm = self.memory_alarm or self.disk_alarm
        if alarm == self.alarm:
            return
        self.alarm = alarm
        if alarm and self._sweep is None:
            self._sweep = self.loop.call_later(SWEEP_INTERVAL, self._sweep_blocked)
        for c in list(self.connections):
            if alarm:
                if c.is_publisher:
                    c.block(self.alarm_reason)
            else:
                c.unblock()
        self.flush_all()

    def _sweep_blocked(self) -> None:
        """During an alarm, drop the blocked publishers whose peer has gone.  A blocked
        connection is not read from, so its end of file is never seen; what it holds
        (parts of bodies) would keep the alarm up, and every publisher blocked, for good."""
        self._sweep = None
        self.check_alarm()  # bytes released by the connections dropped last time
        if not self.alarm:
            return
        for c in list(self.connections):
            if c.blocked and peer_gone(c.transport):
                log.info("blocked connection %s: the peer has gone, dropping it", c.peer)
                c.drop()
        self._sweep = self.loop.call_later(SWEEP_INTERVAL, self._sweep_blocked)

    # ------------------------------------------------------------------ vhosts / auth

    def add_vhost(self, name: str) -> VHost:
        """Create a vhost (if new: the default users get full permissions on it)."""
        v = self.vhosts.get(name)
        if v is None:
            v = self.vhosts[name] = VHost(self, name)
            for user in self.default_users:
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
                c.close_forced(320, f"vhost '{name}' is deleted")
        for q in list(v.queues.values()):
            v.delete_queue(q)
        for k in VHOST_COUNTERS:
            self.stats_deleted_vhosts[k] += getattr(v, "stats_" + k)
        self.stats_published_gone += v.stats_published
        self.stats_delivered_gone += v.stats_delivered
        self.stats_acked_gone += v.stats_acked
        self.access.forget_vhost(name)
        self._save_definitions()

    def _save_definitions(self) -> None:
        if self.persistence is not None and not self._access_loading:
            self.persistence.save_definitions()

    # ------------------------------------------------------------------ users and permissions
    #
    # The runtime admin API (the HTTP API of the operations issue builds on it).  Every
    # change is saved with the definitions and drops the decisions channels have cached.

    def apply_access_config(self) -> None:
        """Apply the users, permissions and limits of the config (at boot, and again
        over what the data directory had saved)."""
        cfg, acc = self.config, self.access
        loading, self._access_loading = self._access_loading, True
        try:
            acc.loopback_users = list(cfg.loopback_users)
            if self._definitions is not None:
                apply_access_definitions(self, self._definitions, cfg.load_definitions or "")
            for u in cfg.hashed_users:
                if "password_hash" in u:
                    acc.add_user(
                        u["name"],
                        password_hash=u["password_hash"],
                        hashing_algorithm=u.get("hashing_algorithm", A.SHA256),
                        tags=u.get("tags", ()),
                    )
                else:  # password_env / password_file: read and hashed now
                    acc.add_user(u["name"], user_password(u), tags=u.get("tags", ()))
            users = dict(cfg.users)
            if users == DEFAULT_USERS and any(n not in users for n in acc.users):
                users = {}  # the default guest only while no other user exists
            self.default_users = list(users)
            for name, password in users.items():
                acc.add_user(name, password, tags=["administrator"])
                for vhost in self.vhosts:
                    acc.set_permissions(name, vhost)
            for p in cfg.permissions:
                self.add_vhost(p["vhost"])
                acc.set_permissions(p["user"], p["vhost"], p["configure"], p["write"], p["read"])
            for t in cfg.topic_permissions:
                self.add_vhost(t["vhost"])
                acc.set_topic_permissions(t["user"], t["vhost"], t["exchange"], t["write"], t["read"])
            for vhost, limits in cfg.vhost_limits.items():
                self.add_vhost(vhost)
                acc.set_vhost_limits(vhost, limits)
        finally:
            self._access_loading = loading
        self._access_changed()

    def _access_changed(self) -> None:
        for c in self.connections:
            for ch in c.channels.values():
                ch.forget_decisions()
        self._save_definitions()

    def add_user(
        self,
        name: str,
        password: str | None = None,
        *,
        password_hash: str | None = None,
        hashing_algorithm: str = A.SHA256,
        tags: list[str] | str = (),  # type: ignore[assignment]
    ) -> A.User:
        """Create or replace a user (a password is hashed with SHA-256 here; a hash is
        taken as RabbitMQ's, with its algorithm)."""
        return self.access.add_user(
            name, password, password_hash=password_hash, hashing_algorithm=hashing_algorithm, tags=tags
        )

    def delete_user(self, name: str) -> bool:
        """Delete a user and its permissions and close its connections, as RabbitMQ
        (320 CONNECTION_FORCED - user 'x' is deleted)."""
        if not self.access.delete_user(name):
            return False
        if name in self.default_users:
            self.default_users.remove(name)
        for c in list(self.connections):
            if c.user == name:
                c.close_forced(320, f"user '{name}' is deleted")
        return True

    def _need_vhost(self, vhost: str) -> None:
        if vhost not in self.vhosts:
            raise KeyError(f"no vhost '{vhost}'")

    def set_permissions(self, user: str, vhost: str, configure: str = ".*", write: str = ".*", read: str = ".*") -> None:
        """Set a user's configure/write/read expressions on a vhost (ValueError for an
        expression that does not compile, KeyError for an unknown user or vhost)."""
        self._need_vhost(vhost)
        self.access.set_permissions(user, vhost, configure, write, read)

    def clear_permissions(self, user: str, vhost: str) -> None:
        self.access.clear_permissions(user, vhost)

    def set_topic_permissions(self, user: str, vhost: str, exchange: str, write: str = ".*", read: str = ".*") -> None:
        self._need_vhost(vhost)
        self.access.set_topic_permissions(user, vhost, exchange, write, read)

    def clear_topic_permissions(self, user: str, vhost: str, exchange: str | None = None) -> None:
        self.access.clear_topic_permissions(user, vhost, exchange)

    def set_vhost_limits(self, vhost: str, limits: dict[str, int]) -> None:
        """``{"max-connections": n, "max-queues": n}`` (negative: no limit)."""
        self._need_vhost(vhost)
        self.access.set_vhost_limits(vhost, limits)

    def authenticate(self, user: str, password: str) -> bool:
        return self.access.authenticate(user, password) is not None

    def user_exists(self, user: str) -> bool:
        """The user is known (EXTERNAL logs in by client certificate, without a password)."""
        return user in self.access.users

    def server_properties(self) -> dict[str, Any]:
        return {
            "product": "Leveret",
            "version": VERSION,
            "platform": f"Python {platform.python_version()}",
            "copyright": "Leveret contributors",
            "information": "An AMQP 0-9-1 broker on asyncio; see https://www.rabbitmq.com/ for the protocol",
            "cluster_name": f"leveret@{socket.gethostname()}",
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

    # ------------------------------------------------------------------ management
    #
    # What the HTTP API does besides listing: publish into and get from a vhost's
    # queues without an AMQP connection (RabbitMQ's /api/exchanges/.../publish and
    # /api/queues/.../get).

    def publish(self, vhost: str, exchange: str, routing_key: str, body: bytes, header: bytes) -> bool:
        """Publish as basic.publish would (no mandatory, no confirm); ``header`` is a
        content-header payload (class, weight, body size, flags, properties).  True if
        the message reached a queue.  AMQPError 404 for a missing vhost or exchange."""
        v = self.vhosts.get(vhost)
        if v is None:
            raise AMQPError(NOT_FOUND, f"no vhost '{vhost}'")
        x = v.get_exchange(exchange)
        if x.internal:
            raise AMQPError(ACCESS_REFUSED, f"cannot publish to internal exchange '{exchange}' in vhost '{vhost}'")
        msg = Message(shortstr(exchange) + shortstr(routing_key), exchange, routing_key, header, body)
        x.stats_publish_in += 1
        queues = v.route(x, routing_key, msg)
        if queues:
            v.enqueue(queues, msg)
            self.flush_all()
        else:
            # RabbitMQ's management plugin publishes with mandatory set: a return
            x.stats_unroutable += 1
            v.stats_return_unroutable += 1
        return bool(queues)

    @property
    def stats_published(self) -> int:
        """Messages published on the node: the exchanges' ``publish_in`` counters summed
        (``VHost.stats_published``), deleted vhosts included.  Counted once per publish,
        on the exchange, not again here."""
        return self.stats_published_gone + sum(v.stats_published for v in self.vhosts.values())

    @property
    def stats_delivered(self) -> int:
        """Deliveries and basic.get-oks on the node: the queues' counters summed
        (``VHost.stats_delivered``) and the direct reply-to pseudo-queues', deleted vhosts and
        closed reply consumers included.  Counted once per delivery, on the queue."""
        live = sum(ch.reply_queue.store.stats_deliver for ch in self.reply_channels.values() if ch.reply_queue is not None)
        return self.stats_delivered_gone + live + sum(v.stats_delivered for v in self.vhosts.values())

    @property
    def stats_acked(self) -> int:
        """Acks on the node (``VHost.stats_acked`` summed, deleted vhosts included)."""
        return self.stats_acked_gone + sum(v.stats_acked for v in self.vhosts.values())

    def message_totals(self) -> dict[str, int]:
        """The vhosts' message counters (``VHost.stats_*``: ``confirm``,
        ``return_unroutable``, ``drop_unroutable``) summed over the node, deleted vhosts
        included."""
        out = dict(self.stats_deleted_vhosts)
        for v in self.vhosts.values():
            for k in VHOST_COUNTERS:
                out[k] += getattr(v, "stats_" + k)
        return out

    def get_messages(self, vhost: str, queue: str, count: int, requeue: bool, reject: bool = False) -> list[tuple[Any, bool, int]]:
        """basic.get up to ``count`` messages, then requeue them (``requeue``),
        dead-letter them (``reject``) or drop them (acked).  Returns (message,
        redelivered, messages left) for each."""
        v = self.vhosts.get(vhost)
        if v is None:
            raise AMQPError(NOT_FOUND, f"no vhost '{vhost}'")
        q = v.get_queue(queue, None)
        out: list[tuple[Any, bool, int]] = []
        back: list[tuple[int, Any]] = []
        for _ in range(count):
            entry = q.get()
            if entry is None:
                break
            seq, msg, redelivered, _ = entry
            q.store.stats_deliver += 1
            if redelivered:
                q.store.stats_redeliver += 1
            if requeue:
                back.append((seq, msg))
            else:
                q.unacked_count += 1
                q.settle(seq, msg, reject)
            out.append((msg, redelivered, q.store.total()))
        if back:
            q.requeue(back)
        self.flush_all()
        return out

    # ------------------------------------------------------------------ storage hooks

    def definitions_changed(self, obj: Any) -> None:
        """A definition changed; ``obj`` is the durable one concerned (None: transient)."""
        if obj is not None and self.persistence is not None:
            self.persistence.save_definitions()

    def queue_created(self, q: Any) -> None:
        self.stats_queues_created += 1
        if q.durable and self.persistence is not None:
            self.persistence.attach(q)
            self.persistence.save_definitions()

    def queue_deleted(self, q: Any) -> None:
        self.stats_queues_deleted += 1
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
