"""Broker settings (CLI flags map onto these)."""

from __future__ import annotations

from dataclasses import dataclass, field

#: where the command line listens without --host: both loopbacks (IPv4 alone where there
#: is no IPv6 loopback)
DEFAULT_HOSTS = ("127.0.0.1", "::1")


@dataclass
class Config:
    host: str | list[str] = "127.0.0.1"  # one address, or several to listen on each
    port: int = 5672
    users: dict[str, str] = field(default_factory=lambda: {"guest": "guest"})
    vhosts: list[str] = field(default_factory=lambda: ["/"])
    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    handshake_timeout: float = 10.0  # seconds from accept to connection.open
    close_timeout: float = 3.0
    # memory alarm: block publishers while queued message bytes exceed this
    memory_high_watermark: int = 1 << 30
    # largest body accepted (RabbitMQ's max_message_size, capped at 512 MiB like RabbitMQ's)
    max_message_size: int = 128 * 1024 * 1024
    data_dir: str | None = None  # None: everything in memory (the CLI defaults to a dir)
    fsync_interval: float = 0.2  # seconds between fsyncs when nobody waits for one
    segment_size: int = 8 * 1024 * 1024
    # flow control engages while the broker uses at least this share of a core
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
