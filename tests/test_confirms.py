"""Publisher confirms: each publish is settled (ack or nack) exactly once, and only once
its fate is known (a persistent message after its fsync), whatever comes in between."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pamqp import commands as C
from pamqp.heartbeat import Heartbeat

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.rawamqp import RawClient, method_frame, publish_frames


@pytest.fixture
def durable_thread(tmp_path: Path) -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0, data_dir=str(tmp_path / "data"), fsync_interval=5.0)) as b:
        yield b


def frames_until_quiet(c: RawClient, timeout: float = 0.3) -> list[tuple[int, object]]:
    got = []
    while True:
        try:
            ch, obj = c.read_frame(timeout)
        except TimeoutError:
            return got
        if not isinstance(obj, Heartbeat):
            got.append((ch, obj))


def test_no_confirm_sent_on_a_channel_closed_while_waiting_for_fsync(durable_thread: BrokerThread) -> None:
    with RawClient.connect(durable_thread.port) as c:
        c.handshake()
        c.open_channel(1)
        c.declare_queue(1, "dq-close", durable=True)
        c.rpc(1, C.Confirm.Select(), C.Confirm.SelectOk)
        # publish a persistent message and close the channel in the same read: the
        # fsync completes after the close
        c.send(
            publish_frames(1, "", "dq-close", b"x", delivery_mode=2)
            + method_frame(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
            + method_frame(1, C.Channel.Open())
        )
        got = frames_until_quiet(c)
        kinds = [type(o) for _, o in got]
        assert kinds == [C.Channel.CloseOk, C.Channel.OpenOk], got


def test_confirm_of_persisted_publish_not_lost_after_a_later_nack(durable_thread: BrokerThread) -> None:
    with RawClient.connect(durable_thread.port) as c:
        c.handshake()
        c.open_channel(1)
        c.declare_queue(1, "dq-pers", durable=True)
        c.declare_queue(1, "full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
        c.rpc(1, C.Confirm.Select(), C.Confirm.SelectOk)
        # seq 1 waits for fsync, seq 2 is refused (nack) in the same read
        c.send(publish_frames(1, "", "dq-pers", b"a", delivery_mode=2) + publish_frames(1, "", "full", b"b"))
        got = frames_until_quiet(c, 1.0)
        acked: set[int] = set()
        nacked: set[int] = set()
        for _, o in got:
            if isinstance(o, C.Basic.Ack):
                acked |= set(range(1, o.delivery_tag + 1)) if o.multiple else {o.delivery_tag}
            elif isinstance(o, C.Basic.Nack):
                nacked.add(o.delivery_tag)
        assert nacked == {2}, got
        assert 1 in acked, got


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

