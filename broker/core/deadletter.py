"""Dead lettering as RabbitMQ 3.x does it: the x-death header and republishing."""

from __future__ import annotations

import time
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
    """A copy of ``msg`` as it leaves ``queue`` for the dead-letter exchange ``dlx``.

    As RabbitMQ 3.10 (rabbit_dead_letter): the headers table gets an x-death entry
    (count a 64-bit ``l``, time a timestamp ``T``, the names long strings ``S``,
    routing-keys an array of them) and, at the first death, x-first-death-reason /
    -queue / -exchange; the table comes out sorted by key; the publisher's fields keep
    their exact wire types; the expiration property goes.  Everything is spliced into
    the raw content header (:func:`leveret.protocol.properties.rewrite`)."""
    header = msg.header
    at = msg.props.get("_headers_at")
    fields = P.table_fields(header, at) if at is not None else {}
    expiration = msg.props.get("expiration") if msg.has_expiration else None
    cc = fields.get(b"CC")
    routing_keys = [msg.routing_key, *(_longstrs(cc) if cc is not None else [])]
    info: list[tuple[bytes, bytes]] = [
        (b"reason", P.longstr_value(reason)),
        (b"queue", P.longstr_value(queue.name)),
        (b"time", P.timestamp_value(int(time.time()))),
        (b"exchange", P.longstr_value(msg.exchange)),
        (b"routing-keys", P.array_value([P.longstr_value(k) for k in routing_keys])),
    ]
    if expiration is not None:
        info.append((b"original-expiration", P.longstr_value(expiration)))
    deaths = fields.get(b"x-death")
    if deaths is None or deaths[:1] != b"A":
        # the first death: its own top-level headers, and an entry as built (unsorted)
        fields[b"x-first-death-reason"] = P.longstr_value(reason)
        fields[b"x-first-death-queue"] = P.longstr_value(queue.name)
        fields[b"x-first-death-exchange"] = P.longstr_value(msg.exchange)
        fields[b"x-death"] = P.array_value([P.table_value([(b"count", P.long_value(1)), *info])])
    else:
        tables = P.array_items(deaths)
        if len(tables) > 1:
            tables = _grouped(tables)
        match: dict[bytes, bytes] | None = None
        others: list[bytes] = []
        for item in tables:
            if match is None and item[:1] == b"F":
                t = P.table_fields(item, 1)
                if _text(t.get(b"queue")) == queue.name and _text(t.get(b"reason")) == reason:
                    match = t
                    continue
            others.append(item)
        if match is None:
            entry = dict([(b"count", P.long_value(1)), *info])
        else:
            # RabbitMQ 3.10 only counts one more: time, exchange and routing-keys stay
            # those of the first death from this queue for this reason
            entry = match
            count = P.field_value(entry[b"count"]) if b"count" in entry else None
            ok = isinstance(count, int) and not isinstance(count, bool)
            entry[b"count"] = P.long_value(count + 1) if ok else P.signedint_value(1)  # type: ignore[operator]
        fields[b"x-death"] = P.array_value([P.table_value(sorted(entry.items())), *others])
    if dlrk is not None:
        fields.pop(b"CC", None)  # RabbitMQ: routed by the dead-letter key only
    table = P.table_bytes(sorted(fields.items()))
    new_header = P.rewrite(header, {P.F_HEADERS: table, P.F_EXPIRATION: None})
    rk = dlrk if dlrk is not None else msg.routing_key
    ex_rk = M.shortstr(dlx) + M.shortstr(rk)
    out = Message(ex_rk, dlx, rk, new_header, msg.body)
    if dlrk is None:
        out.bcc = msg.bcc
    return out  # a new message: TTLs in the target queues count from now


def _text(raw: bytes | None) -> str | None:
    """A raw long-string value as text (None for anything else)."""
    if raw is None or raw[:1] != b"S":
        return None
    return raw[5:].decode("utf-8", "surrogateescape")


def _longstrs(raw: bytes) -> list[str]:
    """The long strings of a raw array value (CC / BCC routing keys)."""
    if raw[:1] != b"A":
        return []
    return [t for t in (_text(i) for i in P.array_items(raw)) if t is not None]


def _grouped(tables: list[bytes]) -> list[bytes]:
    """RabbitMQ 3.10's group_by_queue_and_reason over an x-death array of two or more
    entries: one entry per (queue, reason), the first seen, given a ``count``
    (signedint, the number of entries merged) if it had none -- and, being a fold that
    prepends, the entries come out in reverse order."""
    seen: set[tuple[str | None, str | None]] = set()
    out: list[bytes] = []
    for item in tables:
        if item[:1] != b"F":
            out.insert(0, item)
            continue
        t = P.table_fields(item, 1)
        key = (_text(t.get(b"queue")), _text(t.get(b"reason")))
        if key in seen:
            continue
        seen.add(key)
        if b"count" not in t:
            n = 0
            for other in tables:
                if other[:1] == b"F":
                    o = P.table_fields(other, 1)
                    n += (_text(o.get(b"queue")), _text(o.get(b"reason"))) == key
            t[b"count"] = P.signedint_value(n)
            item = P.table_value(t)
        out.insert(0, item)
    return out


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
