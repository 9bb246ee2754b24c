"""Regression tests for bugs found in the third review (each failed before its fix;
expected behaviour checked against RabbitMQ 3.10)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import pika
from aio_pika import DeliveryMode, Message

from leveret.broker import Config
from leveret.testing import BrokerThread, broker_url, running_broker
from tests.httpapi import Api


async def test_priority_queue_recovered_messages_come_before_ones_published_after_restart(tmp_path: Path) -> None:
    # a durable priority queue recovers its messages as a paged-out tail; one published
    # after the restart (before any consumer) must not jump ahead of older messages of
    # the same or a higher priority
    data = str(tmp_path / "d")
    args = {"x-max-priority": 3}
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        async with await aio_pika.connect(broker_url(broker)) as conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.declare_queue("r3.pq", durable=True, arguments=args)
            for i in range(6):
                await ch.default_exchange.publish(
                    Message(b"old%d" % i, priority=3 if i % 2 else 0, delivery_mode=DeliveryMode.PERSISTENT), "r3.pq")
    async with running_broker(Config(port=0, data_dir=data)) as broker:
        async with await aio_pika.connect(broker_url(broker)) as conn:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue("r3.pq", durable=True, arguments=args)
            await ch.default_exchange.publish(Message(b"new-p0", priority=0), "r3.pq")
            await ch.default_exchange.publish(Message(b"new-p3", priority=3), "r3.pq")
            got = []
            while (m := await q.get(fail=False, no_ack=True)) is not None:
                got.append(m.body)
    assert got == [b"old1", b"old3", b"old5", b"new-p3", b"old0", b"old2", b"old4", b"new-p0"]


def test_ctl_unreadable_cacert_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    # --cacert naming a missing or non-PEM file: rabbitmqctl's "input missing" (66) with
    # a message, not a Python traceback (exit 1)
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello\n")
    for cafile in (str(tmp_path / "missing.pem"), str(bad)):
        r = subprocess.run([sys.executable, "-m", "leveret.ctl", "--scheme", "https", "--port", "1", "--cacert", cafile,
                            "list_vhosts"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 66, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and cafile in r.stderr


def _api(port: int, user: str, password: str) -> Any:
    return Api("127.0.0.1", port, user, password).call


def test_management_user_sees_only_its_vhosts_message_stats_and_no_node_details() -> None:
    # RabbitMQ: a user without the monitoring tag gets the overview of its own vhosts
    # (message_stats included: no counts of other vhosts' traffic) and no node, listeners
    # or contexts; /api/nodes is for monitoring users
    cfg = Config(port=0, host="127.0.0.1", http_port=0, users={"guest": "guest"}, vhosts=["/", "r3.other"])
    with BrokerThread(cfg) as b:
        assert b.broker is not None
        port = b.broker.http_port
        admin = _api(port, "guest", "guest")
        assert admin("PUT", "/users/r3-mgmt", {"password": "pw", "tags": "management"})[0] == 201
        assert admin("PUT", "/permissions/r3.other/r3-mgmt", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
        conn = pika.BlockingConnection(pika.URLParameters(b.url))  # vhost /, not the user's
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("r3.q")
        for _ in range(5):
            ch.basic_publish("", "r3.q", b"x")
        ch.basic_publish("", "r3.nowhere", b"x")  # dropped unroutable
        conn.close()
        ov = admin("GET", "/overview")[1]
        assert ov["message_stats"]["publish"] == 6 and ov["message_stats"]["confirm"] == 6
        assert ov["node"] and ov["listeners"]
        mgmt = _api(port, "r3-mgmt", "pw")
        status, ov = mgmt("GET", "/overview")
        assert status == 200
        ms = ov["message_stats"]
        assert (ms["publish"], ms["confirm"], ms["drop_unroutable"]) == (0, 0, 0), ms
        assert "listeners" not in ov and "node" not in ov
        assert ov["queue_totals"]["messages"] == 0 and ov["object_totals"]["queues"] == 0
        assert mgmt("GET", "/nodes")[0] == 401
        assert mgmt("GET", f"/nodes/{admin('GET', '/nodes')[1][0]['name']}")[0] == 401
        # a monitoring user sees the node
        assert admin("PUT", "/users/r3-mon", {"password": "pw", "tags": "monitoring"})[0] == 201
        mon = _api(port, "r3-mon", "pw")
        assert mon("GET", "/nodes")[0] == 200 and mon("GET", "/overview")[1]["message_stats"]["publish"] == 6


def _confirms_on_wire() -> tuple[Any, list[tuple[str, int, bool]]]:
    import struct
    from types import SimpleNamespace

    from leveret.broker.wire.confirms import Confirms

    frames: list[tuple[str, int, bool]] = []

    def send(frame: bytes) -> None:
        method = frame[7:11]
        tag, bits = struct.unpack_from(">QB", frame, 11)
        frames.append(("ack" if method == b"\x00\x3c\x00\x50" else "nack", tag, bool(bits & 1)))

    conn = SimpleNamespace(send=send, want_confirm_flush=lambda ch: None)
    channel = SimpleNamespace(conn=conn, number=1, vhost=SimpleNamespace(stats_confirm=0))
    return Confirms(channel), frames  # type: ignore[arg-type]


def test_confirms_never_ack_a_publish_already_nacked_after_a_failed_fsync() -> None:
    # 1 waits for its fsync, 2 is refused (nacked at once), then the fsync of 1 fails:
    # 1 is nacked; 2 must not be acked as well (each publish settled exactly once)
    from leveret.broker.core.queue import PERSISTED, REFUSED

    c, frames = _confirms_on_wire()
    c.publish_seq = 1
    assert c.published(PERSISTED)
    c.publish_seq = 2
    c.published(REFUSED)
    c.sync_started()
    c.synced(False)
    c.flush()
    settled: dict[int, list[str]] = {}
    last = 0
    for kind, tag, multiple in frames:
        for t in range(last + 1 if multiple else tag, tag + 1):
            settled.setdefault(t, []).append(kind)
        last = max(last, tag)
    assert settled == {1: ["nack"], 2: ["nack"]}, frames
    assert c.channel.vhost.stats_confirm == 0


async def test_node_published_total_is_summed_from_exchanges_and_never_goes_down() -> None:
    """The node's published counter is the exchanges' publish_in summed (counted once per
    publish); deleting an exchange or a whole vhost keeps what was counted."""
    from leveret.testing import AsyncBroker

    async with AsyncBroker(Config(port=0, vhosts=["/", "gone"])) as b:
        broker = b.broker
        async with await aio_pika.connect(b.url_for("gone")) as conn:
            ch = await conn.channel()
            x = await ch.declare_exchange("r3.x", aio_pika.ExchangeType.FANOUT)
            q = await ch.declare_queue("r3.q")
            await q.bind(x)
            for _ in range(3):
                await x.publish(Message(b"m"), "")
            await ch.default_exchange.publish(Message(b"m"), "r3.q")
            await q.declare()  # a round trip: all four routed
            assert broker.stats_published == 4
            await x.delete()
            assert broker.stats_published == 4
        broker.delete_vhost("gone")
        assert broker.stats_published == 4
