"""``/api/exchanges``: list, declare, delete, and publish through an exchange."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.core.errors import AMQPError
from leveret.broker.definitions import _jsonable
from leveret.broker.http.api import (
    N,
    V,
    bad_request,
    columns,
    encode_properties,
    json_ok,
    no_content,
    not_found,
    parse_bool,
)
from leveret.broker.http.policies import exchange_policy_info

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_routes(api: Api) -> None:
    r = api.route
    r(("exchanges",), GET=exchanges)
    r(("exchanges", V), GET=exchanges)
    r(("exchanges", V, N), GET=exchange_show, PUT=exchange_put, DELETE=exchange_delete)
    r(("exchanges", V, N, "publish"), POST=exchange_publish)


def exchange_name(segment: str) -> str:
    return "" if segment == "amq.default" else segment


def exchange_info(api: Api, vn: str, x: Any) -> dict[str, Any]:
    return {"name": x.name, "vhost": vn, "type": x.type, "durable": x.durable, "auto_delete": x.auto_delete,
            "internal": x.internal, "arguments": _jsonable(x.arguments), "user_who_performed_action": "",
            "message_stats": api.rates.exchange_stats(x), **exchange_policy_info(api.broker.vhosts[vn], x),
            **x.info()}


async def exchanges(ctx: Ctx) -> web.Response:
    names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
    out = []
    for vn in names:
        v = ctx.vhost(vn)
        out += [exchange_info(ctx.api, vn, x) for x in v.exchanges.values()]
    return json_ok(columns(ctx.request, out))


def get_exchange(ctx: Ctx, vn: str, seg: str) -> Any:
    x = ctx.vhost(vn).exchanges.get(exchange_name(seg))
    if x is None:
        raise not_found()
    return x


async def exchange_show(ctx: Ctx) -> web.Response:
    vn, seg = ctx.args
    return json_ok(exchange_info(ctx.api, vn, get_exchange(ctx, vn, seg)))


async def exchange_put(ctx: Ctx) -> web.Response:
    vn, seg = ctx.args
    v = ctx.vhost_for_write(vn)
    body = await ctx.body()
    name = exchange_name(seg)
    xtype = body.get("type")
    if not isinstance(xtype, str):
        raise bad_request("type: missing (direct, fanout, topic or headers)")
    durable = parse_bool(body.get("durable"), "durable", True)
    auto_delete = parse_bool(body.get("auto_delete"), "auto_delete", False)
    internal = parse_bool(body.get("internal"), "internal", False)
    args = body.get("arguments") or {}
    if not isinstance(args, dict):
        raise bad_request("arguments: expected an object")
    existed = name in v.exchanges
    ctx.session(vn).declare_exchange(
        name, xtype, durable=durable, auto_delete=auto_delete, internal=internal, arguments=args
    )
    return no_content(204 if existed else 201)


async def exchange_delete(ctx: Ctx) -> web.Response:
    vn, seg = ctx.args
    v = ctx.vhost_for_write(vn)
    name = exchange_name(seg)
    if name not in v.exchanges:
        raise not_found()
    ctx.session(vn).delete_exchange(name, if_unused=ctx.request.query.get("if-unused") == "true")
    return no_content()


async def exchange_publish(ctx: Ctx) -> web.Response:
    vn, seg = ctx.args
    ctx.vhost_for_write(vn)
    name = exchange_name(seg)
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
    try:
        # (RabbitMQ's management plugin publishes with mandatory set)
        routed = ctx.session(vn).publish(name, rk, header, data, mandatory=True)
    except AMQPError as exc:
        # as RabbitMQ: a channel error of the publish (a missing exchange, a refused
        # permission too) is a bad request naming its code
        raise bad_request(f"{exc.code} {exc.reply_text}") from None
    ctx.broker.flush_all()
    return json_ok({"routed": routed})
