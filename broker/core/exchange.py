"""Exchanges: direct, fanout, topic and headers.

An exchange maps a routing key (and, for headers, the message headers) to a set of
destinations: queues or, for exchange-to-exchange bindings, other exchanges.  Each
type keeps an index built for its match rule:

* direct: dict routing key -> destinations
* fanout: one list of destinations
* topic: a trie over dot-separated words (with ``*`` and ``#`` nodes) plus a bounded
  cache of routing key -> destinations, cleared whenever a binding changes
* headers: a list of compiled bindings, each checked against the message headers
* x-consistent-hash: a ring of (cumulative weight, destination); jump consistent hashing
  of the routing key (or a header, or a property) picks a bucket out of the total weight
* x-delayed-message: routes as its ``x-delayed-type`` (an inner exchange of that type
  holds the index); a message with a positive ``x-delay`` header goes to the exchange's
  :class:`DelayedHold` instead, the one destination that keeps it until it is due
  (``leveret.broker.core.delayed``)
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import re
from bisect import bisect_right
from typing import Any

from leveret.broker.core.errors import AMQPError
from leveret.protocol import properties as P
from leveret.protocol.constants import COMMAND_INVALID, PRECONDITION_FAILED

Args = dict[str, Any]

def freeze(value: Any) -> Any:
    """A hashable, type-preserving form of an argument table (for binding identity)."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("__list__", tuple(freeze(v) for v in value))
    if isinstance(value, bytearray):
        return bytes(value)
    return (type(value).__name__, value)


