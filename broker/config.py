"""Broker settings (CLI flags and the config file map onto these; see ``configfile.py``).

:meth:`Config.validate` is the one check of every setting's range, run by
``Config.__post_init__``: a ``Config(...)`` built in Python, ``dataclasses.replace``, the
config file's loader and the command line all go through it, and each turns its
:class:`InvalidSetting` (the field and the reason) into its own error (the loader: the file
and the key; the command line: the flag, exit 2).  The limits are RabbitMQ 3.10's (the
AMQP field widths of connection.tune, its FRAME_MIN_SIZE and max_message_size ceiling).

Ports: ``0`` always means "a free port, chosen by the system" (the same one for every
address of the listener); ``None`` means "no such listener" (the command line and the
config file spell it ``off``).  ``port`` (AMQP) cannot be off.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from leveret.protocol.constants import FRAME_MIN_SIZE

#: where the command line listens without --host: both loopbacks (IPv4 alone where there
#: is no IPv6 loopback)
DEFAULT_HOSTS = ("127.0.0.1", "::1")
DEFAULT_USERS = {"guest": "guest"}
#: the longest consumer_timeout accepted (ms): 24 days, under 2^31 as an Erlang timer's
MAX_CONSUMER_TIMEOUT = 2**31 - 1

# ---------------------------------------------------------------- limits (one constant each)
PORT_MAX = 65535
#: connection.tune's frame_max is a long: 0 (no limit) or FRAME_MIN_SIZE .. LONG_MAX
FRAME_MAX_LIMIT = 2**32 - 1
#: connection.tune's channel_max and heartbeat are shorts
CHANNEL_MAX_LIMIT = 65535
HEARTBEAT_LIMIT = 65535
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024  # RabbitMQ 3.10's default max_message_size
MAX_MESSAGE_SIZE_LIMIT = 512 * 1024 * 1024  # RabbitMQ's ?MAX_MSG_SIZE: the setting's ceiling
#: the spellings of "no such listener" for a port on the command line and in the config file
PORT_OFF_WORDS = ("off", "none")

#: the port settings and their command-line flags
PORTS = (
    ("port", "--port"),
    ("tls_port", "--tls-port"),
    ("http_port", "--http-port"),
    ("http_tls_port", "--http-tls-port"),
    ("prometheus_port", "--prometheus-port"),
    ("prometheus_tls_port", "--prometheus-tls-port"),
)
#: the socket buffer sizes accepted (tcp_sndbuf, tcp_recbuf; the kernel doubles them)
TCP_BUFFER_MIN = 1024
TCP_BUFFER_MAX = 1 << 30
#: settings that must be above 0 (0 would stop the broker working, not turn a limit off)
POSITIVE = ("handshake_timeout", "fsync_interval", "segment_size", "memory_high_watermark", "memory_budget",
            "http_max_body", "http_rate_interval")


class InvalidSetting(ValueError):
    """A setting out of its range: ``field`` (the Config field) and ``reason``."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class Config:
    host: str | list[str] = "127.0.0.1"  # one address, or several to listen on each
    port: int = 5672
    # the default users, name -> password: full permissions on every vhost, also on the
    # vhosts added later (--user; the test tooling).  The default, guest/guest, is only
    # created while no other user exists (configured, recovered or imported).
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    vhosts: list[str] = field(default_factory=lambda: ["/"])
    # users of the config file, with only the permissions given below: {"name", "tags"}
    # and either "password_hash" (RabbitMQ's, with "hashing_algorithm") or where the
    # password is read when the broker starts, "password_env" (a variable's name) or
    # "password_file" (a path); see user_password
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
    # the kernel's buffers of each AMQP connection's socket (SO_SNDBUF / SO_RCVBUF, bytes;
    # RabbitMQ's tcp_listen_options.sndbuf / recbuf); None: the kernel's autotuning
    tcp_sndbuf: int | None = None
    tcp_recbuf: int | None = None
    # RabbitMQ's consumer_timeout (ms): a delivery unacknowledged this long closes its
    # channel (406), its unacked messages requeued; checked on a timer (0: off)
    consumer_timeout: int = 1_800_000
    close_timeout: float = 3.0
    # memory alarm: block publishers while queued message bytes exceed this
    memory_high_watermark: int = 1 << 30
    # bytes of message bodies all queues together keep in RAM before the fullest page to
    # disk and get flow (core.memory; never above half the high watermark)
    memory_budget: int = 256 << 20
    # largest body accepted (RabbitMQ's max_message_size, capped at 512 MiB like RabbitMQ's)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    data_dir: str | None = None  # None: everything in memory (the CLI defaults to a dir)
    fsync_interval: float = 0.2  # seconds between fsyncs when nobody waits for one
    segment_size: int = 8 * 1024 * 1024
    # flow control engages while the broker uses (or waits for) at least this share of a core
    # (0: always, as in tests of the mechanism; above 1: never)
    flow_cpu: float = 0.6
    disk_free_limit: int = 50 * 1024 * 1024  # block publishers below this many free bytes
    # TLS (amqps): a second listener on the same hosts, off unless tls_port is given
    # (0 picks a free port; None: no amqps listener); see leveret.broker.tls
    tls_port: int | None = None
    tls_cert: str | None = None  # PEM certificate chain of the server
    tls_key: str | None = None  # PEM private key (None: it is in tls_cert)
    tls_ca: str | None = None  # PEM CA bundle that client certificates are checked against
    tls_verify_peer: bool = False  # ask clients for a certificate, check the one given
    tls_fail_if_no_peer_cert: bool = False  # with tls_verify_peer: refuse clients without one
    # the management HTTP API (RabbitMQ's /api) and the Prometheus endpoint: None = off
    # (the library and test default; the command line defaults to 15672 and 15692, and
    # spells off ``off``), 0 = a free port (``Broker.http_port`` / ``Broker.prometheus_port``
    # tell which)
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every setting's type and range; raise :class:`InvalidSetting` naming the
        first bad one.  Run by ``__post_init__`` (so by ``Config(...)`` and
        ``dataclasses.replace``); call it again after changing fields in place."""
        for name, _flag in PORTS:
            v = getattr(self, name)
            if v is None and name != "port":
                continue
            if not _is_int(v):
                raise InvalidSetting(name, f"expected a port number (0: a free port), got {v!r}")
            if not 0 <= v <= PORT_MAX:
                raise InvalidSetting(name, f"not a port number: {v} (0 to {PORT_MAX}; 0 picks a free port)")
        ints = {
            "frame_max": (0, FRAME_MAX_LIMIT),
            "channel_max": (0, CHANNEL_MAX_LIMIT),
            "heartbeat": (0, HEARTBEAT_LIMIT),
            "max_message_size": (1, MAX_MESSAGE_SIZE_LIMIT),
            "max_connections": (0, None),
            "segment_size": (1, None),
            "disk_free_limit": (0, None),
            "memory_high_watermark": (1, None),
            "memory_budget": (1, None),
            "http_max_body": (1, None),
            "consumer_timeout": (0, MAX_CONSUMER_TIMEOUT),
        }
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if not _is_int(v):
                raise InvalidSetting(name, f"expected an integer, got {v!r}")
            if v < lo or (hi is not None and v > hi):
                raise InvalidSetting(name, _range_text(name, v, lo, hi))
        for name in ("tcp_sndbuf", "tcp_recbuf"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or not TCP_BUFFER_MIN <= v <= TCP_BUFFER_MAX):
                raise InvalidSetting(name, f"expected bytes from {TCP_BUFFER_MIN} to {TCP_BUFFER_MAX}, got {v!r}")
        if 0 < self.frame_max < FRAME_MIN_SIZE:
            raise InvalidSetting(
                "frame_max", f"must be 0 (no limit) or {FRAME_MIN_SIZE} to {FRAME_MAX_LIMIT}, got {self.frame_max}"
            )
        for name in ("handshake_timeout", "close_timeout", "fsync_interval", "flow_cpu", "http_rate_interval"):
            v = getattr(self, name)
            if not _is_number(v):
                raise InvalidSetting(name, f"expected a number, got {v!r}")
            if v < 0:
                raise InvalidSetting(name, f"must not be negative, got {v}")
        for name in POSITIVE:
            if getattr(self, name) == 0:
                raise InvalidSetting(name, "must be above 0")
        for u in self.hashed_users:
            if not isinstance(u, dict) or not isinstance(u.get("name"), str):
                raise InvalidSetting("hashed_users", f"expected {{'name': ..., 'password_hash': ...}}, got {u!r}")
            if len([k for k in PASSWORD_SOURCES if k in u]) != 1:
                raise InvalidSetting("hashed_users", f"user '{u['name']}': give exactly one of {', '.join(PASSWORD_SOURCES)}")


#: where a configured user's password comes from (one of them per user)
PASSWORD_SOURCES = ("password_hash", "password_env", "password_file")


class SecretUnavailable(ValueError):
    """A user's password cannot be read: ``key`` (password_env, password_file) and ``reason``."""

    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(reason)


def user_password(user: dict[str, Any]) -> str:
    """The password of a ``hashed_users`` entry given by ``password_env`` (an environment
    variable) or ``password_file`` (a file, without its final newline).  Read by the
    config file's loader (to refuse a missing one) and when the broker starts (to hash
    it): the Config keeps where the secret is, not the secret, so that ``--print-config``
    prints it back as it came."""
    if "password_env" in user:
        var = user["password_env"]
        value = os.environ.get(var)
        if value is None:
            raise SecretUnavailable("password_env", f"the environment variable {var} is not set")
        return value
    path = user["password_file"]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretUnavailable("password_file", f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _range_text(name: str, v: int, lo: int, hi: int | None) -> str:
    if name == "frame_max":
        return f"must be 0 (no limit) or {FRAME_MIN_SIZE} to {FRAME_MAX_LIMIT}, got {v}"
    if name == "max_message_size":
        return f"must be between 1 and {MAX_MESSAGE_SIZE_LIMIT} (512 MiB, RabbitMQ's ceiling), got {v}"
    if hi is None:
        return f"must not be negative, got {v}" if lo == 0 else "must be above 0"
    return f"must be between {lo} and {hi}, got {v}"
