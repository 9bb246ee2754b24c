"""``/api/permissions`` and ``/api/topic-permissions``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from leveret.broker.core import access as A
from leveret.broker.http.api import (
    N,
    V,
    bad_request,
    columns,
    json_ok,
    no_content,
    not_found,
)

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_routes(api: Api) -> None:
    r = api.route
    r(("permissions",), GET=permissions)
    r(("permissions", V, N), GET=permission_show, PUT=permission_put, DELETE=permission_delete)
    r(("topic-permissions",), GET=topic_permissions)
    r(("topic-permissions", V, N), GET=topic_permission_show, PUT=topic_permission_put, DELETE=topic_permission_delete)


def all_permissions(api: Api) -> list[dict[str, str]]:
    return [{"user": u, "vhost": v, **p.as_dict()} for (u, v), p in api.broker.access.permissions.items()]


async def permissions(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    return json_ok(columns(ctx.request, all_permissions(ctx.api)))


async def permission_show(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    vhost, user = ctx.args
    p = ctx.broker.access.permissions.get((user, vhost))
    if p is None:
        raise not_found()
    return json_ok({"user": user, "vhost": vhost, **p.as_dict()})


async def permission_body(ctx: Ctx, vhost: str, user: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The string fields ``keys`` of a permission PUT body, for an existing vhost and
    user (400 otherwise, as RabbitMQ)."""
    body = await ctx.body()
    if vhost not in ctx.broker.vhosts:
        raise bad_request(f"vhost_not_found: no vhost '{vhost}'")
    if user not in ctx.broker.access.users:
        raise bad_request(f"user_not_found: no user '{user}'")
    out = {}
    for k in keys:
        v = body.get(k)
        if not isinstance(v, str):
            raise bad_request(f"{k}: expected a string (a regular expression)" if k != "exchange" else f"{k}: expected a string")
        out[k] = v
    return out


async def permission_put(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    vhost, user = ctx.args
    perms = await permission_body(ctx, vhost, user, A.PERMS)
    existed = (user, vhost) in ctx.broker.access.permissions
    try:
        ctx.broker.set_permissions(user, vhost, **perms)
    except (KeyError, ValueError) as exc:
        raise bad_request(str(exc).strip("'\"")) from None
    return no_content(204 if existed else 201)


async def permission_delete(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    vhost, user = ctx.args
    if (user, vhost) not in ctx.broker.access.permissions:
        raise not_found()
    ctx.broker.clear_permissions(user, vhost)
    return no_content()


def all_topic_permissions(api: Api) -> list[dict[str, str]]:
    return [{"user": u, "vhost": v, **t.as_dict()}
            for (u, v), rules in api.broker.access.topic_permissions.items() for t in rules.values()]


async def topic_permissions(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    return json_ok(columns(ctx.request, all_topic_permissions(ctx.api)))


async def topic_permission_show(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    vhost, user = ctx.args
    found = [t for t in all_topic_permissions(ctx.api) if t["vhost"] == vhost and t["user"] == user]
    if not found:
        raise not_found()
    return json_ok(found)


async def topic_permission_put(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    vhost, user = ctx.args
    vals = await permission_body(ctx, vhost, user, ("exchange", "write", "read"))
    try:
        ctx.broker.set_topic_permissions(user, vhost, vals["exchange"], vals["write"], vals["read"])
    except (KeyError, ValueError) as exc:
        raise bad_request(str(exc).strip("'\"")) from None
    return no_content(201)


async def topic_permission_delete(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    vhost, user = ctx.args
    if not ctx.broker.access.topic_permissions.get((user, vhost)):
        raise not_found()
    ctx.broker.clear_topic_permissions(user, vhost)
    return no_content()
