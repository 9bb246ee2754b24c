"""``leveret`` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
from typing import Any

from leveret.broker.config import DEFAULT_HOSTS, PORT_OFF_WORDS, PORTS, Config, InvalidSetting
from leveret.broker.configfile import LOG_LEVELS, ConfigError, load_config_file, render_config
from leveret.broker.definitions import DefinitionsError, read_definitions
from leveret.broker.server import VERSION, Broker
from leveret.broker.tls import TLSConfigError
from leveret.storage import DataDirLocked

#: the command line's ports for the management API and Prometheus (RabbitMQ's); the
#: library and the test brokers open neither unless asked (Config's default, None)
CLI_HTTP_PORT = 15672
CLI_PROMETHEUS_PORT = 15692
MALLOC_MMAP_THRESHOLD = 32 << 20  # allocations below this come from the heap (see tune_malloc)
MALLOC_TRIM_THRESHOLD = 64 << 20  # free bytes kept at the heap's top (see tune_malloc)
#: the environment variables the command line reads, and the flag each stands in for
ENV_VARS = {"LEVERET_CONFIG": "--config", "LEVERET_DATA_DIR": "--data-dir"}
OFF = "off"  # a port flag's value for "no such listener" (Config: None)


def port_arg(text: str) -> int | str:
    """A port flag's value: a number (checked by Config.validate; 0: a free port), or
    ``off``/``none`` (no such listener)."""
    if text.strip().lower() in PORT_OFF_WORDS:
        return OFF
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number or 'off', got {text!r}") from None


def default_data_dir() -> str:
    """$XDG_DATA_HOME/leveret, i.e. ~/.local/share/leveret by default."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "leveret")


