"""``/api/connections``: the open connections (all for monitoring users, else the user's own)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.definitions import _jsonable
from leveret.broker.http.api import (
    HttpError,
    N,
    V,
    columns,
    json_ok,
    no_content,
    not_found,
    rate,
)
from leveret.broker.views import ConnectionInfo
from leveret.protocol.constants import CONNECTION_FORCED

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_routes(api: Api) -> None:
    r = api.route
    r(("connections",), GET=connections)
    r(("connections", N), GET=connection_show, DELETE=connection_delete)
    r(("vhosts", V, "connections"), GET=vhost_connections)


def open_connections(api: Api) -> list[ConnectionInfo]:
    """Every open connection, as the wire layer shows it (``Connection.info``)."""
    return [i for i in (c.info() for c in list(api.broker.connections)) if i is not None]


def visible_connections(ctx: Ctx) -> list[ConnectionInfo]:
    conns = open_connections(ctx.api)
    if ctx.monitor:
        return conns
    return [c for c in conns if c.user == ctx.user.name]


def connection_info(api: Api, c: ConnectionInfo) -> dict[str, Any]:
    return {
        "name": c.name, "node": api.node, "type": "network", "protocol": "AMQP 0-9-1",
        "user": c.user, "user_who_performed_action": c.user, "vhost": c.vhost,
        "state": "blocked" if c.blocked else "running", "channels": len(c.channels),
        "peer_host": c.peer_host, "peer_port": c.peer_port, "host": c.host, "port": c.port,
        "ssl": c.ssl, "ssl_protocol": c.ssl_protocol, "ssl_key_exchange": c.ssl_key_exchange,
        "ssl_cipher": c.ssl_cipher, "ssl_hash": c.ssl_hash,
        "peer_cert_subject": None, "peer_cert_issuer": None, "peer_cert_validity": None,
        "auth_mechanism": c.auth_mechanism, "frame_max": c.frame_max, "channel_max": c.channel_max,
        "timeout": c.heartbeat, "client_properties": _jsonable(c.client_properties),
        "connected_at": c.connected_at, "recv_oct": 0, "send_oct": 0,
        "recv_oct_details": rate(0), "send_oct_details": rate(0), "recv_cnt": 0, "send_cnt": 0,
        "send_pend": c.send_pend, "reductions": 0, "garbage_collection": {},
    }


def find_connection(ctx: Ctx, name: str) -> ConnectionInfo:
    for c in visible_connections(ctx):
        if c.name == name:
            return c
    raise not_found()


async def connections(ctx: Ctx) -> web.Response:
    return json_ok(columns(ctx.request, [connection_info(ctx.api, c) for c in visible_connections(ctx)]))


async def vhost_connections(ctx: Ctx) -> web.Response:
    ctx.vhost(ctx.args[0])
    out = [connection_info(ctx.api, c) for c in visible_connections(ctx) if c.vhost == ctx.args[0]]
    return json_ok(columns(ctx.request, out))


async def connection_show(ctx: Ctx) -> web.Response:
    return json_ok(connection_info(ctx.api, find_connection(ctx, ctx.args[0])))


async def connection_delete(ctx: Ctx) -> web.Response:
    c = find_connection(ctx, ctx.args[0])
    if not ctx.admin and c.user != ctx.user.name:
        raise HttpError(401, "not_authorised", "Access refused.")
    reason = ctx.request.headers.get("X-Reason", "Closed via management plugin")
    c.close(CONNECTION_FORCED, reason)
    ctx.broker.flush_all()
    return no_content()
