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

This module is the API's core (the route table, dispatch, authentication, error mapping,
``Ctx`` and the shared helpers); the endpoints are in ``resources/``, one module per
resource, each hooking its paths in with ``add_routes(api)``; ``policies.py`` and
``shovels.py`` likewise.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web
from pamqp import commands as C
from pamqp import header as H

from leveret.broker.core import access as A
from leveret.broker.core.errors import AccessRefused, AMQPError
from leveret.broker.core.operations import Session
from leveret.broker.core.queue import Queue
from leveret.broker.core.vhost import VHOST_COUNTERS
from leveret.broker.definitions import (
    _jsonable,
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

    def session(self, vhost: str) -> Session:
        """The core operations as this user in ``vhost`` (every check of a declare,
        delete, bind, purge, publish, get: the same as over AMQP)."""
        return Session(self.broker.vhosts[vhost], self.user.name)

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
        # one module per resource, as rabbitmq_management has one handler per resource;
        # each hooks its paths into this one route table (they import this module, so
        # it imports them only here).  No two patterns overlap, so the order is free.
        from leveret.broker.http import policies, resources, shovels

        shovels.add_routes(self)  # /api/parameters/shovel/..., /api/shovels
        resources.add_routes(self)
        policies.add_policy_routes(self)

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
        except AccessRefused as exc:  # a permission the user lacks (the core's check)
            return error_response(401, "not_authorised", exc.text)
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
        sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
        loopback_ok = user is not None and self.broker.access.loopback_allowed(name, sock[0] if sock else None)
        self.broker.count_auth("http", loopback_ok)
        if user is None:
            raise HttpError(401, "not_authorised", "Login failed")
        if not loopback_ok:
            raise HttpError(401, "not_authorised", "User can only log in via localhost")
        if not MGMT_TAGS & set(user.tags):
            raise HttpError(401, "not_authorised", "Not management user")
        return user

    # ------------------------------------------------------------------ node

    def queue_totals(self, vhosts: list[str]) -> dict[str, Any]:
        ready = unacked = 0
        for vn in vhosts:
            for q in self.broker.vhosts[vn].queues.values():
                r, u = q.reported_counts()
                ready += r
                unacked += u
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










    # ------------------------------------------------------------------ vhosts







    # ------------------------------------------------------------------ vhost limits





    # ------------------------------------------------------------------ users, permissions


















    # ------------------------------------------------------------------ exchanges









    # ------------------------------------------------------------------ queues












    # ------------------------------------------------------------------ bindings











    # ------------------------------------------------------------------ connections, channels, consumers















    # ------------------------------------------------------------------ definitions



    # ------------------------------------------------------------------ health






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
