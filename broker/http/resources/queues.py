"""``/api/queues``: list, declare, delete, purge, get messages, a queue's bindings."""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.core.errors import AMQPError
from leveret.broker.core.queue import Queue
from leveret.broker.definitions import _jsonable
from leveret.broker.http.api import (
    N,
    V,
    bad_request,
    columns,
    decode_properties,
    json_ok,
    no_content,
    not_found,
    parse_bool,
    parse_int,
    rate,
)
from leveret.broker.http.policies import policy_info
from leveret.broker.http.resources.bindings import binding_infos

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def _exclusive_tag(q: Queue) -> str | None:
    for c in q.consumers:
        if c.exclusive:
            return c.tag
    return None


def _single_active_tag(q: Queue) -> str | None:
    return q.consumers[0].tag if q.single_active and q.consumers else None


def _head_timestamp(q: Queue) -> int | None:
    """RabbitMQ's ``head_message_timestamp``: the timestamp property of the message at the
    head of the queue, if it is in RAM and has one (else null)."""
    head = q.store.head()
    return head[1].props.get("timestamp") if head is not None else None


def add_routes(api: Api) -> None:
    r = api.route
    r(("queues",), GET=queues)
    r(("queues", V), GET=queues)
    r(("queues", V, N), GET=queue_show, PUT=queue_put, DELETE=queue_delete)
    r(("queues", V, N, "contents"), DELETE=queue_purge)
    r(("queues", V, N, "get"), POST=queue_get)
    r(("queues", V, N, "bindings"), GET=queue_bindings)


def queue_info(api: Api, q: Queue) -> dict[str, Any]:
    ready, unacked = q.reported_counts()
    info: dict[str, Any] = {
        "name": q.name, "vhost": q.vhost.name, "durable": q.durable, "auto_delete": q.auto_delete,
        "exclusive": q.exclusive, "arguments": _jsonable(q.arguments), "node": api.node,
        "state": "running", "type": q.qtype.name,
        "messages": ready + unacked, "messages_details": rate(0),
        "messages_ready": ready, "messages_ready_details": rate(0),
        "messages_unacknowledged": unacked, "messages_unacknowledged_details": rate(0),
        "messages_ram": ready, "messages_persistent": q.store.persistent_count,
        "message_bytes": q.store.ready_bytes, "message_bytes_ready": q.store.ready_bytes,
        "message_bytes_unacknowledged": 0, "message_bytes_persistent": q.store.persistent_bytes,
        "consumers": len(q.consumers), "consumer_capacity": 1.0 if q.consumers else 0,
        "consumer_utilisation": 1.0 if q.consumers else 0, "memory": q.store.ready_bytes,
        # RabbitMQ 3.10's nulls: no policy, no mirrors, no exclusive or single active
        # consumer, no head message (in RAM) with a timestamp property
        **policy_info(q.vhost, q), "exclusive_consumer_tag": _exclusive_tag(q),
        "recoverable_slaves": None, "single_active_consumer_tag": _single_active_tag(q),
        "head_message_timestamp": _head_timestamp(q), "reductions": 0, "garbage_collection": {},
        "backing_queue_status": {"mode": "default", "len": ready},
        "message_stats": api.rates.queue_stats([q]),
    }
    if q.qtype.name == "quorum":
        quorum_fields(api, q, info)
        return info
    if q.qtype.stream:
        stream_fields(api, q, info)
        return info
    if not q.consumers:
        now = time.time()
        info["idle_since"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}+00:00"
    return info


#: the fields RabbitMQ 3.10's API gives a classic queue only
CLASSIC_ONLY = ("backing_queue_status", "exclusive_consumer_tag", "head_message_timestamp", "slave_nodes",
                "synchronised_slave_nodes", "recoverable_slaves")


#: what RabbitMQ 3.10's API does not give a stream
NOT_STREAM = ("messages_ram", "messages_persistent", "message_bytes", "message_bytes_ready",
              "message_bytes_unacknowledged", "message_bytes_persistent", "consumer_capacity", "consumer_utilisation")


def stream_fields(api: Api, q: Queue, info: dict[str, Any]) -> None:
    """A stream's fields as RabbitMQ 3.10 gives them: ``messages`` (and ready) the
    messages in the stream, none unacknowledged (acks remove nothing), its member,
    its readers (the consumers) per node."""
    for k in (*CLASSIC_ONLY, *NOT_STREAM):
        info.pop(k, None)
    info.update({
        "consumers": len(q.consumers),
        "members": [api.node], "online": [api.node], "readers": {api.node: len(q.consumers)},
        "policy": info.get("policy"), "memory": 0,
    })