class Exchange:
    """Base exchange: binding bookkeeping shared by every type."""

    type = "direct"

    def __init__(
        self,
        name: str,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Args | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments: Args = dict(arguments or {})
        self.alternate: str | None = None
        ae = self.arguments.get("alternate-exchange")
        if isinstance(ae, bytes):
            ae = ae.decode()
        if isinstance(ae, str):
            self.alternate = ae
        # (destination, routing_key, frozen args) -> args
        self.bindings: dict[tuple[Any, str, Any], Args] = {}
        self.deleted = False
        # message_stats of the management API: publishes into this exchange (one integer
        # increment per publish), and those of them that reached no queue (publish_out
        # is the difference)
        self.stats_publish_in = 0
        self.stats_unroutable = 0

    @classmethod
    def validate(cls, arguments: Args) -> None:
        """The type's checks of a new exchange's arguments (406); none by default."""

    def check_binding(self, routing_key: str, args: Args) -> None:
        """The type's checks of a new binding (406); none by default."""

    def removed(self) -> None:
        """The exchange was deleted (a delayed exchange drops what it holds)."""

    def close(self) -> None:
        """The node stops (a delayed exchange stops its timer)."""

    def info(self) -> dict[str, Any]:
        """The type's items in the management API (RabbitMQ's ``info/1``)."""
        return {}

    def bind(self, dest: Any, routing_key: str, args: Args) -> bool:
        self.check_binding(routing_key, args)
        key = (dest, routing_key, freeze(args))
        if key in self.bindings:
            return False
        self.bindings[key] = args
        self._add(dest, routing_key, args)
        return True

    def unbind(self, dest: Any, routing_key: str, args: Args) -> bool:
        key = (dest, routing_key, freeze(args))
        if key not in self.bindings:
            return False
        del self.bindings[key]
        self._rebuild()
        return True

    def unbind_all(self, dest: Any) -> list[tuple[str, Args]]:
        """Remove every binding to ``dest``; return what was removed."""
        gone = [(k[1], a) for k, a in self.bindings.items() if k[0] is dest]
        if gone:
            self.bindings = {k: a for k, a in self.bindings.items() if k[0] is not dest}
            self._rebuild()
        return gone

    def _rebuild(self) -> None:
        self._clear()
        for (dest, rk, _), args in self.bindings.items():
            self._add(dest, rk, args)

    # type-specific index
    def _clear(self) -> None:
        raise NotImplementedError

    def _add(self, dest: Any, routing_key: str, args: Args) -> None:
        raise NotImplementedError

    def route(self, routing_key: str, msg: Any) -> list[Any] | tuple[Any, ...]:
        """Destinations for a message; ``msg.headers`` is its headers table."""
        raise NotImplementedError


class DirectExchange(Exchange):
    type = "direct"

    def __init__(self, *a: Any, **kw: Any) -> None:
        self._index: dict[str, list[Any]] = {}
        super().__init__(*a, **kw)

    def _clear(self) -> None:
        self._index = {}

    def _add(self, dest: Any, routing_key: str, args: Args) -> None:
        lst = self._index.setdefault(routing_key, [])
        if dest not in lst:
            lst.append(dest)

    def route(self, routing_key: str, msg: Any) -> list[Any] | tuple[Any, ...]:
        return self._index.get(routing_key, ())


class FanoutExchange(Exchange):
    type = "fanout"

    def __init__(self, *a: Any, **kw: Any) -> None:
        self._dests: list[Any] = []
        super().__init__(*a, **kw)

    def _clear(self) -> None:
        self._dests = []

    def _add(self, dest: Any, routing_key: str, args: Args) -> None:
        if dest not in self._dests:
            self._dests.append(dest)

    def route(self, routing_key: str, msg: Any) -> list[Any] | tuple[Any, ...]:
        return self._dests


class _Node:
    __slots__ = ("children", "star", "hash", "dests")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.hash: _Node | None = None
        self.dests: list[Any] = []


class TopicExchange(Exchange):
    """Topic matching on a word trie; results cached per routing key."""

    type = "topic"
    CACHE_MAX = 16384

    def __init__(self, *a: Any, **kw: Any) -> None:
        self._root = _Node()
        self._cache: dict[str, tuple[Any, ...]] = {}
        super().__init__(*a, **kw)

    def _clear(self) -> None:
        self._root = _Node()
        self._cache = {}

    def _add(self, dest: Any, routing_key: str, args: Args) -> None:
        node = self._root
        # as RabbitMQ: an empty key has no words (so "*" does not match it)
        for word in routing_key.split(".") if routing_key else ():
            if word == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            elif word == "#":
                if node.hash is None:
                    node.hash = _Node()
                node = node.hash
            else:
                nxt = node.children.get(word)
                if nxt is None:
                    nxt = node.children[word] = _Node()
                node = nxt
        if dest not in node.dests:
            node.dests.append(dest)
        self._cache = {}

    def route(self, routing_key: str, msg: Any) -> list[Any] | tuple[Any, ...]:
        hit = self._cache.get(routing_key)
        if hit is not None:
            return hit
        out: dict[Any, None] = {}
        _match(self._root, routing_key.split(".") if routing_key else [], 0, out)
        result = tuple(out)
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()
        self._cache[routing_key] = result
        return result


def _match(node: _Node, words: list[str], i: int, out: dict[Any, None]) -> None:
    n = len(words)
    if node.hash is not None:
        # '#' matches zero or more words: try every remaining suffix
        h = node.hash
        for j in range(i, n + 1):
            _match(h, words, j, out)
    if i == n:
        for d in node.dests:
            out[d] = None
        return
    child = node.children.get(words[i])
    if child is not None:
        _match(child, words, i + 1, out)
    if node.star is not None:
        _match(node.star, words, i + 1, out)


def _same(a: Any, b: Any) -> bool:
    """Header value equality as RabbitMQ (Erlang) compares: by type, so true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, bytes | bytearray) and isinstance(b, str):
        return bytes(a) == b.encode()
    if isinstance(b, bytes | bytearray) and isinstance(a, str):
        return bytes(b) == a.encode()
    return a == b


_X_MATCH = frozenset({"all", "any", "all-with-x", "any-with-x"})
_ERL_ESCAPES = {
    0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x0B: b"\\v", 0x08: b"\\b", 0x0C: b"\\f", 0x1B: b"\\e",
    0x22: b'\\"', 0x5C: b"\\\\",
}


def erl_binary(data: bytes) -> str:
    """A binary as Erlang's ``~p`` prints it: ``<<"text">>`` when every byte is printable
    Latin-1 (the bytes go out as they are: UTF-8 text stays UTF-8), else ``<<1,2,3>>``."""
    if not data:
        return "<<>>"
    if all(32 <= b <= 126 or 160 <= b or b in _ERL_ESCAPES for b in data):
        text = b"".join(_ERL_ESCAPES.get(b) or bytes((b,)) for b in data)
        return '<<"' + text.decode("utf-8", "replace") + '">>'
    return "<<" + ",".join(str(b) for b in data) + ">>"


def _erl_typed(value: Any) -> tuple[str, str]:
    """RabbitMQ's field type name and ``~p`` of a decoded table value.  The wire type of
    an integer is gone once decoded: this names the smallest that holds it, as clients
    encoding Python ints (pamqp) choose."""
    if isinstance(value, bool):
        return "bool", "true" if value else "false"
    if isinstance(value, int):
        for name, lo, hi in (("byte", -(1 << 7), 1 << 7), ("short", -(1 << 15), 1 << 15), ("signedint", -(1 << 31), 1 << 31)):
            if lo <= value < hi:
                return name, str(value)
        return "long", str(value)
    if isinstance(value, float):
        return "float", repr(value)  # (pamqp sends every float as a 32-bit 'f')
    if isinstance(value, decimal.Decimal):
        return "decimal", str(value)
    if isinstance(value, datetime.datetime):
        return "timestamp", str(int(value.replace(tzinfo=value.tzinfo or datetime.UTC).timestamp()))
    if isinstance(value, dict):
        return "table", repr(value)
    if isinstance(value, list):
        return "array", repr(value)
    if isinstance(value, bytearray):
        return "binary", erl_binary(bytes(value))
    if value is None:
        return "void", "undefined"
    return type(value).__name__, repr(value)


def check_x_match(args: Args) -> None:
    """RabbitMQ's validation of a headers binding: x-match, when given, is a long string
    all, any, all-with-x or any-with-x (406 otherwise)."""
    if "x-match" not in args:
        return
    mode = args["x-match"]
    if isinstance(mode, str):
        mode = mode.encode("utf-8", "surrogateescape")
    if isinstance(mode, bytes):
        if mode.decode("utf-8", "replace") in _X_MATCH:
            return
        raise AMQPError(
            PRECONDITION_FAILED,
            f"Invalid x-match field value {erl_binary(mode)}; expected all, any, all-with-x, or any-with-x",
        )
    type_name, shown = _erl_typed(mode)
    raise AMQPError(PRECONDITION_FAILED, f"Invalid x-match field type {type_name} (value {shown}); expected longstr")


class HeadersExchange(Exchange):
    type = "headers"

    def __init__(self, *a: Any, **kw: Any) -> None:
        self._rules: list[tuple[Any, bool, bool, list[tuple[str, Any]]]] = []
        super().__init__(*a, **kw)

    def check_binding(self, routing_key: str, args: Args) -> None:
        check_x_match(args)

    def _clear(self) -> None:
        self._rules = []

    def _add(self, dest: Any, routing_key: str, args: Args) -> None:
        mode = args.get("x-match", "all")
        if isinstance(mode, bytes):
            mode = mode.decode()
        match_all = not str(mode).startswith("any")
        with_x = str(mode).endswith("-with-x")
        conds = [(k, v) for k, v in args.items() if k != "x-match" and (with_x or not k.startswith("x-"))]
        self._rules.append((dest, match_all, with_x, conds))

    def route(self, routing_key: str, msg: Any) -> list[Any] | tuple[Any, ...]:
        if not self._rules:
            return ()
        headers = msg.headers
        out: dict[Any, None] = {}
        for dest, match_all, _with_x, conds in self._rules:
            if dest in out:
                continue
            if match_all:
                ok = all(k in headers and (v is None or _same(headers[k], v)) for k, v in conds)
            else:
                ok = any(k in headers and (v is None or _same(headers[k], v)) for k, v in conds)
            if ok:
                out[dest] = None
        return tuple(out)


class FederationUpstreamExchange(FanoutExchange):
    """``x-federation-upstream``: the exchange RabbitMQ's federation link declares on its
    upstream (internal, bound to the federated exchange): a fanout that drops a message
    which has made ``x-max-hops`` hops already (its ``x-received-from`` list) or came from
    the downstream itself (an entry with the ``x-downstream-name`` cluster and the
    ``x-downstream-vhost`` vhost), as rabbit_federation_upstream_exchange does."""

    type = "x-federation-upstream"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        hops = self.arguments.get("x-max-hops")
        if hops is None:
            raise AMQPError(PRECONDITION_FAILED, "Argument x-max-hops missing")
        if isinstance(hops, bool) or not isinstance(hops, int):
            raise AMQPError(PRECONDITION_FAILED, "Argument x-max-hops must be of type long")
        self.max_hops = hops
        name = self.arguments.get("x-downstream-name")
        vhost = self.arguments.get("x-downstream-vhost")
        self.downstream = (_text(name), _text(vhost))

    def route(self, routing_key: str, msg: Any) -> list[Any] | tuple[Any, ...]:
        if msg.has_headers:
            hops = msg.headers.get("x-received-from")
            if isinstance(hops, list):
                if len(hops) >= self.max_hops:
                    return ()
                dname, dvhost = self.downstream
                for hop in hops:
                    if (
                        isinstance(hop, dict)
                        and _text(hop.get("cluster-name")) == dname
                        and _text(hop.get("vhost")) == dvhost
                        and dname is not None
                    ):
                        return ()
        return self._dests


# ---------------------------------------------------------------- x-consistent-hash

#: what Erlang's list_to_integer / binary_to_integer accept (RabbitMQ parses weights and
#: string x-delay values with them)
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
HASH_PROPERTIES = ("correlation_id", "message_id", "timestamp")
_UNDEFINED = b"\x00undefined"  # what a missing header or property hashes as (it still routes)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else None


def binding_weight(routing_key: str) -> int:
    """The weight a consistent-hash binding key stands for; RabbitMQ's 406 otherwise."""
    if not _INTEGER.match(routing_key):
        raise AMQPError(
            PRECONDITION_FAILED,
            f"The binding key must be an integer: {erl_binary(routing_key.encode('utf-8', 'surrogateescape'))}",
        )
    weight = int(routing_key)
    if weight < 1:
        raise AMQPError(PRECONDITION_FAILED, "The binding key must be greater than 0")
    return weight


def hash_source(arguments: Args) -> tuple[str | None, str | None]:
    """``(hash-header, hash-property)`` of a consistent-hash exchange, checked as RabbitMQ
    does (406): not both, and a property among message_id, correlation_id, timestamp."""
    header, prop = arguments.get("hash-header"), arguments.get("hash-property")
    for name, value in (("hash-header", header), ("hash-property", prop)):
        if value is not None and _text(value) is None:
            # (RabbitMQ 3.10 crashes the connection here: 541 INTERNAL_ERROR)
            raise AMQPError(PRECONDITION_FAILED, f"Invalid argument, '{name}' must be a string")
    header, prop = _text(header), _text(prop)
    if header is not None and prop is not None:
        raise AMQPError(PRECONDITION_FAILED, "hash-header and hash-property are mutually exclusive")
    if prop is not None and prop not in HASH_PROPERTIES:
        raise AMQPError(PRECONDITION_FAILED, f"Unsupported property: {prop}")
    return header, prop


def hash_bytes(value: Any) -> bytes:
    """The bytes a header or property value is hashed as (typed, so 5 and "5" differ)."""
    if value is None:
        return _UNDEFINED
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, datetime.datetime):  # (the timestamp property, as its seconds)
        return str(int(value.replace(tzinfo=value.tzinfo or datetime.UTC).timestamp())).encode()
    return f"{type(value).__name__}:{value!r}".encode()


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: a bucket in ``[0, buckets)`` for a 64-bit
    key; growing ``buckets`` moves a key only into one of the new buckets."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (2147483648.0 / ((key >> 33) + 1)))
    return b


