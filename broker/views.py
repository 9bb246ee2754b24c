"""Read-only views of the wire layer's connections and channels, for the operations surface.

The management API (``leveret.broker.http``) never imports the wire layer: it reads a
connection through the :class:`ConnectionInfo` that
:meth:`~leveret.broker.wire.connection.Connection.info` makes (and its channels through
their :class:`ChannelInfo`), a snapshot of what RabbitMQ reports of it, values as the
connection knows them: the peer and local address, TLS, the authentication mechanism
negotiated, the time of accept, the tuned limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    number: int
    consumer_count: int
    messages_unacknowledged: int
    messages_unconfirmed: int  # published in confirm mode, not confirmed yet
    messages_uncommitted: int  # publishes held by a transaction
    acks_uncommitted: int  # acks held by a transaction
    prefetch_count: int  # per consumer (basic.qos global=false)
    global_prefetch_count: int
    confirm: bool
    transactional: bool
    #: the channel itself, only to match a consumer's channel (``Consumer.channel``)
    ident: object = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    name: str  # RabbitMQ's "peer_host:peer_port -> host:port"
    user: str
    vhost: str
    blocked: bool  # connection.blocked (an alarm): RabbitMQ's state "blocked"
    peer_host: str
    peer_port: int
    host: str  # the address and port the connection arrived on
    port: int
    ssl: bool  # accepted by the amqps listener
    ssl_protocol: str | None  # RabbitMQ's names: "tlsv1.3", "tlsv1.2"; None without TLS
    ssl_key_exchange: str | None  # "ecdhe_rsa", "any" (TLS 1.3) ...
    ssl_cipher: str | None  # "aes_256_gcm", "chacha20_poly1305" ...
    ssl_hash: str | None  # "aead", "sha384" ...
    auth_mechanism: str  # as negotiated: PLAIN, AMQPLAIN or EXTERNAL
    connected_at: int  # ms since the epoch, at accept
    frame_max: int
    channel_max: int
    heartbeat: int  # seconds, as tuned (RabbitMQ's "timeout")
    client_properties: dict[str, Any]
    send_pend: int  # bytes of output not written yet
    channels: tuple[ChannelInfo, ...]
    #: close the connection (``reply_code``, ``reply_text``): the management API's DELETE
    close: Callable[[int, str], None] = field(compare=False, repr=False)