def quorum_fields(api: Api, q: Queue, info: dict[str, Any]) -> None:
    """A quorum queue's fields as RabbitMQ 3.10 gives them: its (one) member, leader
    and online node, every message persistent, none held in RAM."""
    for k in CLASSIC_ONLY:
        info.pop(k, None)
    info.update({
        "type": "quorum", "consumers": q.consumer_count, "leader": api.node, "members": [api.node], "online": [api.node],
        "open_files": {api.node: 0}, "messages_dlx": 0, "message_bytes_dlx": 0,
        "messages_persistent": info["messages"], "message_bytes_persistent": info["message_bytes"],
        "messages_ram": 0, "message_bytes_ram": 0, "policy": None, "operator_policy": None,
        "single_active_consumer_ctag": (q.consumers[0].tag if q.single_active and q.consumers else None),
    })


async def queues(ctx: Ctx) -> web.Response:
    names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
    out = []
    for vn in names:
        v = ctx.vhost(vn)
        out += [queue_info(ctx.api, q) for q in v.queues.values()]
    return json_ok(columns(ctx.request, out))


def get_queue(ctx: Ctx, vn: str, name: str) -> Queue:
    q = ctx.vhost(vn).queues.get(name)
    if q is None:
        raise not_found()
    return q


async def queue_show(ctx: Ctx) -> web.Response:
    return json_ok(queue_info(ctx.api, get_queue(ctx, *ctx.args)))


async def queue_put(ctx: Ctx) -> web.Response:
    vn, name = ctx.args
    v = ctx.vhost_for_write(vn)
    body = await ctx.body()
    durable = parse_bool(body.get("durable"), "durable", True)
    auto_delete = parse_bool(body.get("auto_delete"), "auto_delete", False)
    args = body.get("arguments") or {}
    if not isinstance(args, dict):
        raise bad_request("arguments: expected an object")
    args = dict(args)
    if body.get("queue_type"):
        args.setdefault("x-queue-type", body["queue_type"])
    if not name:
        raise bad_request("a queue needs a name")
    existed = name in v.queues
    ctx.session(vn).declare_queue(name, durable=durable, auto_delete=auto_delete, arguments=args)
    return no_content(204 if existed else 201)


async def queue_delete(ctx: Ctx) -> web.Response:
    vn, name = ctx.args
    ctx.vhost_for_write(vn)
    get_queue(ctx, vn, name)
    query = ctx.request.query
    ctx.session(vn).delete_queue(name, if_unused=query.get("if-unused") == "true",
                                 if_empty=query.get("if-empty") == "true")
    ctx.broker.flush_all()
    return no_content()


async def queue_purge(ctx: Ctx) -> web.Response:
    vn, name = ctx.args
    ctx.vhost_for_write(vn)
    get_queue(ctx, vn, name)
    ctx.session(vn).purge(name)
    return no_content()


async def queue_get(ctx: Ctx) -> web.Response:
    vn, name = ctx.args
    ctx.vhost_for_write(vn)
    body = await ctx.body()
    count = parse_int(body.get("count"), "count", 1)
    ackmode = body.get("ackmode", "ack_requeue_true")
    if isinstance(body.get("requeue"), bool | str) and "ackmode" not in body:  # (before 3.7)
        ackmode = "ack_requeue_true" if parse_bool(body["requeue"], "requeue", True) else "ack_requeue_false"
    modes = {"ack_requeue_true": (True, False), "reject_requeue_true": (True, False),
             "ack_requeue_false": (False, False), "reject_requeue_false": (False, True)}
    if ackmode not in modes:
        raise bad_request(f"ackmode: expected one of {', '.join(modes)}")
    encoding = body.get("encoding", "auto")
    if encoding not in ("auto", "base64"):
        raise bad_request("encoding: expected auto or base64")
    truncate = parse_int(body.get("truncate"), "truncate", 0) if body.get("truncate") not in (None, "") else 0
    if count < 1:
        raise bad_request("count: expected a positive integer")
    requeue, reject = modes[ackmode]
    try:
        got = ctx.session(vn).get_messages(name, count, requeue=requeue, reject=reject)
    except AMQPError as exc:
        if exc.closes_channel:
            raise
        # (as RabbitMQ's management plugin: a connection error of the get names its code)
        raise bad_request(f"{exc.code} {exc.text}") from None
    ctx.broker.flush_all()
    out = []
    for msg, redelivered, left in got:
        whole = bytes(msg.body)  # (a large body is a protocol.body.Body of pieces)
        data = whole[:truncate] if truncate else whole
        if encoding == "auto":
            try:
                payload, penc = data.decode("utf-8"), "string"
            except UnicodeDecodeError:
                payload, penc = base64.b64encode(data).decode(), "base64"
        else:
            payload, penc = base64.b64encode(data).decode(), "base64"
        out.append({"payload_bytes": len(msg.body), "redelivered": redelivered, "exchange": msg.exchange,
                    "routing_key": msg.routing_key, "message_count": left,
                    "properties": decode_properties(msg.header), "payload": payload, "payload_encoding": penc})
    return json_ok(out)


async def queue_bindings(ctx: Ctx) -> web.Response:
    vn, name = ctx.args
    q = get_queue(ctx, vn, name)
    return json_ok([b for b in binding_infos(ctx.api, vn) if b["destination_type"] == "queue" and b["destination"] == q.name])