class ConsistentHashExchange(Exchange):
    """RabbitMQ's ``x-consistent-hash``: each destination takes as many buckets as the
    weight in its binding key (its first binding's: a second binding to the same queue
    adds none, as RabbitMQ), in binding order; a message goes to the owner of the bucket
    jump hashing picks for its routing key, or the header ``hash-header``, or the property
    ``hash-property``.  The buckets are kept as cumulative weights (no table per bucket:
    a weight of 10^20 costs nothing)."""

    type = "x-consistent-hash"

    def __init__(self, *a: Any, **kw: Any) -> None:
        self._ends: list[int] = []  # cumulative weights, one per destination
        self._ring: list[Any] = []  # the destinations, in binding order
        super().__init__(*a, **kw)
        self._header, self._property = hash_source(self.arguments)

    @classmethod
    def validate(cls, arguments: Args) -> None:
        hash_source(arguments)

    def check_binding(self, routing_key: str, args: Args) -> None:
        binding_weight(routing_key)

    def _clear(self) -> None:
        self._ends = []
        self._ring = []

    def _add(self, dest: Any, routing_key: str, args: Args) -> None:
        if dest in self._ring:
            return
        self._ends.append((self._ends[-1] if self._ends else 0) + binding_weight(routing_key))
        self._ring.append(dest)

    def route(self, routing_key: str, msg: Any) -> list[Any] | tuple[Any, ...]:
        ring = self._ring
        if not ring:
            return ()
        if self._header is not None:
            data = hash_bytes(msg.headers.get(self._header) if msg.has_headers else None)
        elif self._property is not None:
            value = msg.props.get(self._property)
            data = hash_bytes(str(value) if type(value) is int else value)  # (timestamp: its decimal text)
        else:
            data = routing_key.encode("utf-8", "surrogateescape")
        if len(ring) == 1:
            return (ring[0],)
        key = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
        return (ring[bisect_right(self._ends, jump_hash(key, self._ends[-1]))],)


