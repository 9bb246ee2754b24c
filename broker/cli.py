"""``leveret`` command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys

from leveret.broker.config import DEFAULT_HOSTS, Config
from leveret.broker.server import VERSION, Broker
from leveret.storage import DataDirLocked

MALLOC_MMAP_THRESHOLD = 32 << 20  # allocations below this come from the heap (see tune_malloc)
MALLOC_TRIM_THRESHOLD = 64 << 20  # free bytes kept at the heap's top (see tune_malloc)


def default_data_dir() -> str:
    """$XDG_DATA_HOME/leveret, i.e. ~/.local/share/leveret by default."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "leveret")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="leveret", description="Leveret AMQP 0-9-1 broker")
    p.add_argument(
        "--host",
        action="append",
        default=None,
        help="address to listen on; give it more than once to listen on each (default: 127.0.0.1 and ::1)",
    )
    p.add_argument("--port", type=int, default=5672, help="TCP port (default 5672; 0 picks a free one)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    p.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's dynamic malloc thresholds (default: fixed ones, see leveret.broker.cli.tune_malloc)",
    )
    p.add_argument("--heartbeat", type=int, default=60, help="heartbeat interval offered to clients (s)")
    p.add_argument("--frame-max", type=int, default=131072)
    p.add_argument("--channel-max", type=int, default=2047)
    p.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD", help="add a user (default guest:guest)")
    p.add_argument("--vhost", action="append", default=[], help="extra vhosts besides '/'")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LEVERET_DATA_DIR") or default_data_dir(),
        help="where durable queues and definitions live (default: %(default)s)",
    )
    p.add_argument("--in-memory", action="store_true", help="keep nothing on disk (for tests)")
    p.add_argument("--fsync-interval", type=float, default=0.2, help="seconds between fsyncs when no publisher waits for a confirm")
    p.add_argument("--segment-size", type=int, default=8 * 1024 * 1024, help="bytes per log segment file")
    p.add_argument("--disk-free-limit", type=int, default=50 * 1024 * 1024, help="block publishers below this many free bytes")
    p.add_argument("--memory-high-watermark", type=int, default=1 << 30, help="bytes of queued messages before publishers are blocked")
    p.add_argument(
        "--flow-cpu",
        type=float,
        default=0.6,
        help="flow control slows publishers into backlogged queues while the broker uses this share "
        "of a core or more (0: always; above 1: never)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        help="seconds a client has from connecting to connection.open before it is dropped (default 10)",
    )
    p.add_argument(
        "--max-message-size",
        type=int,
        default=128 * 1024 * 1024,
        help="largest message body accepted, in bytes (default 128 MiB; at most 512 MiB, as RabbitMQ)",
    )
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> Config:
    users = {"guest": "guest"}
    for u in a.user:
        name, _, pw = u.partition(":")
        users[name] = pw
    return Config(
        host=(a.host[0] if len(a.host) == 1 else list(a.host)) if a.host else list(DEFAULT_HOSTS),
        port=a.port,
        users=users,
        vhosts=["/", *a.vhost],
        heartbeat=a.heartbeat,
        frame_max=a.frame_max,
        channel_max=a.channel_max,
        memory_high_watermark=a.memory_high_watermark,
        flow_cpu=a.flow_cpu,
        handshake_timeout=a.handshake_timeout,
        max_message_size=a.max_message_size,
        data_dir=None if a.in_memory else a.data_dir,
        fsync_interval=a.fsync_interval,
        segment_size=a.segment_size,
        disk_free_limit=a.disk_free_limit,
    )


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
    print(f"Leveret {VERSION} listening on {', '.join(broker.addresses)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("leveret").info("shutting down")
    await broker.stop()


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(a)
    if not a.no_malloc_tuning:
        tune_malloc()
    limit = raise_fd_limit()
    if limit is not None:
        logging.getLogger("leveret").info("file descriptor limit: %d (one per client connection)", limit)
    loop_factory = None
    if not a.no_uvloop:
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
        except DataDirLocked as exc:
            print(f"leveret: error: {exc}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
