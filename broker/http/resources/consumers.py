"""``/api/consumers``: the consumers of the queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from leveret.broker.definitions import _jsonable
from leveret.broker.http.api import (
    V,
    columns,
    json_ok,
)
from leveret.broker.http.resources.connections import open_connections

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_routes(api: Api) -> None:
    r = api.route
    r(("consumers",), GET=consumers)
    r(("consumers", V), GET=consumers)


async def consumers(ctx: Ctx) -> web.Response:
    names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
    out = []
    channels = {id(ch.ident): (c, ch) for c in open_connections(ctx.api) for ch in c.channels}
    for vn in names:
        v = ctx.vhost(vn)
        for q in v.queues.values():
            for cons in q.consumers:
                found = channels.get(id(cons.channel))
                if found is None:
                    continue  # (its connection is closing)
                conn, ch = found
                out.append({
                    "consumer_tag": cons.tag, "queue": {"name": q.name, "vhost": vn},
                    "channel_details": {"name": f"{conn.name} ({ch.number})", "number": ch.number, "node": ctx.api.node,
                                        "connection_name": conn.name, "peer_host": conn.peer_host,
                                        "peer_port": conn.peer_port, "user": conn.user},
                    "ack_required": not cons.no_ack, "exclusive": cons.exclusive,
                    "prefetch_count": cons.prefetch, "active": True, "activity_status": "up",
                    "consumer_timeout": ctx.broker.config.consumer_timeout, "arguments": _jsonable(cons.arguments),
                })
    return json_ok(columns(ctx.request, out))
