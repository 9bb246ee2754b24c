"""``/api/bindings`` and an exchange's bindings (``/api/exchanges/{vhost}/{name}/bindings/...``)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from aiohttp import web

from leveret.broker.core.queue import Queue
from leveret.broker.definitions import _jsonable
from leveret.broker.http.api import (
    N,
    V,
    bad_request,
    columns,
    json_ok,
    no_content,
    not_found,
)
from leveret.broker.http.resources.exchanges import exchange_name, get_exchange

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """RabbitMQ's binding "properties key": ``~`` for an empty key without arguments,
    the quoted key, or the key and a hash of the arguments."""
    if not arguments:
        return "~" if routing_key == "" else quote(routing_key, safe="")
    digest = hashlib.sha1(json.dumps(_jsonable(arguments), sort_keys=True).encode()).digest()
    return quote(routing_key, safe="") + "~" + base64.urlsafe_b64encode(digest[:9]).decode()


def add_routes(api: Api) -> None:
    r = api.route
    r(("exchanges", V, N, "bindings", "source"), GET=exchange_bindings_source)
    r(("exchanges", V, N, "bindings", "destination"), GET=exchange_bindings_destination)
    r(("bindings",), GET=bindings)
    r(("bindings", V), GET=bindings)
    for kind in ("q", "e"):
        r(("bindings", V, "e", N, kind, N), GET=binding_list, POST=binding_post)
        r(("bindings", V, "e", N, kind, N, N), GET=binding_show, DELETE=binding_delete)


def binding_infos(api: Api, vn: str) -> list[dict[str, Any]]:
    v = api.broker.vhosts[vn]
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


async def bindings(ctx: Ctx) -> web.Response:
    names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
    out = []
    for vn in names:
        ctx.vhost(vn)
        out += binding_infos(ctx.api, vn)
    return json_ok(columns(ctx.request, out))


async def exchange_bindings_source(ctx: Ctx) -> web.Response:
    vn, seg = ctx.args
    x = get_exchange(ctx, vn, seg)
    return json_ok([b for b in binding_infos(ctx.api, vn) if b["source"] == x.name])


async def exchange_bindings_destination(ctx: Ctx) -> web.Response:
    vn, seg = ctx.args
    x = get_exchange(ctx, vn, seg)
    return json_ok([b for b in binding_infos(ctx.api, vn)
                    if b["destination_type"] == "exchange" and b["destination"] == x.name])


def binding_ends(ctx: Ctx, exist: bool = True) -> tuple[str, str, str, str]:
    """(vhost, source, destination type, destination) of a bindings path; 404
    unless both ends exist (``exist``; else the core's bind looks)."""
    vn, src, dst = ctx.args[0], ctx.args[1], ctx.args[2]
    kind = "queue" if ctx.request.raw_path.split("?")[0].split("/")[6] == "q" else "exchange"
    v = ctx.vhost(vn)
    src = exchange_name(src)
    if not exist:
        return vn, src, kind, dst if kind == "queue" else exchange_name(dst)
    if src not in v.exchanges:
        raise not_found()
    if (kind == "queue" and dst not in v.queues) or (kind == "exchange" and exchange_name(dst) not in v.exchanges):
        raise not_found()
    return vn, src, kind, dst if kind == "queue" else exchange_name(dst)


def matching(api: Api, vn: str, src: str, kind: str, dst: str) -> list[dict[str, Any]]:
    return [b for b in binding_infos(api, vn)
            if b["source"] == src and b["destination_type"] == kind and b["destination"] == dst]


async def binding_list(ctx: Ctx) -> web.Response:
    return json_ok(matching(ctx.api, *binding_ends(ctx)))


async def binding_post(ctx: Ctx) -> web.Response:
    vn, src, kind, dst = binding_ends(ctx, exist=False)
    ctx.vhost_for_write(vn)
    body = await ctx.body()
    rk = body.get("routing_key", "")
    args = body.get("arguments") or {}
    if not isinstance(rk, str):
        raise bad_request("routing_key: expected a string")
    if not isinstance(args, dict):
        raise bad_request("arguments: expected an object")
    ctx.session(vn).bind(src, dst, kind=kind, routing_key=rk, arguments=args)
    loc = properties_key(rk, _jsonable(args))
    resp = no_content(201)
    resp.headers["Location"] = f"{quote(dst, safe='')}/{quote(loc, safe='')}"
    return resp


async def binding_show(ctx: Ctx) -> web.Response:
    vn, src, kind, dst = binding_ends(ctx)
    key = ctx.args[3]
    for b in matching(ctx.api, vn, src, kind, dst):
        if unquote(b["properties_key"]) == key or b["properties_key"] == key:
            return json_ok(b)
    raise not_found()


async def binding_delete(ctx: Ctx) -> web.Response:
    vn, src, kind, dst = binding_ends(ctx)
    ctx.vhost_for_write(vn)
    key = ctx.args[3]
    v = ctx.broker.vhosts[vn]
    for b in matching(ctx.api, vn, src, kind, dst):
        if unquote(b["properties_key"]) == key or b["properties_key"] == key:
            x = v.exchanges[src]
            args = next((a for (d, rk, _), a in x.bindings.items()
                         if d.name == dst and rk == b["routing_key"] and _jsonable(a or {}) == b["arguments"]), None)
            ctx.session(vn).unbind(src, dst, kind=kind, routing_key=b["routing_key"], arguments=args)
            return no_content()
    raise not_found()
