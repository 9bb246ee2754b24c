"""``/api/channels``: the channels of the open connections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.http.api import (
    N,
    V,
    columns,
    json_ok,
)
from leveret.broker.http.resources.connections import find_connection, visible_connections
from leveret.broker.views import ChannelInfo, ConnectionInfo

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_routes(api: Api) -> None:
    r = api.route
    r(("connections", N, "channels"), GET=connection_channels)
    r(("channels",), GET=channels)
    r(("vhosts", V, "channels"), GET=vhost_channels)


def channel_info(api: Api, c: ConnectionInfo, ch: ChannelInfo) -> dict[str, Any]:
    return {
        "name": f"{c.name} ({ch.number})", "node": api.node, "number": ch.number, "user": c.user,
        "vhost": c.vhost, "state": "running",
        "connection_details": {"name": c.name, "peer_host": c.peer_host, "peer_port": c.peer_port},
        "consumer_count": ch.consumer_count, "messages_unacknowledged": ch.messages_unacknowledged,
        "messages_unconfirmed": ch.messages_unconfirmed, "messages_uncommitted": ch.messages_uncommitted,
        "acks_uncommitted": ch.acks_uncommitted, "prefetch_count": ch.prefetch_count, "global_prefetch_count": ch.global_prefetch_count,
        "confirm": ch.confirm, "transactional": ch.transactional,
        "idle_since": "", "reductions": 0, "garbage_collection": {},
    }


def all_channels(ctx: Ctx, vhost: str | None = None) -> list[dict[str, Any]]:
    return [channel_info(ctx.api, c, ch) for c in visible_connections(ctx)
            if vhost is None or c.vhost == vhost for ch in c.channels]


async def channels(ctx: Ctx) -> web.Response:
    return json_ok(columns(ctx.request, all_channels(ctx)))


async def vhost_channels(ctx: Ctx) -> web.Response:
    ctx.vhost(ctx.args[0])
    return json_ok(columns(ctx.request, all_channels(ctx, ctx.args[0])))


async def connection_channels(ctx: Ctx) -> web.Response:
    c = find_connection(ctx, ctx.args[0])
    return json_ok([channel_info(ctx.api, c, ch) for ch in c.channels])
