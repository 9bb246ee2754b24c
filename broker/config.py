"""Broker settings (CLI flags and the config file map onto these; see ``configfile.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: where the command line listens without --host: both loopbacks (IPv4 alone where there
#: is no IPv6 loopback)
DEFAULT_HOSTS = ("127.0.0.1", "::1")
DEFAULT_USERS = {"guest": "guest"}
#: the longest consumer_timeout accepted (ms): 24 days, under 2^31 as an Erlang timer's
MAX_CONSUMER_TIMEOUT = 2**31 - 1


@dataclass
class Config:
    host: str | list[str] = "127.0.0.1"  # one address, or several to listen on each
    port: int = 5672
    # the default users, name -> password: full permissions on every vhost, also on the
    # vhosts added later (--user; the test tooling).  The default, guest/guest, is only
    # created while no other user exists (configured, recovered or imported).
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    vhosts: list[str] = field(default_factory=lambda: ["/"])
    # users by RabbitMQ password hash (config file): {"name", "password_hash",
    # "hashing_algorithm", "tags"}, with only the permissions given below
    hashed_users: list[dict[str, Any]] = field(default_factory=list)
    # {"user", "vhost", "configure", "write", "read"} (regular expressions)
    permissions: list[dict[str, str]] = field(default_factory=list)
    # {"user", "vhost", "exchange", "write", "read"}
    topic_permissions: list[dict[str, str]] = field(default_factory=list)
    # vhost -> {"max-connections": n, "max-queues": n}
    vhost_limits: dict[str, dict[str, int]] = field(default_factory=dict)
    loopback_users: list[str] = field(default_factory=lambda: ["guest"])  # may log in over loopback only
    max_connections: int = 0  # client connections open at once (0: no limit)
    load_definitions: str | None = None  # RabbitMQ definitions JSON applied at boot
    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    handshake_timeout: float = 10.0  # seconds from accept to connection.open
    # RabbitMQ's consumer_timeout (ms): a delivery unacknowledged this long closes its
    # channel (406), its unacked messages requeued; checked on a timer (0: off)
    consumer_timeout: int = 1_800_000
    close_timeout: float = 3.0
    # memory alarm: block publishers while queued message bytes exceed this
    memory_high_watermark: int = 1 << 30
    # largest body accepted (RabbitMQ's max_message_size, capped at 512 MiB like RabbitMQ's)
    max_message_size: int = 128 * 1024 * 1024
    data_dir: str | None = None  # None: everything in memory (the CLI defaults to a dir)
    fsync_interval: float = 0.2  # seconds between fsyncs when nobody waits for one
    segment_size: int = 8 * 1024 * 1024
    # flow control engages while the broker uses (or waits for) at least this share of a core
    # (0: always, as in tests of the mechanism; above 1: never)
    flow_cpu: float = 0.6
    disk_free_limit: int = 50 * 1024 * 1024  # block publishers below this many free bytes
    # TLS (amqps): a second listener on the same hosts, off unless tls_port is given
    # (0 picks a free port); see leveret.broker.tls
    tls_port: int | None = None
    tls_cert: str | None = None  # PEM certificate chain of the server
    tls_key: str | None = None  # PEM private key (None: it is in tls_cert)
    tls_ca: str | None = None  # PEM CA bundle that client certificates are checked against
    tls_verify_peer: bool = False  # ask clients for a certificate, check the one given
    tls_fail_if_no_peer_cert: bool = False  # with tls_verify_peer: refuse clients without one
    # the management HTTP API (RabbitMQ's /api) and the Prometheus endpoint: None = off
    # (the library and test default; the command line defaults to 15672 and 15692), 0 = a
    # free port (``Broker.http_port`` / ``Broker.prometheus_port`` tell which)
    http_port: int | None = None
    http_host: str | list[str] | None = None  # None: the AMQP host(s)
    http_max_body: int = 20 * 1024 * 1024  # larger request bodies get 413
    http_rate_interval: float = 5.0  # seconds between samples of the message rates (RabbitMQ's 5 s)
    # HTTPS for the management API (RabbitMQ's management.ssl.*): a listener beside the
    # plain one (http_port; off unless given, 0 picks a free port), on the same hosts; the
    # certificate and key default to the amqps listener's (tls_cert, tls_key); clients are
    # not asked for a certificate.  See leveret.broker.tls.http_context
    http_tls_port: int | None = None
    http_tls_cert: str | None = None
    http_tls_key: str | None = None  # None: in http_tls_cert (or tls_key, with tls_cert)
    prometheus_port: int | None = None
    prometheus_host: str | list[str] | None = None  # None: the AMQP host(s)
    # the Prometheus endpoint over HTTPS (prometheus.ssl.port), with the certificate of the
    # management API's HTTPS listener
    prometheus_tls_port: int | None = None
