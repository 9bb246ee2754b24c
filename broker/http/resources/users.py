"""``/api/users``: the users (and the permissions of one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.core import access as A
from leveret.broker.http.api import (
    N,
    bad_request,
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
    r(("users",), GET=users)
    r(("users", N), GET=user_show, PUT=user_put, DELETE=user_delete)
    r(("users", N, "permissions"), GET=user_permissions)


def user_info(u: A.User) -> dict[str, Any]:
    return {"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": u.hashing_algorithm,
            "tags": list(u.tags), "limits": {}}


async def users(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    return json_ok(columns(ctx.request, [user_info(u) for u in ctx.broker.access.users.values()]))


async def user_show(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    u = ctx.broker.access.users.get(ctx.args[0])
    if u is None:
        raise not_found()
    return json_ok(user_info(u))


async def user_put(ctx: Ctx) -> web.Response:
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
    existing = ctx.broker.access.users.get(name)
    if password is None and phash is None:
        if existing is None:
            raise bad_request("password or password_hash must be set")
        phash, algo = existing.password_hash, existing.hashing_algorithm
    else:
        algo = body.get("hashing_algorithm") or A.SHA256
    try:
        algo = A.algorithm(algo)
        if password is not None:
            ctx.broker.add_user(name, password, tags=tags)
        else:
            ctx.broker.add_user(name, password_hash=phash, hashing_algorithm=algo, tags=tags)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return no_content(201 if existing is None else 204)


async def user_delete(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    if not ctx.broker.delete_user(ctx.args[0]):
        raise not_found()
    return no_content()


async def user_permissions(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    if ctx.args[0] not in ctx.broker.access.users:
        raise not_found()
    return json_ok([p for p in all_permissions(ctx.api) if p["user"] == ctx.args[0]])
