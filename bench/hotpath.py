"""The broker's hot path in one process, without sockets: CPU per message, steady.

Two :class:`~leveret.broker.wire.connection.Connection` objects, a publisher and a
consumer, are fed pre-encoded client bytes through ``data_received`` (reads of
``--batch`` publishes each, as a loaded socket delivers them) and write into a transport
that only counts bytes.  After each publisher read the consumer acks what it was sent (one
basic.ack per delivery, in one read), like a manual-ack consumer with prefetch.  What is
timed is the broker's own Python code: frame parsing, publish assembly, routing, enqueue,
delivery, output batching, acks.  No kernel, no client, no other process: the figure moves
only with the code (and the machine's clock), so a change of a few percent shows.

    python bench/hotpath.py [--messages 200000] [--size 1024] [--autoack] [--repeat 5]
    python bench/hotpath.py --profile          # cProfile of one run, top functions

Under ``valgrind --tool=callgrind`` it gives instructions per message (``--count``:
one run, no timing loop).  This is a benchmark, not a test: the broker's behaviour is
tested over real sockets in tests/.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if "PYTHONPATH" not in __import__("os").environ:  # (PYTHONPATH=TREE: time another source tree)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pamqp import commands as C  # noqa: E402
from pamqp import frame as pframe  # noqa: E402
from pamqp import header as pheader  # noqa: E402
from pamqp.body import ContentBody  # noqa: E402

from leveret.broker.config import Config  # noqa: E402
from leveret.broker.server import Broker  # noqa: E402
from leveret.broker.wire.connection import Connection  # noqa: E402


class CountingTransport:
    """Takes the broker's writes and counts their bytes."""

    def __init__(self) -> None:
        self.nbytes = 0

    def write(self, data: Any) -> None:
        self.nbytes += len(data)

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.nbytes += len(p)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def marshal(method: Any, channel: int = 0) -> bytes:
    return pframe.marshal(method, channel)


async def open_connection(broker: Broker) -> tuple[Connection, CountingTransport]:
    conn = Connection(broker)
    t = CountingTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    conn.data_received(b"AMQP\x00\x00\x09\x01")
    conn.data_received(
        marshal(C.Connection.StartOk(client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"))
    )
    await asyncio.sleep(0)
    conn.data_received(marshal(C.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=0)))
    conn.data_received(marshal(C.Connection.Open(virtual_host="/")))
    conn.data_received(marshal(C.Channel.Open(), 1))
    await asyncio.sleep(0)
    return conn, t


async def run(args: argparse.Namespace) -> float:
    fields = Config.__dataclass_fields__
    extra: dict[str, Any] = {k: None for k in ("http_port", "prometheus_port") if k in fields}
    if args.data_dir:
        extra["data_dir"] = args.data_dir
    broker = Broker(Config(port=0, host="127.0.0.1", **extra))
    await broker.start()
    # as ``leveret.broker.cli.serve`` does after start
    gc.collect()
    gc.freeze()
    gc.set_threshold(*(args.gc or (50_000, 20, 20)))
    try:
        pub, _ = await open_connection(broker)
        con, ct = await open_connection(broker)
        con.data_received(marshal(C.Queue.Declare(queue="hot"), 1))
        body = b"x" * args.size
        one = (
            marshal(C.Basic.Publish(exchange="", routing_key="hot"), 1)
            + pframe.marshal(pheader.ContentHeader(0, len(body), C.Basic.Properties()), 1)
            + pframe.marshal(ContentBody(body), 1)
        )
        read = one * args.batch
        for _ in range(args.backlog // args.batch):
            pub.data_received(read)  # a backlog before the consumer starts (flow, dispatch)
        con.data_received(marshal(C.Basic.Qos(prefetch_count=args.prefetch), 1))
        con.data_received(marshal(C.Basic.Consume(queue="hot", consumer_tag="c", no_ack=args.autoack), 1))
        await asyncio.sleep(0)
        ack = struct.Struct(">BHIHHQBB")
        channel = con.channels[1]
        acked = 0
        rounds = args.messages // args.batch
        if args.profile_to:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        count = args.count and os.environ.get("HOTPATH_CALLGRIND")
        if count:  # (under bench/hotpath_instr.sh: count only the loop below)
            subprocess.run(["callgrind_control", "-z", str(os.getpid())], check=True, capture_output=True)
        t0 = time.perf_counter()
        for _ in range(rounds):
            if not args.drain:
                pub.data_received(read)
            if not args.autoack:
                # the consumer keeps the publisher's pace: it acks as many as were published
                last = min(channel.unacked.delivery_tag, acked + args.batch)
                if last > acked:
                    con.data_received(
                        b"".join(ack.pack(1, 1, 13, 60, 80, tag, 0, 0xCE) for tag in range(acked + 1, last + 1))
                    )
                    acked = last
            if broker.dirty:
                broker.flush_all()
        elapsed = time.perf_counter() - t0
        if args.profile_to:
            prof.disable()
            prof.dump_stats(args.profile_to)
        if count:
            subprocess.run(["callgrind_control", "-d", str(os.getpid())], check=True, capture_output=True)
        n = rounds * args.batch
        q = broker.vhosts["/"].queues["hot"]
        if args.drain:
            if q.store.total() > args.backlog - n or ct.nbytes < n * args.size:
                raise SystemExit(f"the drain fell behind: {q.store.total()} ready, {ct.nbytes} bytes out")
        elif q.store.total() > args.backlog + args.prefetch + args.batch or ct.nbytes < n * args.size:
            raise SystemExit(f"the consumer fell behind: {q.store.total()} ready, {ct.nbytes} bytes out")
        return elapsed / n * 1e6
    finally:
        await broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=50, help="publishes per read")
    ap.add_argument("--prefetch", type=int, default=100)
    ap.add_argument("--autoack", action="store_true")
    ap.add_argument("--backlog", type=int, default=0, help="messages queued before the consumer starts")
    ap.add_argument("--drain", action="store_true", help="no publishes while timing: the consumer drains the backlog")
    ap.add_argument("--data-dir", help="a data directory (a queue past PAGE_MAX pages to its overflow log)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--count", action="store_true", help="one run, for callgrind")
    ap.add_argument("--gc", type=lambda v: tuple(int(x) for x in v.split(",")), help="gc thresholds (a,b,c)")
    ap.add_argument("--profile-to", help="cProfile the timed loop of one run into this file")
    args = ap.parse_args()
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run(args))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    if args.count or args.profile_to:
        asyncio.run(run(args))
        return
    runs = [asyncio.run(run(args)) for _ in range(args.repeat)]
    mode = "autoack" if args.autoack else f"manual ack, prefetch {args.prefetch}"
    import leveret.broker

    print(
        f"{Path(leveret.broker.__file__).parent.parent}: "
        f"{args.size} B, {mode}, {args.batch} {'acks' if args.drain else 'publishes'} per read, "
        f"backlog {args.backlog}{' drained' if args.drain else ''}: "
        f"{statistics.median(runs):.3f} µs/msg median of {len(runs)} "
        f"(min {min(runs):.3f}, max {max(runs):.3f})"
    )


if __name__ == "__main__":
    main()
