"""``/api/vhost-limits``: a vhost's ``max-queues`` and ``max-connections``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

from leveret.broker.http.api import (
    HttpError,
    N,
    V,
    bad_request,
    json_ok,
    no_content,
)

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_routes(api: Api) -> None:
    r = api.route
    r(("vhost-limits",), GET=vhost_limits)
    r(("vhost-limits", V), GET=vhost_limits)
    r(("vhost-limits", V, N), PUT=vhost_limit_put, DELETE=vhost_limit_delete)


async def vhost_limits(ctx: Ctx) -> web.Response:
    """``GET /api/vhost-limits[/{vhost}]``: ``[{"vhost", "value": {"max-queues": n, ...}}]``,
    the vhosts with limits only (RabbitMQ 3.10.8's shape)."""
    names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
    if ctx.args:
        ctx.vhost(ctx.args[0])
    limits = ctx.broker.access.vhost_limits
    return json_ok([{"vhost": vn, "value": dict(sorted(limits[vn].items()))} for vn in names if limits.get(vn)])


def limit_target(ctx: Ctx) -> tuple[str, str, dict[str, int]]:
    ctx.need_admin()
    vn, name = ctx.args
    if vn not in ctx.broker.vhosts:
        raise HttpError(404, "not_found", "vhost_not_found")
    return vn, name, dict(ctx.broker.access.vhost_limits.get(vn, {}))


async def vhost_limit_put(ctx: Ctx) -> web.Response:
    """``PUT /api/vhost-limits/{vhost}/{max-queues|max-connections}`` ``{"value": n}``
    (a negative value: no limit)."""
    vn, name, limits = limit_target(ctx)
    body = await ctx.body()
    if "value" not in body:
        raise bad_request("[{key_missing,value}]")
    value = body["value"]
    if name not in ("max-queues", "max-connections"):
        raise bad_request(f"Validation failed\n\nUnrecognised terms [{{<<{json.dumps(name)}>>,{json.dumps(value)}}}] in limits\n")
    if isinstance(value, bool) or not isinstance(value, int):
        shown = f"<<{json.dumps(value)}>>" if isinstance(value, str) else json.dumps(value)
        raise bad_request(f"Validation failed\n\n{name} should be a number, actually was {shown}\n")
    limits[name] = value
    ctx.broker.set_vhost_limits(vn, limits)
    return no_content()


async def vhost_limit_delete(ctx: Ctx) -> web.Response:
    vn, name, limits = limit_target(ctx)
    if limits.pop(name, None) is not None:
        ctx.broker.set_vhost_limits(vn, limits)
    return no_content()