# ---------------------------------------------------------------- x-delayed-message

#: the longest delay the plugin holds a message for (an Erlang timer's limit), in ms
DELAY_MAX = 4294967295


def delay_of(headers: dict[str, Any]) -> int:
    """The delay a message's ``x-delay`` header asks for, in ms, as the plugin reads it:
    an integer, a string holding one, a float or decimal truncated; 0 (route at once) for
    anything else, for 0 or less, and above :data:`DELAY_MAX`."""
    return delay_value(headers.get("x-delay"))


def delay_value(value: Any) -> int:
    """:func:`delay_of` of one ``x-delay`` value."""
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        delay = value
    elif isinstance(value, float | decimal.Decimal):
        try:
            delay = int(value)
        except (ValueError, OverflowError, ArithmeticError):
            return 0
    else:
        text = _text(value)
        if text is None or not _INTEGER.match(text):
            return 0
        delay = int(text)
    return delay if 0 < delay <= DELAY_MAX else 0


def message_delay(msg: Any) -> tuple[int, dict[bytes, bytes] | None]:
    """``(delay, raw header fields)`` of a message with headers: its ``x-delay``
    (:func:`delay_value`), read from the raw table without decoding the other fields."""
    at = msg.props.get("_headers_at")
    if at is None:
        return 0, None
    try:
        fields = P.table_fields(msg.header, at)
        raw = fields.get(b"x-delay")
        if raw is None:
            return 0, None
        return delay_value(P.field_value(raw)), fields
    except P.PropertyError:
        return 0, None


