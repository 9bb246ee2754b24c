"""RabbitMQ's management HTTP API (``/api``), as rabbitmqadmin, Flower and scripts use it.

Conventions kept from RabbitMQ: Basic auth against the broker's users, with the
management tags (``administrator``: everything; ``monitoring``: read everything;
``management``/``policymaker``: the vhosts the user has permissions on); the loopback
rule for ``loopback_users``; vhost ``/`` as ``%2F`` (and as an empty segment, as Flower
sends it); ``amq.default`` for the default exchange; booleans as ``"true"``/``"false"``
strings; binding property keys (``~``); errors as ``{"error": ..., "reason": ...}``.

Paths are routed here on their raw segments (each percent-decoded on its own), so a
``%2F`` inside a name never splits it.  Everything goes through the core's and the
``Broker``'s public methods; the core knows nothing of this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from aiohttp import web
from pamqp import commands as C
from pamqp import header as H

from leveret.broker.core import access as A
from leveret.broker.core.errors import AMQPError
from leveret.broker.core.queue import Queue
from leveret.broker.core.vhost import VHOST_COUNTERS
from leveret.broker.definitions import (
    DefinitionsError,
    _jsonable,
    apply_definitions,
    check_definitions,
    export_definitions,
)
from leveret.protocol.constants import NOT_FOUND

if TYPE_CHECKING:
    from leveret.broker.server import Broker

RABBIT_VERSION = "3.10.8"  # the RabbitMQ whose API this follows (tools check the version)
MGMT_TAGS = {"administrator", "monitoring", "management", "policymaker"}

Handler = Callable[["Ctx"], Awaitable[web.StreamResponse]]
V, N = object(), object()  # route placeholders: a vhost segment, a name segment


class HttpError(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def not_found(reason: str = "Not Found") -> HttpError:
    return HttpError(404, "Object Not Found", reason)


def bad_request(reason: str) -> HttpError:
    return HttpError(400, "bad_request", reason)


def error_response(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


def parse_bool(v: Any, name: str, default: bool) -> bool:
    """RabbitMQ's booleans: true/false, or the strings "true"/"false"."""
    if v is None:
        return default
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise bad_request(f"{name}: expected true or false, got {json.dumps(v)}")


def parse_int(v: Any, name: str, default: int) -> int:
    if v is None:
        return default
    if isinstance(v, bool):
        raise bad_request(f"{name}: expected an integer")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise bad_request(f"{name}: expected an integer, got {json.dumps(v)}") from None


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """RabbitMQ's binding "properties key": ``~`` for an empty key without arguments,
    the quoted key, or the key and a hash of the arguments."""
    if not arguments:
        return "~" if routing_key == "" else quote(routing_key, safe="")
    digest = hashlib.sha1(json.dumps(_jsonable(arguments), sort_keys=True).encode()).digest()
    return quote(routing_key, safe="") + "~" + base64.urlsafe_b64encode(digest[:9]).decode()


def rate(n: float) -> dict[str, float]:
    return {"rate": round(float(n), 1)}


