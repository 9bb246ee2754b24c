"""The info items of the ``list_*`` commands (rabbitmqctl's ``<queueinfoitem>`` etc.), read
from the management API's JSON objects, and how a value is printed.

An item is a function of one API object.  Leveret has no Erlang pids: ``pid`` (channels,
connections) and ``channel_pid`` (consumers) are the object's name in the API instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Getter = Callable[[dict[str, Any]], Any]


def key(*parts: str, default: Any = "") -> Getter:
    """The value at ``a.b.c`` of an API object."""

    def get(obj: dict[str, Any]) -> Any:
        v: Any = obj
        for p in parts:
            if not isinstance(v, dict) or p not in v:
                return default
            v = v[p]
        return v

    return get


@dataclass(frozen=True)
class Items:
    """One list command's items: name -> getter, and the default columns."""

    items: dict[str, Getter]
    default: tuple[str, ...]

    def names(self) -> list[str]:
        return list(self.items)


def _plain(*names: str) -> dict[str, Getter]:
    return {n: key(n) for n in names}


QUEUES = Items(
    {
        **_plain("name", "durable", "auto_delete", "arguments", "policy", "exclusive",
                 "exclusive_consumer_tag", "messages_ready", "messages_unacknowledged", "messages"),
        "messages_ready_ram": key("messages_ram", default=0),
        "messages_unacknowledged_ram": key("messages_unacknowledged", default=0),
        **_plain("messages_ram", "messages_persistent", "message_bytes", "message_bytes_ready",
                 "message_bytes_unacknowledged"),
        "message_bytes_ram": key("message_bytes", default=0),
        "message_bytes_persistent": key("message_bytes_persistent", default=0),
        **_plain("head_message_timestamp", "consumers", "consumer_utilisation", "consumer_capacity",
                 "memory", "state", "type", "node"),
    },
    ("name", "messages"),
)

EXCHANGES = Items({**_plain("name", "type", "durable", "auto_delete", "internal", "arguments", "policy"),
                   "messages_delayed": key("messages_delayed")},  # (x-delayed-message exchanges only)
                  ("name", "type"))

BINDINGS = Items(
    {
        "source_name": key("source"),
        "source_kind": lambda b: "exchange",
        "destination_name": key("destination"),
        "destination_kind": key("destination_type"),
        "routing_key": key("routing_key"),
        "arguments": key("arguments", default={}),
    },
    ("source_name", "source_kind", "destination_name", "destination_kind", "routing_key", "arguments"),
)

CONNECTIONS = Items(
    {
        "pid": key("name"),
        **_plain("name", "port", "host", "peer_port", "peer_host", "ssl", "state", "channels", "protocol",
                 "auth_mechanism", "user", "vhost", "timeout", "frame_max", "channel_max",
                 "client_properties", "recv_oct", "recv_cnt", "send_oct", "send_cnt", "send_pend",
                 "connected_at", "type", "node"),
    },
    ("user", "peer_host", "peer_port", "state"),
)

CHANNELS = Items(
    {
        "pid": key("name"),
        "connection": key("connection_details", "name"),
        **_plain("name", "number", "user", "vhost", "transactional", "confirm", "consumer_count",
                 "messages_unacknowledged", "messages_uncommitted", "acks_uncommitted",
                 "messages_unconfirmed", "prefetch_count", "global_prefetch_count", "state"),
    },
    ("pid", "user", "consumer_count", "messages_unacknowledged"),
)

CONSUMERS = Items(
    {
        "queue_name": key("queue", "name"),
        "channel_pid": key("channel_details", "name"),
        "consumer_tag": key("consumer_tag"),
        "ack_required": key("ack_required"),
        "prefetch_count": key("prefetch_count"),
        "active": key("active"),
        "activity_status": key("activity_status"),
        "arguments": key("arguments", default={}),
        "exclusive": key("exclusive"),
    },
    ("queue_name", "channel_pid", "consumer_tag", "ack_required", "prefetch_count", "active",
     "activity_status", "arguments"),
)

VHOSTS = Items(
    {
        **_plain("name", "description", "tags", "tracing", "default_queue_type", "cluster_state"),
        **_plain("messages", "messages_ready", "messages_unacknowledged"),
    },
    ("name",),
)

USERS = Items({"user": key("name"), "tags": key("tags", default=[])}, ("user", "tags"))

PERMISSIONS = Items(_plain("user", "configure", "write", "read"), ("user", "configure", "write", "read"))

USER_PERMISSIONS = Items(_plain("vhost", "configure", "write", "read"), ("vhost", "configure", "write", "read"))

TOPIC_PERMISSIONS = Items(_plain("user", "exchange", "write", "read"), ("user", "exchange", "write", "read"))


# ---------------------------------------------------------------------- printing a value


def _term(v: Any) -> str:
    """A value inside a table as an Erlang-like term: strings quoted, lists in [...],
    objects as [{"key",value},...]."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "undefined"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, dict):
        return "[" + ",".join("{" + json.dumps(str(k), ensure_ascii=False) + "," + _term(x) + "}"
                              for k, x in v.items()) + "]"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_term(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def cell(v: Any) -> str:
    """A top-level table cell, as rabbitmqctl prints it: booleans ``true``/``false``, strings
    bare, a list of names (user tags) as ``[administrator, monitoring]``, a table
    (``arguments``, ``client_properties``) as ``[{"x-max-length",10}]`` (``[]`` when empty)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return "[" + ", ".join(v) + "]"
    return _term(v)