def delayed_type(arguments: Args) -> str:
    """The ``x-delayed-type`` of a delayed exchange, checked as the plugin does."""
    value = arguments.get("x-delayed-type")
    text = _text(value)
    if text == "x-delayed-message":
        raise AMQPError(PRECONDITION_FAILED, "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'")
    if text is None:
        raise AMQPError(PRECONDITION_FAILED, "Invalid argument, 'x-delayed-type' must be an existing exchange type")
    if text not in EXCHANGE_CLASSES:
        raise AMQPError(COMMAND_INVALID, f"unknown exchange type '{text}'")
    return text


class DelayedHold:
    """The destination a delayed exchange routes a delayed message to: ``publish`` hands
    it to the exchange's store (``leveret.broker.core.delayed.DelayedStore``), which
    routes it again when it is due.  Looks enough like a queue for ``VHost.enqueue``,
    ``Channel._route`` and dead lettering."""

    __slots__ = ("exchange", "delay", "fields")
    name = None  # (never the name of a queue a message died in)

    def __init__(self, exchange: DelayedExchange) -> None:
        self.exchange = exchange
        # what DelayedExchange.route read of the message it answered with this hold for
        # (route and publish follow each other for one message, with no other between)
        self.delay = 0
        self.fields: dict[bytes, bytes] = {}

    def publish(self, msg: Any) -> int:
        return self.exchange.store.hold(msg, self.delay, self.fields)