class Rates:
    """The message counters of the node, the vhosts, the queues and the exchanges,
    sampled every ``http_rate_interval`` s into rates per second (``*_details.rate``);
    the hot path only increments integers.

    The node's: ``Broker.stats_*`` (publish, deliver/get, ack) and ``Broker.message_totals``
    (confirm, return_unroutable, drop_unroutable); a vhost's: ``VHost.stats_*``; a queue's:
    ``BackingQueue.stats_*``; an exchange's: ``Exchange.stats_publish_in`` and
    ``stats_unroutable`` (publish_out is the publishes that reached a queue)."""

    COUNTERS = ("publish", "deliver_get", "ack", *VHOST_COUNTERS)

    QUEUE_COUNTERS = ("publish", "deliver_get", "redeliver", "ack")

    EXCHANGE_COUNTERS = ("publish_in", "publish_out")

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.last = (time.monotonic(), self._counts())
        self.rates = dict.fromkeys(self.COUNTERS, 0.0)
        self.timer: Any = None
        self.interval = broker.config.http_rate_interval
        # per queue, vhost and exchange: the counts at the last sample and the rates since
        # the one before (objects whose counts did not change have no rates)
        self.obj_last: dict[Any, tuple[int, ...]] = {}
        self.obj_rates: dict[Any, tuple[float, ...]] = {}

    @staticmethod
    def queue_counts(q: Queue) -> tuple[int, ...]:
        s = q.store
        return (s.stats_publish, s.stats_deliver, s.stats_redeliver, s.stats_ack)

    @staticmethod
    def vhost_counts(v: Any) -> tuple[int, ...]:
        return (v.stats_confirm, v.stats_return_unroutable, v.stats_drop_unroutable)

    @staticmethod
    def exchange_counts(x: Any) -> tuple[int, ...]:
        return (x.stats_publish_in, x.stats_publish_in - x.stats_unroutable)

    def _counts(self) -> tuple[int, ...]:
        b = self.broker
        totals = b.message_totals()
        return (b.stats_published, b.stats_delivered, b.stats_acked, *(totals[k] for k in VHOST_COUNTERS))

    def start(self) -> None:
        self.timer = self.broker.loop.call_later(self.interval, self.sample)

    def sample(self) -> None:
        now, counts = time.monotonic(), self._counts()
        t0, c0 = self.last
        dt = max(now - t0, 1e-6)
        self.rates = {k: (c - p) / dt for k, c, p in zip(self.COUNTERS, counts, c0, strict=True)}
        self.last = (now, counts)
        last: dict[Any, tuple[int, ...]] = {}
        rates: dict[Any, tuple[float, ...]] = {}
        old = self.obj_last

        def track(obj: Any, c: tuple[int, ...]) -> None:
            last[obj] = c
            before = old.get(obj) or (0,) * len(c)  # (new since the last sample)
            if c != before:
                rates[obj] = tuple((a - b) / dt for a, b in zip(c, before, strict=True))

        for v in self.broker.vhosts.values():
            track(v, self.vhost_counts(v))
            for q in v.queues.values():
                track(q, self.queue_counts(q))
            for x in v.exchanges.values():
                track(x, self.exchange_counts(x))
        self.obj_last, self.obj_rates = last, rates
        self.timer = self.broker.loop.call_later(self.interval, self.sample)

    def _stats(self, names: tuple[str, ...], counts: list[int], rates: list[float]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, k in enumerate(names):
            out[k] = counts[i]
            out[k + "_details"] = rate(rates[i])
        return out

    def _sum(self, objs: list[Any], n: int, counts_of: Callable[[Any], tuple[int, ...]]) -> tuple[list[int], list[float]]:
        counts = [0] * n
        rates = [0.0] * n
        for o in objs:
            for i, c in enumerate(counts_of(o)):
                counts[i] += c
            for i, r in enumerate(self.obj_rates.get(o, ())):
                rates[i] += r
        return counts, rates

    def queue_stats(self, queues: list[Queue]) -> dict[str, Any]:
        """``message_stats`` of some queues (one queue, or a vhost's)."""
        out = self._stats(self.QUEUE_COUNTERS, *self._sum(queues, len(self.QUEUE_COUNTERS), self.queue_counts))
        out["deliver"] = out["deliver_get"]
        out["deliver_details"] = out["deliver_get_details"]
        return out

    def vhost_stats(self, v: Any) -> dict[str, Any]:
        """``message_stats`` of a vhost: its queues', and its confirms and unroutable publishes."""
        out = self.queue_stats(list(v.queues.values()))
        out.update(self._stats(VHOST_COUNTERS, *self._sum([v], len(VHOST_COUNTERS), self.vhost_counts)))
        return out

    def vhosts_stats(self, vhosts: list[Any]) -> dict[str, Any]:
        """The overview's ``message_stats`` for a user who sees only some vhosts (no
        monitoring tag): those vhosts' counters summed, as RabbitMQ's overview of a user."""
        out = self.queue_stats([q for v in vhosts for q in v.queues.values()])
        out.update(self._stats(VHOST_COUNTERS, *self._sum(vhosts, len(VHOST_COUNTERS), self.vhost_counts)))
        return out

    def exchange_stats(self, x: Any) -> dict[str, Any]:
        """``message_stats`` of an exchange: publish_in, publish_out."""
        return self._stats(self.EXCHANGE_COUNTERS, *self._sum([x], len(self.EXCHANGE_COUNTERS), self.exchange_counts))

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def message_stats(self) -> dict[str, Any]:
        """The overview's ``message_stats`` (the node's counters)."""
        counts = dict(zip(self.COUNTERS, self._counts(), strict=True))
        out: dict[str, Any] = {}
        for k in self.COUNTERS:
            out[k] = counts[k]
            out[k + "_details"] = rate(self.rates[k])
        out["deliver"] = counts["deliver_get"]
        out["deliver_details"] = rate(self.rates["deliver_get"])
        out["redeliver"] = 0
        out["redeliver_details"] = rate(0)
        return out


class Ctx:
    """One request: the authenticated user, the route's arguments, the JSON body."""

    def __init__(self, api: Api, request: web.Request, user: A.User, args: list[str]) -> None:
        self.api, self.request, self.user, self.args = api, request, user, args
        self.broker = api.broker

    @property
    def admin(self) -> bool:
        return "administrator" in self.user.tags

    @property
    def monitor(self) -> bool:
        return self.admin or "monitoring" in self.user.tags

    def need_admin(self) -> None:
        if not self.admin:
            raise HttpError(401, "not_authorised", "Not administrator user")

    def need_monitor(self) -> None:
        if not self.monitor:
            raise HttpError(401, "not_authorised", "Not monitor user")

    def visible_vhosts(self) -> list[str]:
        if self.monitor:
            return list(self.broker.vhosts)
        return [v for v in self.broker.vhosts if self.broker.access.can_open(self.user.name, v)]

    def vhost(self, name: str) -> Any:
        """The vhost named in the path: 404 if missing, 401 if the user has no access."""
        v = self.broker.vhosts.get(name)
        if v is None:
            raise not_found()
        if not self.monitor and not self.broker.access.can_open(self.user.name, name):
            raise HttpError(401, "not_authorised", "Access refused.")
        return v

    def vhost_for_write(self, name: str) -> Any:
        v = self.vhost(name)
        if not self.broker.access.can_open(self.user.name, name) and not self.admin:
            raise HttpError(401, "not_authorised", "Access refused.")
        return v

    def authz(self, vhost: str, perm: str, kind: str, name: str) -> None:
        try:
            self.broker.access.check(self.user.name, vhost, perm, kind, name)
        except AMQPError as exc:
            raise HttpError(401, "not_authorised", exc.text) from None

    async def body(self) -> dict[str, Any]:
        raw = await self.request.read()
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise bad_request("expected a JSON object")
        return data


def json_ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


def no_content(status: int = 204) -> web.Response:
    return web.Response(status=status)


def columns(request: web.Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RabbitMQ's ``?columns=a,b.c`` (and ``sort``/``sort_reverse``)."""
    sort = request.query.get("sort")
    if sort:
        items.sort(key=lambda i: str(_dotted(i, sort)), reverse=request.query.get("sort_reverse") == "true")
    cols = request.query.get("columns")
    if not cols:
        return items
    out = []
    for item in items:
        row: dict[str, Any] = {}
        for col in cols.split(","):
            parts = col.split(".")
            src, dst = item, row
            for p in parts[:-1]:
                src = src.get(p, {}) if isinstance(src, dict) else {}
                dst = dst.setdefault(p, {})
            if isinstance(src, dict) and parts[-1] in src:
                dst[parts[-1]] = src[parts[-1]]
        out.append(row)
    return out


def _dotted(item: dict[str, Any], path: str) -> Any:
    for p in path.split("."):
        item = item.get(p, "") if isinstance(item, dict) else ""
    return item


class Api:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.rates = Rates(broker)
        self.node = f"leveret@{socket.gethostname()}"
        self.routes: list[tuple[tuple[Any, ...], dict[str, Handler]]] = []
        r = self.route
        r(("overview",), GET=self.overview)
        r(("whoami",), GET=self.whoami)
        r(("nodes",), GET=self.nodes)
        r(("nodes", N), GET=self.node_show)
        r(("nodes", N, "memory"), GET=self.node_memory)
        r(("extensions",), GET=self.extensions)
        r(("vhosts",), GET=self.vhosts)
        r(("vhosts", V), GET=self.vhost_show, PUT=self.vhost_put, DELETE=self.vhost_delete)
        r(("vhosts", V, "permissions"), GET=self.vhost_permissions)
        r(("users",), GET=self.users)
        r(("users", N), GET=self.user_show, PUT=self.user_put, DELETE=self.user_delete)
        r(("users", N, "permissions"), GET=self.user_permissions)
        r(("permissions",), GET=self.permissions)
        r(("permissions", V, N), GET=self.permission_show, PUT=self.permission_put, DELETE=self.permission_delete)
        r(("topic-permissions",), GET=self.topic_permissions)
        r(("topic-permissions", V, N), GET=self.topic_permission_show, PUT=self.topic_permission_put,
          DELETE=self.topic_permission_delete)
        r(("exchanges",), GET=self.exchanges)
        r(("exchanges", V), GET=self.exchanges)
        r(("exchanges", V, N), GET=self.exchange_show, PUT=self.exchange_put, DELETE=self.exchange_delete)
        r(("exchanges", V, N, "publish"), POST=self.exchange_publish)
        r(("exchanges", V, N, "bindings", "source"), GET=self.exchange_bindings_source)
        r(("exchanges", V, N, "bindings", "destination"), GET=self.exchange_bindings_destination)
        r(("queues",), GET=self.queues)
        r(("queues", V), GET=self.queues)
        r(("queues", V, N), GET=self.queue_show, PUT=self.queue_put, DELETE=self.queue_delete)
        r(("queues", V, N, "contents"), DELETE=self.queue_purge)
        r(("queues", V, N, "get"), POST=self.queue_get)
        r(("queues", V, N, "bindings"), GET=self.queue_bindings)
        r(("bindings",), GET=self.bindings)
        r(("bindings", V), GET=self.bindings)
        for kind in ("q", "e"):
            r(("bindings", V, "e", N, kind, N), GET=self.binding_list, POST=self.binding_post)
            r(("bindings", V, "e", N, kind, N, N), GET=self.binding_show, DELETE=self.binding_delete)
        r(("connections",), GET=self.connections)
        r(("connections", N), GET=self.connection_show, DELETE=self.connection_delete)
        r(("connections", N, "channels"), GET=self.connection_channels)
        r(("vhosts", V, "connections"), GET=self.vhost_connections)
        r(("channels",), GET=self.channels)
        r(("vhosts", V, "channels"), GET=self.vhost_channels)
        r(("consumers",), GET=self.consumers)
        r(("consumers", V), GET=self.consumers)
        r(("definitions",), GET=self.definitions_get, POST=self.definitions_post)
        r(("definitions", V), GET=self.definitions_get, POST=self.definitions_post)
        r(("aliveness-test", V), GET=self.aliveness)
        r(("health", "checks", "alarms"), GET=self.health_alarms)
        r(("health", "checks", "local-alarms"), GET=self.health_alarms)
        r(("health", "checks", "port-listener", N), GET=self.health_port)
        r(("policies",), GET=self.empty_list)
        r(("policies", V), GET=self.empty_list)
        r(("parameters",), GET=self.empty_list)
        r(("global-parameters",), GET=self.empty_list)

    def route(self, pattern: tuple[Any, ...], **methods: Handler) -> None:
        self.routes.append((pattern, methods))

    # ------------------------------------------------------------------ dispatch

    def match(self, segs: list[str]) -> tuple[dict[str, Handler], list[str]] | None:
        for pattern, methods in self.routes:
            if len(pattern) != len(segs):
                continue
            args: list[str] = []
            for p, s in zip(pattern, segs, strict=True):
                if p is V:
                    args.append(s or "/")
                elif p is N:
                    args.append(s)
                elif p != s:
                    break
            else:
                return methods, args
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = request.raw_path.split("?", 1)[0]
            rest = raw[len("/api/"):] if raw.startswith("/api/") else ""
            segs = [unquote(s) for s in rest.split("/")] if rest else []
            if rest.endswith("/") and len(segs) > 1:
                segs.pop()  # a trailing slash; "queues//" is vhost "" i.e. "/"
            found = self.match(segs)
            if found is None:
                raise not_found()
            methods, args = found
            method = "GET" if request.method == "HEAD" else request.method
            handler = methods.get(method)
            if handler is None:
                allowed = ", ".join(sorted(methods))
                resp = error_response(405, "Method Not Allowed", f"{request.method} not allowed (allowed: {allowed})")
                resp.headers["Allow"] = allowed
                return resp
            user = self.authenticate(request)
            return await handler(Ctx(self, request, user, args))
        except HttpError as exc:
            resp = error_response(exc.status, exc.error, exc.reason)
            if exc.status == 401 and "Authorization" not in request.headers:
                # the challenge only when no credentials came, as RabbitMQ does: a browser
                # page's wrong password then shows the page's error, not the browser's dialog
                resp.headers["WWW-Authenticate"] = 'Basic realm="RabbitMQ Management"'
            return resp
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(413, "payload_too_large", exc.text or "request body too large")
        except AMQPError as exc:
            if exc.code == NOT_FOUND:
                return error_response(404, "Object Not Found", exc.text)
            return error_response(400, "bad_request", exc.text)

    def authenticate(self, request: web.Request) -> A.User:
        auth = request.headers.get("Authorization", "")
        scheme, _, cred = auth.partition(" ")
        if scheme.lower() != "basic" or not cred:
            raise HttpError(401, "not_authorised", "Not_Authorized")
        try:
            name, sep, password = base64.b64decode(cred.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            raise HttpError(401, "not_authorised", "Not_Authorized") from None
        user = self.broker.access.authenticate(name, password) if sep else None
        if user is None:
            raise HttpError(401, "not_authorised", "Login failed")
        sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if not self.broker.access.loopback_allowed(name, sock[0] if sock else None):
            raise HttpError(401, "not_authorised", "User can only log in via localhost")
        if not MGMT_TAGS & set(user.tags):
            raise HttpError(401, "not_authorised", "Not management user")
        return user

    # ------------------------------------------------------------------ node

    def queue_totals(self, vhosts: list[str]) -> dict[str, Any]:
        ready = unacked = 0
        for vn in vhosts:
            for q in self.broker.vhosts[vn].queues.values():
                ready += q.message_count
                unacked += q.unacked_count
        return {
            "messages": ready + unacked, "messages_details": rate(0),
            "messages_ready": ready, "messages_ready_details": rate(0),
            "messages_unacknowledged": unacked, "messages_unacknowledged_details": rate(0),
        }

    def listeners(self) -> list[dict[str, Any]]:
        out = []
        b = self.broker
        for s in b.server.sockets if b.server else []:
            a = s.getsockname()
            out.append({"node": self.node, "protocol": "amqp", "ip_address": a[0], "port": a[1], "socket_opts": {}})
        for s in b.tls_server.sockets if b.tls_server else []:
            a = s.getsockname()
            out.append({"node": self.node, "protocol": "amqp/ssl", "ip_address": a[0], "port": a[1], "socket_opts": {}})
        for proto, srv in (("http", b.http), ("http/prometheus", b.prometheus)):
            if srv is not None:
                for tls, addrs in ((False, srv.addresses), (True, srv.tls_addresses)):
                    for addr in addrs:
                        ip, _, port = addr.rpartition(":")
                        out.append({"node": self.node, "protocol": proto.replace("http", "https") if tls else proto,
                                    "ip_address": ip.strip("[]"), "port": int(port), "socket_opts": {}})
        return out

    async def overview(self, ctx: Ctx) -> web.Response:
        b = self.broker
        vhosts = ctx.visible_vhosts()
        conns = [c for c in self.visible_connections(ctx)]
        queues = [q for vn in vhosts for q in b.vhosts[vn].queues.values()]
        # RabbitMQ: the node's figures, listeners and contexts for monitoring users only;
        # another user's overview is that of its vhosts
        monitor = ctx.monitor
        message_stats = self.rates.message_stats() if monitor else self.rates.vhosts_stats([b.vhosts[vn] for vn in vhosts])
        out: dict[str, Any] = {
            "management_version": RABBIT_VERSION,
            "rates_mode": "basic",
            "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600],
                                          "detailed": [600]},
            "exchange_types": [{"name": t, "description": "", "enabled": True}
                               for t in ("direct", "fanout", "headers", "topic")],
            "product_version": b.server_properties()["version"],
            "product_name": "Leveret",
            "rabbitmq_version": RABBIT_VERSION,
            "cluster_name": b.server_properties()["cluster_name"],
            "erlang_version": "none (Python)",
            "erlang_full_version": "none (Python)",
            "disable_stats": False,
            "enable_queue_totals": True,
            "message_stats": message_stats,
            "churn_rates": {},
            "queue_totals": self.queue_totals(vhosts),
            "object_totals": {
                "channels": sum(len(c.channels) for c in conns),
                "connections": len(conns),
                "consumers": sum(len(q.consumers) for q in queues),
                "exchanges": sum(len(b.vhosts[vn].exchanges) for vn in vhosts),
                "queues": len(queues),
            },
            "statistics_db_event_queue": 0,
        }
        if monitor:
            out["node"] = self.node
            out["listeners"] = self.listeners()
            out["contexts"] = [{"node": self.node, "description": "RabbitMQ Management", "path": "/", "port": str(port)}
                               for port in (b.http_port, b.http_tls_port) if port]
        return json_ok(out)

    async def whoami(self, ctx: Ctx) -> web.Response:
        return json_ok({"name": ctx.user.name, "tags": list(ctx.user.tags)})

    def node_info(self) -> dict[str, Any]:
        b = self.broker
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            rss = 0
        try:
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            fds = 0
        fd_total = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        disk_free = 0
        if b.config.data_dir:
            try:
                st = os.statvfs(b.config.data_dir)
                disk_free = st.f_bavail * st.f_frsize
            except OSError:
                pass
        return {
            "name": self.node, "type": "disc", "running": True, "being_drained": False,
            "mem_used": rss, "mem_limit": b.config.memory_high_watermark, "mem_alarm": b.memory_alarm,
            "disk_free": disk_free, "disk_free_limit": b.config.disk_free_limit, "disk_free_alarm": b.disk_alarm,
            "fd_used": fds, "fd_total": fd_total, "sockets_used": len(b.connections), "sockets_total": fd_total,
            "proc_used": 1, "proc_total": 1, "uptime": int((time.time() - b.started_at) * 1000),
            "os_pid": str(os.getpid()), "partitions": [], "run_queue": 0, "processors": os.cpu_count() or 1,
            "rates_mode": "basic", "net_ticktime": 60, "enabled_plugins": ["rabbitmq_management"],
            "applications": [], "contexts": [], "exchange_types": [], "auth_mechanisms": [],
            "log_files": [], "config_files": [], "cluster_links": [],
        }

    async def nodes(self, ctx: Ctx) -> web.Response:
        ctx.need_monitor()
        return json_ok(columns(ctx.request, [self.node_info()]))

    async def node_show(self, ctx: Ctx) -> web.Response:
        ctx.need_monitor()
        if ctx.args[0] != self.node:
            raise not_found()
        return json_ok(self.node_info())

    async def node_memory(self, ctx: Ctx) -> web.Response:
        """RabbitMQ's memory breakdown (``Broker.memory_breakdown``), with Leveret's
        memory budget under ``budget``."""
        ctx.need_monitor()
        if ctx.args[0] != self.node:
            raise not_found()
        return json_ok(self.broker.memory_breakdown())

    async def extensions(self, ctx: Ctx) -> web.Response:
        return json_ok([])

    async def empty_list(self, ctx: Ctx) -> web.Response:
        if ctx.args:
            ctx.vhost(ctx.args[0])
        return json_ok([])

    # ------------------------------------------------------------------ vhosts

    def vhost_info(self, name: str) -> dict[str, Any]:
        return {"name": name, "description": "", "tags": [], "default_queue_type": "classic",
                "metadata": {"description": "", "tags": []}, "tracing": False,
                "cluster_state": {self.node: "running"}, **self.queue_totals([name]),
                "message_stats": self.rates.vhost_stats(self.broker.vhosts[name])}

    async def vhosts(self, ctx: Ctx) -> web.Response:
        return json_ok(columns(ctx.request, [self.vhost_info(v) for v in ctx.visible_vhosts()]))

    async def vhost_show(self, ctx: Ctx) -> web.Response:
        ctx.vhost(ctx.args[0])
        return json_ok(self.vhost_info(ctx.args[0]))

    async def vhost_put(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        await ctx.body()
        name = ctx.args[0]
        new = name not in self.broker.vhosts
        self.broker.add_vhost(name)
        return no_content(201 if new else 204)

    async def vhost_delete(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        if ctx.args[0] not in self.broker.vhosts:
            raise not_found()
        self.broker.delete_vhost(ctx.args[0])
        return no_content()

    async def vhost_permissions(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        ctx.vhost(ctx.args[0])
        return json_ok([p for p in self.all_permissions() if p["vhost"] == ctx.args[0]])

    # ------------------------------------------------------------------ users, permissions

    @staticmethod
    def user_info(u: A.User) -> dict[str, Any]:
        return {"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": u.hashing_algorithm,
                "tags": list(u.tags), "limits": {}}

    async def users(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        return json_ok(columns(ctx.request, [self.user_info(u) for u in self.broker.access.users.values()]))

    async def user_show(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        u = self.broker.access.users.get(ctx.args[0])
        if u is None:
            raise not_found()
        return json_ok(self.user_info(u))

    async def user_put(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        body = await ctx.body()
        name = ctx.args[0]
        tags = body.get("tags", "")
        if isinstance(tags, list):
            tags = ",".join(str(t) for t in tags)
        if not isinstance(tags, str):
            raise bad_request("tags: expected a comma-separated string or a list")
        password, phash = body.get("password"), body.get("password_hash")
        if password is not None and phash is not None:
            raise bad_request("give a password or a password_hash, not both")
        for k, v in (("password", password), ("password_hash", phash)):
            if v is not None and not isinstance(v, str):
                raise bad_request(f"{k}: expected a string")
        existing = self.broker.access.users.get(name)
        if password is None and phash is None:
            if existing is None:
                raise bad_request("password or password_hash must be set")
            phash, algo = existing.password_hash, existing.hashing_algorithm
        else:
            algo = body.get("hashing_algorithm") or A.SHA256
        try:
            algo = A.algorithm(algo)
            if password is not None:
                self.broker.add_user(name, password, tags=tags)
            else:
                self.broker.add_user(name, password_hash=phash, hashing_algorithm=algo, tags=tags)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        return no_content(201 if existing is None else 204)

    async def user_delete(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        if not self.broker.delete_user(ctx.args[0]):
            raise not_found()
        return no_content()

    def all_permissions(self) -> list[dict[str, str]]:
        return [{"user": u, "vhost": v, **p.as_dict()} for (u, v), p in self.broker.access.permissions.items()]

    async def user_permissions(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        if ctx.args[0] not in self.broker.access.users:
            raise not_found()
        return json_ok([p for p in self.all_permissions() if p["user"] == ctx.args[0]])

    async def permissions(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        return json_ok(columns(ctx.request, self.all_permissions()))

    async def permission_show(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        vhost, user = ctx.args
        p = self.broker.access.permissions.get((user, vhost))
        if p is None:
            raise not_found()
        return json_ok({"user": user, "vhost": vhost, **p.as_dict()})

    async def permission_body(self, ctx: Ctx, vhost: str, user: str, keys: tuple[str, ...]) -> dict[str, str]:
        """The string fields ``keys`` of a permission PUT body, for an existing vhost and
        user (400 otherwise, as RabbitMQ)."""
        body = await ctx.body()
        if vhost not in self.broker.vhosts:
            raise bad_request(f"vhost_not_found: no vhost '{vhost}'")
        if user not in self.broker.access.users:
            raise bad_request(f"user_not_found: no user '{user}'")
        out = {}
        for k in keys:
            v = body.get(k)
            if not isinstance(v, str):
                raise bad_request(f"{k}: expected a string (a regular expression)" if k != "exchange" else f"{k}: expected a string")
            out[k] = v
        return out

    async def permission_put(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        vhost, user = ctx.args
        perms = await self.permission_body(ctx, vhost, user, A.PERMS)
        existed = (user, vhost) in self.broker.access.permissions
        try:
            self.broker.set_permissions(user, vhost, **perms)
        except (KeyError, ValueError) as exc:
            raise bad_request(str(exc).strip("'\"")) from None
        return no_content(204 if existed else 201)

    async def permission_delete(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        vhost, user = ctx.args
        if (user, vhost) not in self.broker.access.permissions:
            raise not_found()
        self.broker.clear_permissions(user, vhost)
        return no_content()

    def all_topic_permissions(self) -> list[dict[str, str]]:
        return [{"user": u, "vhost": v, **t.as_dict()}
                for (u, v), rules in self.broker.access.topic_permissions.items() for t in rules.values()]

    async def topic_permissions(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        return json_ok(columns(ctx.request, self.all_topic_permissions()))

    async def topic_permission_show(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        vhost, user = ctx.args
        found = [t for t in self.all_topic_permissions() if t["vhost"] == vhost and t["user"] == user]
        if not found:
            raise not_found()
        return json_ok(found)

    async def topic_permission_put(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        vhost, user = ctx.args
        vals = await self.permission_body(ctx, vhost, user, ("exchange", "write", "read"))
        try:
            self.broker.set_topic_permissions(user, vhost, vals["exchange"], vals["write"], vals["read"])
        except (KeyError, ValueError) as exc:
            raise bad_request(str(exc).strip("'\"")) from None
        return no_content(201)

    async def topic_permission_delete(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        vhost, user = ctx.args
        if not self.broker.access.topic_permissions.get((user, vhost)):
            raise not_found()
        self.broker.clear_topic_permissions(user, vhost)
        return no_content()

    # ------------------------------------------------------------------ exchanges

    @staticmethod
    def exchange_name(segment: str) -> str:
        return "" if segment == "amq.default" else segment

    def exchange_info(self, vn: str, x: Any) -> dict[str, Any]:
        return {"name": x.name, "vhost": vn, "type": x.type, "durable": x.durable, "auto_delete": x.auto_delete,
                "internal": x.internal, "arguments": _jsonable(x.arguments), "user_who_performed_action": "",
                "message_stats": self.rates.exchange_stats(x)}

    async def exchanges(self, ctx: Ctx) -> web.Response:
        names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
        out = []
        for vn in names:
            v = ctx.vhost(vn)
            out += [self.exchange_info(vn, x) for x in v.exchanges.values()]
        return json_ok(columns(ctx.request, out))

    def get_exchange(self, ctx: Ctx, vn: str, seg: str) -> Any:
        x = ctx.vhost(vn).exchanges.get(self.exchange_name(seg))
        if x is None:
            raise not_found()
        return x

    async def exchange_show(self, ctx: Ctx) -> web.Response:
        vn, seg = ctx.args
        return json_ok(self.exchange_info(vn, self.get_exchange(ctx, vn, seg)))

    async def exchange_put(self, ctx: Ctx) -> web.Response:
        vn, seg = ctx.args
        v = ctx.vhost_for_write(vn)
        body = await ctx.body()
        name = self.exchange_name(seg)
        xtype = body.get("type")
        if not isinstance(xtype, str):
            raise bad_request("type: missing (direct, fanout, topic or headers)")
        durable = parse_bool(body.get("durable"), "durable", True)
        auto_delete = parse_bool(body.get("auto_delete"), "auto_delete", False)
        internal = parse_bool(body.get("internal"), "internal", False)
        args = body.get("arguments") or {}
        if not isinstance(args, dict):
            raise bad_request("arguments: expected an object")
        ctx.authz(vn, A.CONFIGURE, "exchange", name)
        existed = name in v.exchanges
        v.declare_exchange(name, xtype, False, durable, auto_delete, internal, args)
        return no_content(204 if existed else 201)

    async def exchange_delete(self, ctx: Ctx) -> web.Response:
        vn, seg = ctx.args
        v = ctx.vhost_for_write(vn)
        name = self.exchange_name(seg)
        if name not in v.exchanges:
            raise not_found()
        ctx.authz(vn, A.CONFIGURE, "exchange", name)
        v.delete_exchange(name, ctx.request.query.get("if-unused") == "true")
        return no_content()

    async def exchange_publish(self, ctx: Ctx) -> web.Response:
        vn, seg = ctx.args
        ctx.vhost_for_write(vn)
        name = self.exchange_name(seg)
        self.get_exchange(ctx, vn, seg)
        body = await ctx.body()
        rk = body.get("routing_key")
        payload = body.get("payload")
        enc = body.get("payload_encoding", "string")
        props = body.get("properties") or {}
        if not isinstance(rk, str):
            raise bad_request("routing_key: missing or not a string")
        if not isinstance(payload, str):
            raise bad_request("payload: missing or not a string")
        if not isinstance(props, dict):
            raise bad_request("properties: expected an object")
        if enc == "string":
            data = payload.encode()
        elif enc == "base64":
            try:
                data = base64.b64decode(payload, validate=True)
            except binascii.Error:
                raise bad_request("payload: not valid base64") from None
        else:
            raise bad_request(f"payload_encoding: expected string or base64, got {json.dumps(enc)}")
        header = encode_properties(props, len(data))
        ctx.authz(vn, A.WRITE, "exchange", name)
        routed = self.broker.publish(vn, name, rk, data, header)
        return json_ok({"routed": routed})

    # ------------------------------------------------------------------ queues

    def queue_info(self, q: Queue) -> dict[str, Any]:
        ready, unacked = q.message_count, q.unacked_count
        info: dict[str, Any] = {
            "name": q.name, "vhost": q.vhost.name, "durable": q.durable, "auto_delete": q.auto_delete,
            "exclusive": q.exclusive, "arguments": _jsonable(q.arguments), "node": self.node,
            "state": "running", "type": "classic",
            "messages": ready + unacked, "messages_details": rate(0),
            "messages_ready": ready, "messages_ready_details": rate(0),
            "messages_unacknowledged": unacked, "messages_unacknowledged_details": rate(0),
            "messages_ram": ready, "messages_persistent": 0,
            "message_bytes": q.store.ready_bytes, "message_bytes_ready": q.store.ready_bytes,
            "message_bytes_unacknowledged": 0,
            "consumers": len(q.consumers), "consumer_capacity": 1.0 if q.consumers else 0,
            "consumer_utilisation": 1.0 if q.consumers else 0, "memory": q.store.ready_bytes,
            "policy": "", "exclusive_consumer_tag": "", "effective_policy_definition": {},
            "operator_policy": "", "slave_nodes": [], "synchronised_slave_nodes": [], "recoverable_slaves": [],
            "head_message_timestamp": "", "reductions": 0, "garbage_collection": {},
            "backing_queue_status": {"mode": "default", "len": ready},
            "message_stats": self.rates.queue_stats([q]),
        }
        if not q.consumers:
            now = time.time()
            info["idle_since"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}+00:00"
        return info

    async def queues(self, ctx: Ctx) -> web.Response:
        names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
        out = []
        for vn in names:
            v = ctx.vhost(vn)
            out += [self.queue_info(q) for q in v.queues.values()]
        return json_ok(columns(ctx.request, out))

    def get_queue(self, ctx: Ctx, vn: str, name: str) -> Queue:
        q = ctx.vhost(vn).queues.get(name)
        if q is None:
            raise not_found()
        return q

    async def queue_show(self, ctx: Ctx) -> web.Response:
        return json_ok(self.queue_info(self.get_queue(ctx, *ctx.args)))

    async def queue_put(self, ctx: Ctx) -> web.Response:
        vn, name = ctx.args
        v = ctx.vhost_for_write(vn)
        body = await ctx.body()
        durable = parse_bool(body.get("durable"), "durable", True)
        auto_delete = parse_bool(body.get("auto_delete"), "auto_delete", False)
        args = body.get("arguments") or {}
        if not isinstance(args, dict):
            raise bad_request("arguments: expected an object")
        args = dict(args)
        if body.get("queue_type"):
            args.setdefault("x-queue-type", body["queue_type"])
        if not name:
            raise bad_request("a queue needs a name")
        existed = name in v.queues

        def authorize(qname: str, arguments: dict[str, Any], new: bool) -> None:
            ctx.authz(vn, A.CONFIGURE, "queue", qname)

        v.declare_queue(name, False, durable, False, auto_delete, args, None, authorize=authorize)
        return no_content(204 if existed else 201)

    async def queue_delete(self, ctx: Ctx) -> web.Response:
        vn, name = ctx.args
        ctx.vhost_for_write(vn)
        q = self.get_queue(ctx, vn, name)
        ctx.authz(vn, A.CONFIGURE, "queue", name)
        if ctx.request.query.get("if-empty") == "true" and q.message_count:
            raise bad_request(f"queue '{name}' in vhost '{vn}' is not empty")
        if ctx.request.query.get("if-unused") == "true" and q.consumers:
            raise bad_request(f"queue '{name}' in vhost '{vn}' in use")
        if q.exclusive:
            raise bad_request(f"queue '{name}' in vhost '{vn}' is exclusive to another connection")
        q.vhost.delete_queue(q)
        self.broker.flush_all()
        return no_content()

    async def queue_purge(self, ctx: Ctx) -> web.Response:
        vn, name = ctx.args
        ctx.vhost_for_write(vn)
        q = self.get_queue(ctx, vn, name)
        ctx.authz(vn, A.READ, "queue", name)
        q.vhost.check_exclusive(q, None)
        q.purge()
        return no_content()

    async def queue_get(self, ctx: Ctx) -> web.Response:
        vn, name = ctx.args
        ctx.vhost_for_write(vn)
        self.get_queue(ctx, vn, name)
        body = await ctx.body()
        count = parse_int(body.get("count"), "count", 1)
        ackmode = body.get("ackmode", "ack_requeue_true")
        if isinstance(body.get("requeue"), bool | str) and "ackmode" not in body:  # (before 3.7)
            ackmode = "ack_requeue_true" if parse_bool(body["requeue"], "requeue", True) else "ack_requeue_false"
        modes = {"ack_requeue_true": (True, False), "reject_requeue_true": (True, False),
                 "ack_requeue_false": (False, False), "reject_requeue_false": (False, True)}
        if ackmode not in modes:
            raise bad_request(f"ackmode: expected one of {', '.join(modes)}")
        encoding = body.get("encoding", "auto")
        if encoding not in ("auto", "base64"):
            raise bad_request("encoding: expected auto or base64")
        truncate = parse_int(body.get("truncate"), "truncate", 0) if body.get("truncate") not in (None, "") else 0
        if count < 1:
            raise bad_request("count: expected a positive integer")
        ctx.authz(vn, A.READ, "queue", name)
        requeue, reject = modes[ackmode]
        got = self.broker.get_messages(vn, name, count, requeue, reject)
        out = []
        for msg, redelivered, left in got:
            data = msg.body[:truncate] if truncate else msg.body
            if encoding == "auto":
                try:
                    payload, penc = data.decode("utf-8"), "string"
                except UnicodeDecodeError:
                    payload, penc = base64.b64encode(data).decode(), "base64"
            else:
                payload, penc = base64.b64encode(data).decode(), "base64"
            out.append({"payload_bytes": len(msg.body), "redelivered": redelivered, "exchange": msg.exchange,
                        "routing_key": msg.routing_key, "message_count": left,
                        "properties": decode_properties(msg.header), "payload": payload, "payload_encoding": penc})
        return json_ok(out)

    async def queue_bindings(self, ctx: Ctx) -> web.Response:
        vn, name = ctx.args
        q = self.get_queue(ctx, vn, name)
        return json_ok([b for b in self.binding_infos(vn) if b["destination_type"] == "queue" and b["destination"] == q.name])

    # ------------------------------------------------------------------ bindings

    def binding_infos(self, vn: str) -> list[dict[str, Any]]:
        v = self.broker.vhosts[vn]
        out = [{"source": "", "vhost": vn, "destination": q.name, "destination_type": "queue", "routing_key": q.name,
                "arguments": {}, "properties_key": quote(q.name, safe="")} for q in v.queues.values()]
        for x in v.exchanges.values():
            if x.name == "":
                continue
            for (dest, rk, _), args in x.bindings.items():
                args = _jsonable(args or {})
                out.append({"source": x.name, "vhost": vn, "destination": dest.name,
                            "destination_type": "queue" if isinstance(dest, Queue) else "exchange",
                            "routing_key": rk, "arguments": args, "properties_key": properties_key(rk, args)})
        return out

    async def bindings(self, ctx: Ctx) -> web.Response:
        names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
        out = []
        for vn in names:
            ctx.vhost(vn)
            out += self.binding_infos(vn)
        return json_ok(columns(ctx.request, out))

    async def exchange_bindings_source(self, ctx: Ctx) -> web.Response:
        vn, seg = ctx.args
        x = self.get_exchange(ctx, vn, seg)
        return json_ok([b for b in self.binding_infos(vn) if b["source"] == x.name])

    async def exchange_bindings_destination(self, ctx: Ctx) -> web.Response:
        vn, seg = ctx.args
        x = self.get_exchange(ctx, vn, seg)
        return json_ok([b for b in self.binding_infos(vn)
                        if b["destination_type"] == "exchange" and b["destination"] == x.name])

    def binding_ends(self, ctx: Ctx) -> tuple[str, str, str, str]:
        """(vhost, source, destination type, destination) of a bindings path; 404
        unless both ends exist."""
        vn, src, dst = ctx.args[0], ctx.args[1], ctx.args[2]
        kind = "queue" if ctx.request.raw_path.split("?")[0].split("/")[6] == "q" else "exchange"
        v = ctx.vhost(vn)
        src = self.exchange_name(src)
        if src not in v.exchanges:
            raise not_found()
        if (kind == "queue" and dst not in v.queues) or (kind == "exchange" and self.exchange_name(dst) not in v.exchanges):
            raise not_found()
        return vn, src, kind, dst if kind == "queue" else self.exchange_name(dst)

    def matching(self, vn: str, src: str, kind: str, dst: str) -> list[dict[str, Any]]:
        return [b for b in self.binding_infos(vn)
                if b["source"] == src and b["destination_type"] == kind and b["destination"] == dst]

    async def binding_list(self, ctx: Ctx) -> web.Response:
        return json_ok(self.matching(*self.binding_ends(ctx)))

    async def binding_post(self, ctx: Ctx) -> web.Response:
        vn, src, kind, dst = self.binding_ends(ctx)
        ctx.vhost_for_write(vn)
        body = await ctx.body()
        rk = body.get("routing_key", "")
        args = body.get("arguments") or {}
        if not isinstance(rk, str):
            raise bad_request("routing_key: expected a string")
        if not isinstance(args, dict):
            raise bad_request("arguments: expected an object")
        v = self.broker.vhosts[vn]
        ctx.authz(vn, A.WRITE, kind, dst)
        ctx.authz(vn, A.READ, "exchange", src)
        if kind == "queue":
            v.bind_queue(v.get_queue(dst, None), src, rk, args)
        else:
            v.bind_exchange(dst, src, rk, args)
        loc = properties_key(rk, _jsonable(args))
        resp = no_content(201)
        resp.headers["Location"] = f"{quote(dst, safe='')}/{quote(loc, safe='')}"
        return resp

    async def binding_show(self, ctx: Ctx) -> web.Response:
        vn, src, kind, dst = self.binding_ends(ctx)
        key = ctx.args[3]
        for b in self.matching(vn, src, kind, dst):
            if unquote(b["properties_key"]) == key or b["properties_key"] == key:
                return json_ok(b)
        raise not_found()

    async def binding_delete(self, ctx: Ctx) -> web.Response:
        vn, src, kind, dst = self.binding_ends(ctx)
        ctx.vhost_for_write(vn)
        key = ctx.args[3]
        v = self.broker.vhosts[vn]
        for b in self.matching(vn, src, kind, dst):
            if unquote(b["properties_key"]) == key or b["properties_key"] == key:
                if src == "":
                    raise HttpError(400, "bad_request", "operation not permitted on the default exchange")
                ctx.authz(vn, A.WRITE, kind, dst)
                ctx.authz(vn, A.READ, "exchange", src)
                x = v.exchanges[src]
                args = next(a for (d, rk, _), a in x.bindings.items()
                            if d.name == dst and rk == b["routing_key"] and _jsonable(a or {}) == b["arguments"])
                if kind == "queue":
                    v.unbind_queue(dst, src, b["routing_key"], args, None)
                else:
                    v.unbind_exchange(dst, src, b["routing_key"], args)
                return no_content()
        raise not_found()

    # ------------------------------------------------------------------ connections, channels, consumers

    def visible_connections(self, ctx: Ctx) -> list[Any]:
        conns = [c for c in self.broker.connections if c.vhost is not None and not c.draining]
        if ctx.monitor:
            return conns
        return [c for c in conns if c.user == ctx.user.name]

    @staticmethod
    def connection_name(c: Any) -> str:
        local = c.transport.get_extra_info("sockname") if c.transport is not None else None
        here = f"{local[0]}:{local[1]}" if local else "?"
        return f"{c.peer} -> {here}"

    def connection_info(self, c: Any) -> dict[str, Any]:
        local = c.transport.get_extra_info("sockname") if c.transport is not None else None
        peer_host, _, peer_port = c.peer.rpartition(":")
        return {
            "name": self.connection_name(c), "node": self.node, "type": "network", "protocol": "AMQP 0-9-1",
            "user": c.user, "user_who_performed_action": c.user, "vhost": c.vhost.name,
            "state": "blocked" if c.blocked else "running", "channels": len(c.channels),
            "peer_host": peer_host, "peer_port": int(peer_port or 0),
            "host": local[0] if local else "", "port": local[1] if local else 0,
            "ssl": False, "auth_mechanism": "PLAIN", "frame_max": c.frame_max, "channel_max": c.channel_max,
            "timeout": c.heartbeat, "client_properties": _jsonable(c.client_properties),
            "connected_at": int(time.time() * 1000), "recv_oct": 0, "send_oct": 0,
            "recv_oct_details": rate(0), "send_oct_details": rate(0), "recv_cnt": 0, "send_cnt": 0,
            "send_pend": c.out_bytes, "reductions": 0, "garbage_collection": {},
        }

    def find_connection(self, ctx: Ctx, name: str) -> Any:
        for c in self.visible_connections(ctx):
            if self.connection_name(c) == name:
                return c
        raise not_found()

    async def connections(self, ctx: Ctx) -> web.Response:
        return json_ok(columns(ctx.request, [self.connection_info(c) for c in self.visible_connections(ctx)]))

    async def vhost_connections(self, ctx: Ctx) -> web.Response:
        ctx.vhost(ctx.args[0])
        out = [self.connection_info(c) for c in self.visible_connections(ctx) if c.vhost.name == ctx.args[0]]
        return json_ok(columns(ctx.request, out))

    async def connection_show(self, ctx: Ctx) -> web.Response:
        return json_ok(self.connection_info(self.find_connection(ctx, ctx.args[0])))

    async def connection_delete(self, ctx: Ctx) -> web.Response:
        c = self.find_connection(ctx, ctx.args[0])
        if not ctx.admin and c.user != ctx.user.name:
            raise HttpError(401, "not_authorised", "Access refused.")
        reason = ctx.request.headers.get("X-Reason", "Closed via management plugin")
        c.close_forced(320, reason)
        self.broker.flush_all()
        return no_content()

    def channel_info(self, c: Any, ch: Any) -> dict[str, Any]:
        cname = self.connection_name(c)
        peer_host, _, peer_port = c.peer.rpartition(":")
        consumers = [cons for q in c.vhost.queues.values() for cons in q.consumers if cons.channel is ch]
        return {
            "name": f"{cname} ({ch.number})", "node": self.node, "number": ch.number, "user": c.user,
            "vhost": c.vhost.name, "state": "running",
            "connection_details": {"name": cname, "peer_host": peer_host, "peer_port": int(peer_port or 0)},
            "consumer_count": len(consumers), "messages_unacknowledged": len(ch.unacked),
            "messages_unconfirmed": 0, "messages_uncommitted": 0, "acks_uncommitted": 0,
            "prefetch_count": ch.consumer_prefetch, "global_prefetch_count": ch.global_prefetch,
            "confirm": ch.confirms is not None, "transactional": ch.tx is not None,
            "idle_since": "", "reductions": 0, "garbage_collection": {},
        }

    def all_channels(self, ctx: Ctx, vhost: str | None = None) -> list[dict[str, Any]]:
        return [self.channel_info(c, ch) for c in self.visible_connections(ctx)
                if vhost is None or c.vhost.name == vhost for ch in list(c.channels.values())]

    async def channels(self, ctx: Ctx) -> web.Response:
        return json_ok(columns(ctx.request, self.all_channels(ctx)))

    async def vhost_channels(self, ctx: Ctx) -> web.Response:
        ctx.vhost(ctx.args[0])
        return json_ok(columns(ctx.request, self.all_channels(ctx, ctx.args[0])))

    async def connection_channels(self, ctx: Ctx) -> web.Response:
        c = self.find_connection(ctx, ctx.args[0])
        return json_ok([self.channel_info(c, ch) for ch in c.channels.values()])

    async def consumers(self, ctx: Ctx) -> web.Response:
        names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
        out = []
        for vn in names:
            v = ctx.vhost(vn)
            for q in v.queues.values():
                for cons in q.consumers:
                    ch = cons.channel
                    conn = ch.conn
                    cname = self.connection_name(conn)
                    peer_host, _, peer_port = conn.peer.rpartition(":")
                    out.append({
                        "consumer_tag": cons.tag, "queue": {"name": q.name, "vhost": vn},
                        "channel_details": {"name": f"{cname} ({ch.number})", "number": ch.number, "node": self.node,
                                            "connection_name": cname, "peer_host": peer_host,
                                            "peer_port": int(peer_port or 0), "user": conn.user},
                        "ack_required": not cons.no_ack, "exclusive": cons.exclusive,
                        "prefetch_count": cons.prefetch, "active": True, "activity_status": "up",
                        "consumer_timeout": 1800000, "arguments": _jsonable(cons.arguments),
                    })
        return json_ok(columns(ctx.request, out))

    # ------------------------------------------------------------------ definitions

    async def definitions_get(self, ctx: Ctx) -> web.Response:
        if ctx.args:
            ctx.vhost(ctx.args[0])
            if not ctx.admin:
                ctx.need_admin()
            data = export_definitions(self.broker, ctx.args[0])
        else:
            ctx.need_admin()
            data = export_definitions(self.broker)
        resp = json_ok(data)
        if ctx.request.query.get("download"):
            resp.headers["Content-Disposition"] = f'attachment; filename="{ctx.request.query["download"]}"'
        return resp

    async def definitions_post(self, ctx: Ctx) -> web.Response:
        ctx.need_admin()
        raw = await ctx.request.read()
        ctype = ctx.request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
            raise bad_request("send the definitions as a JSON body")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"not valid JSON: {exc}") from None
        if ctx.args:
            vn = ctx.args[0]
            ctx.vhost(vn)
            if not isinstance(data, dict):
                raise bad_request("expected a JSON object")
            data = {k: v for k, v in data.items() if k not in ("users", "vhosts", "permissions", "topic_permissions")}
            for section in ("queues", "exchanges", "bindings", "policies", "parameters"):
                if isinstance(data.get(section), list):
                    data[section] = [{**e, "vhost": vn} if isinstance(e, dict) else e for e in data[section]]
        try:
            defs = check_definitions(data, "definitions")
            missing = self.check_conflicts(defs)
            if missing:
                raise bad_request(missing)
            apply_definitions(self.broker, defs, "definitions")
        except DefinitionsError as exc:
            key = f"{exc.key}: " if exc.key else ""
            raise bad_request(f"{key}{exc.reason}") from None
        self.broker.flush_all()
        return no_content()

    def check_conflicts(self, defs: dict[str, list[dict[str, Any]]]) -> str:
        """Refuse before applying anything what would fail half way: an exchange or a
        queue declared differently from the existing one."""
        b = self.broker
        for i, x in enumerate(defs.get("exchanges", [])):
            v = b.vhosts.get(x["vhost"])
            old = v.exchanges.get(x["name"]) if v is not None else None
            if old is not None and x["name"] and not x["name"].startswith("amq."):
                if (old.type, old.durable, old.auto_delete, old.internal) != (
                        x["type"], x["durable"], x["auto_delete"], x["internal"]):
                    return f"exchanges[{i}]: inequivalent to the existing exchange '{x['name']}' in vhost '{x['vhost']}'"
        for i, q in enumerate(defs.get("queues", [])):
            v = b.vhosts.get(q["vhost"])
            oldq = v.queues.get(q["name"]) if v is not None else None
            if oldq is not None and (oldq.durable, oldq.auto_delete, _jsonable(oldq.arguments)) != (
                    q["durable"], q["auto_delete"], q["arguments"]):
                return f"queues[{i}]: inequivalent to the existing queue '{q['name']}' in vhost '{q['vhost']}'"
        return ""

    # ------------------------------------------------------------------ health

    async def aliveness(self, ctx: Ctx) -> web.Response:
        vn = ctx.args[0]
        v = ctx.vhost(vn)
        ctx.authz(vn, A.CONFIGURE, "queue", "aliveness-test")
        v.declare_queue("aliveness-test", False, False, False, False, {}, None)
        self.broker.publish(vn, "", "aliveness-test", b"test_message", encode_properties({}, 12))
        got = self.broker.get_messages(vn, "aliveness-test", 1, False)
        if not got or got[0][0].body != b"test_message":
            return json_ok({"status": "failed", "reason": "the test message did not come back"}, 503)
        return json_ok({"status": "ok"})

    async def health_alarms(self, ctx: Ctx) -> web.Response:
        b = self.broker
        alarms = []
        if b.memory_alarm:
            alarms.append({"node": self.node, "resource": "memory"})
        if b.disk_alarm:
            alarms.append({"node": self.node, "resource": "disk"})
        if alarms:
            return json_ok({"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                            "alarms": alarms}, 503)
        return json_ok({"status": "ok"})

    async def health_port(self, ctx: Ctx) -> web.Response:
        try:
            port = int(ctx.args[0])
        except ValueError:
            raise bad_request(f"not a port: {ctx.args[0]}") from None
        ports = sorted({lst["port"] for lst in self.listeners()})
        if port in ports:
            return json_ok({"status": "ok", "port": port})
        return json_ok({"status": "failed", "reason": "No active listener", "missing": port, "ports": ports}, 503)


# ---------------------------------------------------------------------- properties

_PROPS = ("content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
          "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id")


def encode_properties(props: dict[str, Any], body_size: int) -> bytes:
    """A content-header payload from the management API's ``properties`` object."""
    kw: dict[str, Any] = {}
    for k, v in props.items():
        if k not in _PROPS:
            raise bad_request(f"properties: unknown property {k!r}")
        if k in ("delivery_mode", "priority"):
            v = parse_int(v, f"properties.{k}", 0)
        elif k == "timestamp":
            from datetime import UTC, datetime

            v = datetime.fromtimestamp(parse_int(v, "properties.timestamp", 0), UTC)
        elif k == "headers":
            if not isinstance(v, dict):
                raise bad_request("properties.headers: expected an object")
        elif not isinstance(v, str):
            raise bad_request(f"properties.{k}: expected a string")
        kw[k] = v
    try:
        return H.ContentHeader(0, body_size, C.Basic.Properties(**kw)).marshal()
    except (ValueError, TypeError) as exc:
        raise bad_request(f"properties: {exc}") from None


def decode_properties(header: bytes) -> dict[str, Any]:
    h = H.ContentHeader()
    try:
        h.unmarshal(header)
    except Exception:  # noqa: BLE001 - a header we cannot decode: show no properties
        return {}
    out: dict[str, Any] = {}
    for k in _PROPS:
        v = getattr(h.properties, k, None)
        if v is None or (v == "" and k != "content_type"):
            continue
        if k == "timestamp":
            v = int(v.timestamp())
        out[k] = _jsonable(v)
    return out
