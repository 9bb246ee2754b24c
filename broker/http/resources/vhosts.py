"""``/api/vhosts``: the virtual hosts (and the permissions in one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.http.api import (
    V,
    columns,
    json_ok,
    no_content,
    not_found,
)
from leveret.broker.http.resources.permissions import all_permissions

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_routes(api: Api) -> None:
    r = api.route
    r(("vhosts",), GET=vhosts)
    r(("vhosts", V), GET=vhost_show, PUT=vhost_put, DELETE=vhost_delete)
    r(("vhosts", V, "permissions"), GET=vhost_permissions)


def vhost_info(api: Api, name: str) -> dict[str, Any]:
    return {"name": name, "description": "", "tags": [], "default_queue_type": "classic",
            "metadata": {"description": "", "tags": []}, "tracing": False,
            "cluster_state": {api.node: "running"}, **api.queue_totals([name]),
            "message_stats": api.rates.vhost_stats(api.broker.vhosts[name])}


async def vhosts(ctx: Ctx) -> web.Response:
    return json_ok(columns(ctx.request, [vhost_info(ctx.api, v) for v in ctx.visible_vhosts()]))


async def vhost_show(ctx: Ctx) -> web.Response:
    ctx.vhost(ctx.args[0])
    return json_ok(vhost_info(ctx.api, ctx.args[0]))


async def vhost_put(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    await ctx.body()
    name = ctx.args[0]
    new = name not in ctx.broker.vhosts
    ctx.broker.add_vhost(name)
    return no_content(201 if new else 204)


async def vhost_delete(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    if ctx.args[0] not in ctx.broker.vhosts:
        raise not_found()
    ctx.broker.delete_vhost(ctx.args[0])
    return no_content()


async def vhost_permissions(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    ctx.vhost(ctx.args[0])
    return json_ok([p for p in all_permissions(ctx.api) if p["vhost"] == ctx.args[0]])