class DelayedExchange(Exchange):
    """The plugin's ``x-delayed-message``: an exchange of its ``x-delayed-type`` (the
    ``inner`` one keeps the bindings' index) that holds back messages with a positive
    ``x-delay``."""

    type = "x-delayed-message"

    def __init__(self, name: str, durable: bool = False, auto_delete: bool = False, internal: bool = False,
                 arguments: Args | None = None) -> None:
        args = dict(arguments or {})
        self.inner = EXCHANGE_CLASSES[delayed_type(args)](name, arguments=args)
        super().__init__(name, durable, auto_delete, internal, args)
        self._held = (DelayedHold(self),)
        self.store: Any = None  # its DelayedStore, given by the vhost

    @classmethod
    def validate(cls, arguments: Args) -> None:
        EXCHANGE_CLASSES[delayed_type(arguments)].validate(arguments)

    def check_binding(self, routing_key: str, args: Args) -> None:
        self.inner.check_binding(routing_key, args)

    def _clear(self) -> None:
        self.inner._clear()

    def _add(self, dest: Any, routing_key: str, args: Args) -> None:
        self.inner._add(dest, routing_key, args)

    def route(self, routing_key: str, msg: Any) -> list[Any] | tuple[Any, ...]:
        if msg.header[P.FLAGS_HI] & P.HI_HEADERS:
            delay, fields = message_delay(msg)
            if delay:
                hold = self._held[0]
                hold.delay = delay
                hold.fields = fields  # type: ignore[assignment]
                return self._held
        return self.inner.route(routing_key, msg)

    def removed(self) -> None:
        if self.store is not None:
            self.store.close(delete=True)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def info(self) -> dict[str, Any]:
        return {"messages_delayed": self.store.count if self.store is not None else 0}


EXCHANGE_CLASSES: dict[str, type[Exchange]] = {
    "direct": DirectExchange,
    "fanout": FanoutExchange,
    "topic": TopicExchange,
    "headers": HeadersExchange,
    "x-federation-upstream": FederationUpstreamExchange,
    "x-consistent-hash": ConsistentHashExchange,
    "x-delayed-message": DelayedExchange,
}


def make_exchange(type_: str, name: str, **kw: Any) -> Exchange:
    return EXCHANGE_CLASSES[type_](name, **kw)

class DefaultExchange(Exchange):
    """The nameless direct exchange of a vhost: routing key = queue name, no bindings."""

    type = "direct"

    def __init__(self, queues: dict[str, Any]) -> None:
        super().__init__("", durable=True)
        self._queues = queues

    def _clear(self) -> None:
        pass

    def _add(self, dest: Any, routing_key: str, args: Args) -> None:
        pass

    def route(self, routing_key: str, msg: Any) -> tuple[Any, ...]:
        q = self._queues.get(routing_key)
        return (q,) if q is not None else ()
