"""Dead lettering as RabbitMQ 3.x does it: the x-death header and republishing."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from leveret.broker.core.message import Message
from leveret.protocol import methods as M
from leveret.protocol import properties as P

if TYPE_CHECKING:
    from leveret.broker.core.queue import Queue


def _s(v: Any) -> Any:
    return v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else v


def cc_keys(headers: dict[str, Any], name: str) -> list[str]:
    v = headers.get(name)
    if isinstance(v, list):
        return [_s(k) for k in v if isinstance(k, str | bytes | bytearray)]
    return []


def dead_lettered_copy(msg: Message, queue: Queue, reason: str, dlx: str, dlrk: str | None) -> Message:
    """A copy of ``msg`` as it leaves ``queue`` for the dead-letter exchange ``dlx``."""
    props = P.decode_properties(msg.header)
    headers: dict[str, Any] = dict(props.headers or {})
    routing_keys = [msg.routing_key, *cc_keys(headers, "CC")]
    deaths = headers.get("x-death")
    deaths = list(deaths) if isinstance(deaths, list) else []
    entry: dict[str, Any] | None = None
    for i, d in enumerate(deaths):
        if isinstance(d, dict) and _s(d.get("queue")) == queue.name and _s(d.get("reason")) == reason:
            entry = dict(d)
            deaths.pop(i)
            break
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0, tzinfo=None)
    if entry is None:
        entry = {
            "count": 1,
            "reason": reason,
            "queue": queue.name,
            "time": now,
            "exchange": msg.exchange,
            "routing-keys": routing_keys,
        }
        if props.expiration is not None:
            entry["original-expiration"] = props.expiration
    else:
        # RabbitMQ 3.10 only increments the count of an existing (queue, reason) entry:
        # time, exchange and routing-keys stay those of its first death
        entry["count"] = int(entry.get("count", 0) or 0) + 1
    props.expiration = None
    deaths.insert(0, entry)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", queue.name)
    headers.setdefault("x-first-death-exchange", msg.exchange)
    if dlrk is not None:
        headers.pop("CC", None)  # RabbitMQ: routed by the dead-letter key only
    props.headers = headers
    header = P.encode_properties(props, msg.size)
    rk = dlrk if dlrk is not None else msg.routing_key
    ex_rk = M.shortstr(dlx) + M.shortstr(rk)
    out = Message(ex_rk, dlx, rk, header, msg.body)
    if dlrk is None:
        out.bcc = msg.bcc
    return out  # a new message: TTLs in the target queues count from now


def cycle_detected(msg: Message, target: Queue) -> bool:
    """RabbitMQ drops a dead-lettered message that would return to a queue it already
    died in, unless a rejection happened somewhere in the cycle."""
    deaths = msg.headers.get("x-death")
    if not isinstance(deaths, list):
        return False
    # only the deaths up to (and including) the latest one in ``target`` form the cycle
    for d in deaths:
        if not isinstance(d, dict):
            return False  # not ours: a client put it there, not fully automatic
        if _s(d.get("reason")) == "rejected":
            return False
        if _s(d.get("queue")) == target.name:
            return True
    return False