def make_parser() -> argparse.ArgumentParser:
    # every flag defaults to None: a flag given overrides the config file, one not given
    # leaves the file's value (or the built-in default, shown in the help).  Port flags
    # take a number (0: a free port) or ``off``.
    p = argparse.ArgumentParser(prog="leveret", description="Leveret AMQP 0-9-1 broker")
    p.add_argument("--version", action="version", version=f"leveret {VERSION}")
    p.add_argument(
        "--config",
        metavar="PATH",
        default=os.environ.get("LEVERET_CONFIG") or None,
        help="TOML config file (default: $LEVERET_CONFIG; see docs/leveret.example.toml)",
    )
    p.add_argument("--print-config", action="store_true", help="print the settings in force (secrets masked) and exit")
    p.add_argument(
        "--host",
        action="append",
        default=None,
        help="address to listen on; give it more than once to listen on each (default: 127.0.0.1 and ::1)",
    )
    p.add_argument("--port", type=port_arg, help="TCP port (default 5672; 0 picks a free one)")
    p.add_argument("--log-level", choices=list(LOG_LEVELS), help="default: info")
    p.add_argument("--no-uvloop", action="store_true", default=None, help="use the default asyncio event loop")
    p.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's dynamic malloc thresholds (default: fixed ones, see leveret.broker.cli.tune_malloc)",
    )
    p.add_argument("--heartbeat", type=int, help="heartbeat interval offered to clients (s, default 60)")
    p.add_argument("--frame-max", type=int, help="default 131072")
    p.add_argument(
        "--consumer-timeout",
        type=int,
        metavar="MS",
        help="close a channel whose delivery stays unacknowledged this long (ms, default 1800000 as RabbitMQ; 0: off)",
    )
    p.add_argument("--channel-max", type=int, help="default 2047")
    p.add_argument(
        "--user",
        action="append",
        default=None,
        metavar="NAME:PASSWORD",
        help="a default user with full permissions on every vhost (instead of guest:guest); "
        "the password is visible to other local users in the process list: prefer the config file",
    )
    p.add_argument("--vhost", action="append", default=None, help="extra vhosts besides '/'")
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"where durable queues and definitions live (default: $LEVERET_DATA_DIR or {default_data_dir()})",
    )
    p.add_argument("--in-memory", action="store_true", default=None, help="keep nothing on disk (for tests)")
    p.add_argument("--fsync-interval", type=float, help="seconds between fsyncs when no publisher waits for a confirm")
    p.add_argument("--segment-size", type=int, help="bytes per log segment file")
    p.add_argument("--disk-free-limit", type=int, help="block publishers below this many free bytes")
    p.add_argument("--memory-high-watermark", type=int, help="bytes of queued messages before publishers are blocked")
    p.add_argument(
        "--memory-budget",
        type=int,
        help="bytes of message bodies all queues together keep in RAM (default 256 MiB, at most half the "
        "high watermark); each queue's share pages to disk and brings flow",
    )
    p.add_argument(
        "--flow-cpu",
        type=float,
        help="flow control slows publishers into backlogged queues while the broker uses (or waits for) this "
        "share of a core or more (0: always; above 1: never; default 0.6)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        help="seconds a client has from connecting to connection.open before it is dropped (default 10)",
    )
    p.add_argument(
        "--tcp-sndbuf",
        type=int,
        metavar="BYTES",
        help="send buffer of each AMQP connection's socket (RabbitMQ's tcp_listen_options.sndbuf; default: the "
        "kernel's autotuning)",
    )
    p.add_argument(
        "--tcp-recbuf",
        type=int,
        metavar="BYTES",
        help="receive buffer of each AMQP connection's socket (RabbitMQ's tcp_listen_options.recbuf; default: the "
        "kernel's autotuning): smaller holds less of many publishers' data in the kernel",
    )
    p.add_argument(
        "--max-message-size",
        type=int,
        help="largest message body accepted, in bytes (default 128 MiB; at most 512 MiB, as RabbitMQ)",
    )
    p.add_argument("--max-connections", type=int, help="client connections open at once (default 0: no limit)")
    p.add_argument(
        "--http-port",
        type=port_arg,
        help="port of the management HTTP API (RabbitMQ's /api; default 15672; 0 picks a free one; off turns it off)",
    )
    p.add_argument(
        "--http-host",
        action="append",
        default=None,
        help="address of the management HTTP API; give it more than once for several (default: the AMQP hosts)",
    )
    p.add_argument(
        "--prometheus-port",
        type=port_arg,
        help="port of the Prometheus endpoint (/metrics; default 15692; 0 picks a free one; off turns it off)",
    )
    p.add_argument("--load-definitions", metavar="PATH", help="a RabbitMQ definitions JSON applied at boot")
    tls = p.add_argument_group("TLS (amqps)")
    tls.add_argument(
        "--tls-port",
        type=port_arg,
        default=None,
        help="also listen for AMQP over TLS on this port, on the same hosts (off unless given; "
        "5671 is the usual port; 0 picks a free one)",
    )
    tls.add_argument("--tls-cert", default=None, metavar="PEM", help="the server's certificate (chain)")
    tls.add_argument("--tls-key", default=None, metavar="PEM", help="its private key (default: in --tls-cert)")
    tls.add_argument("--tls-ca", default=None, metavar="PEM", help="CA certificates that client certificates are checked against")
    tls.add_argument(
        "--tls-verify-peer",
        action="store_true",
        default=None,
        help="ask clients for a certificate and refuse an untrusted one; offers the EXTERNAL mechanism",
    )
    tls.add_argument(
        "--tls-fail-if-no-peer-cert",
        action="store_true",
        default=None,
        help="with --tls-verify-peer: refuse clients that give no certificate",
    )
    https = p.add_argument_group("HTTPS (management API, Prometheus)")
    https.add_argument(
        "--http-tls-port",
        type=port_arg,
        default=None,
        help="also serve the management HTTP API over TLS on this port, on the same hosts (off unless given; "
        "15671 is RabbitMQ's; 0 picks a free one; --http-port off leaves only HTTPS)",
    )
    https.add_argument("--http-tls-cert", default=None, metavar="PEM",
                       help="its certificate (chain) (default: --tls-cert's)")
    https.add_argument("--http-tls-key", default=None, metavar="PEM",
                       help="its private key (default: in --http-tls-cert; without --http-tls-cert, --tls-key's)")
    https.add_argument(
        "--prometheus-tls-port",
        type=port_arg,
        default=None,
        help="also serve the Prometheus endpoint over TLS on this port, with the management API's certificate "
        "(off unless given; 15691 is RabbitMQ's; 0 picks a free one)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return make_parser().parse_args(argv)


#: flags that map one to one onto a Config field of the same name
_DIRECT = (
    "port",
    "http_port",
    "prometheus_port",
    "heartbeat",
    "frame_max",
    "channel_max",
    "memory_high_watermark",
    "memory_budget",
    "flow_cpu",
    "handshake_timeout",
    "tcp_sndbuf",
    "tcp_recbuf",
    "consumer_timeout",
    "max_message_size",
    "fsync_interval",
    "segment_size",
    "disk_free_limit",
    "max_connections",
    "load_definitions",
    "tls_port",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_verify_peer",
    "tls_fail_if_no_peer_cert",
    "http_tls_port",
    "http_tls_cert",
    "http_tls_key",
    "prometheus_tls_port",
)


def build_config(a: argparse.Namespace) -> tuple[Config, dict[str, Any]]:
    """Built-in defaults, then the config file, then the flags given.  Also returns the
    command-line settings (log_level, no_uvloop).  Raises ConfigError / DefinitionsError."""
    base = Config(
        host=list(DEFAULT_HOSTS),
        data_dir=os.environ.get("LEVERET_DATA_DIR") or default_data_dir(),
        http_port=CLI_HTTP_PORT,
        prometheus_port=CLI_PROMETHEUS_PORT,
    )
    extras: dict[str, Any] = {}
    cfg = base
    if a.config:
        cfg, extras = load_config_file(a.config, base)
    over: dict[str, Any] = {k: getattr(a, k) for k in _DIRECT if getattr(a, k) is not None}
    if over.get("port") == OFF:
        raise flag_error("port", "the AMQP listener cannot be off (0 picks a free port)")
    for name, _flag in PORTS:
        if over.get(name) == OFF:
            over[name] = None
    if a.host:
        over["host"] = a.host[0] if len(a.host) == 1 else list(a.host)
    if a.http_host:
        over["http_host"] = a.http_host[0] if len(a.http_host) == 1 else list(a.http_host)
    if a.data_dir is not None:
        over["data_dir"] = a.data_dir
    if a.in_memory:
        over["data_dir"] = None
    if a.vhost:
        over["vhosts"] = cfg.vhosts + [v for v in a.vhost if v not in cfg.vhosts]
    if a.user:
        logging.getLogger("leveret").warning(
            "--user: passwords on the command line are visible to other local users; "
            "prefer users in the config file (password_env, password_file or password_hash)"
        )
        users = {}
        for u in a.user:
            name, _, pw = u.partition(":")
            users[name] = pw
        over["users"] = users
    try:
        cfg = dataclasses.replace(cfg, **over)
    except InvalidSetting as exc:
        raise flag_error(exc.field, exc.reason) from None
    if cfg.tls_port is not None and not cfg.tls_cert:
        raise ConfigError("command line", "", "--tls-port needs --tls-cert (and --tls-key unless the key is in that file)")
    for name in ("http_tls_port", "prometheus_tls_port"):
        if getattr(cfg, name) is not None and not (cfg.http_tls_cert or cfg.tls_cert):
            flag = "--" + name.replace("_", "-")
            raise ConfigError("command line", "", f"{flag} ([{name.split('_')[0]}] tls_port) needs a certificate: "
                              "--http-tls-cert ([http] tls_cert) or --tls-cert ([tls] cert), and its key")
    if a.log_level is not None:
        extras["log_level"] = a.log_level
    if a.no_uvloop:
        extras["no_uvloop"] = True
    if cfg.load_definitions and a.load_definitions is not None:
        read_definitions(cfg.load_definitions)  # (checked now: refuse to start)
    return cfg, extras


def flag_error(field: str, reason: str) -> ConfigError:
    """A bad flag, argparse's way: ``argument --frame-max: <reason>`` (exit 2)."""
    return ConfigError(f"argument --{field.replace('_', '-')}", "", reason)


def raise_fd_limit() -> int | None:
    """Raise the soft limit on open file descriptors to the hard one (each client
    connection holds one); return the limit now in force (None where unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return None if soft == resource.RLIM_INFINITY else soft


def tune_malloc(mmap_threshold: int = MALLOC_MMAP_THRESHOLD, trim_threshold: int = MALLOC_TRIM_THRESHOLD) -> bool:
    """Fixed glibc malloc thresholds for a process that allocates large bodies.

    By default glibc serves a large allocation with its own mmap (fresh pages: a page
    fault per 4 KiB) until one is freed, then moves its threshold up; and it gives the top
    of the heap back to the system (``brk`` down) as soon as 2x that threshold is free
    there.  A broker passing 1 MiB bodies through hits both: each body freed at the top of
    the heap was given back only to be asked for again for the next one — a shrink, a grow
    and 256 page faults on zeroed pages per message, over half of the broker's CPU time at
    a steady 200 msg/s of 1 MiB (measured with ``perf``).  With fixed thresholds, bodies up
    to ``mmap_threshold`` come from the heap and up to ``trim_threshold`` bytes of free
    memory stay at its top for reuse.  Returns whether the settings took (glibc only;
    elsewhere this does nothing)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


async def serve(config: Config) -> None:
    broker = Broker(config)
    await broker.start()
    # The hot path allocates many short-lived, acyclic objects (frames, tuples, messages):
    # move what exists now out of the collector's way and collect less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # the one startup line (the broker's own record of it is at debug level)
    extra = ""
    for what, srv in (("HTTP API", broker.http), ("Prometheus", broker.prometheus)):
        if srv is not None:
            addrs = srv.addresses + [f"{a} (https)" for a in srv.tls_addresses]
            extra += f"; {what} on {', '.join(addrs)}"
    print(f"Leveret {VERSION} listening on {', '.join(broker.addresses)}{extra}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("leveret").info("shutting down")
    await broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=(a.log_level or "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config, extras = build_config(a)
    except (ConfigError, DefinitionsError) as exc:
        if isinstance(exc, ConfigError) and exc.path.startswith("argument --"):
            parser.print_usage(sys.stderr)
        print(f"leveret: error: {exc}", file=sys.stderr, flush=True)
        return 2
    logging.getLogger().setLevel(extras.get("log_level", "info").upper())
    if a.print_config:
        sys.stdout.write(render_config(config, extras))
        return 0
    if not a.no_malloc_tuning:
        tune_malloc()
    limit = raise_fd_limit()
    if limit is not None:
        logging.getLogger("leveret").info("file descriptor limit: %d (one per client connection)", limit)
    loop_factory = None
    if not extras.get("no_uvloop"):
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(serve(config))
        except KeyboardInterrupt:  # pragma: no cover
            pass
        except (DataDirLocked, DefinitionsError, TLSConfigError) as exc:
            print(f"leveret: error: {exc}", file=sys.stderr, flush=True)
            return 1
        except OSError as exc:  # a port in use, an address not on this machine
            print(f"leveret: error: {exc.strerror or exc}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
