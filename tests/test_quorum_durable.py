"""A quorum queue under kill -9 (issue 22): a publisher with confirms sends transient
messages (a quorum queue persists every message), the broker is killed, restarted:
every confirmed message is there, once, in order, and the delivery counts of returned
messages are kept."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

from tests.helpers import confirmed_publisher, start_durable

pytestmark = pytest.mark.slow  # kill -9 and restarts

Q = {"x-queue-type": "quorum"}





@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_keeps_every_confirmed_message_and_the_delivery_counts(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    data_dir = str(tmp_path / "data")
    b = start_durable(data_dir)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.queue_declare("qcrash", durable=True, arguments=Q)
        ch.queue_declare("qcounted", durable=True, arguments=Q)
        ch.confirm_delivery()
        for i in range(10):
            ch.basic_publish("", "qcounted", b"c%d" % i)  # transient, confirmed
        # c0..c2 returned three times, c3 once: each return goes behind the others
        for rounds, names in ((3, [b"c0", b"c1", b"c2"]), (1, [b"c3"])):
            for _ in range(rounds):
                for name in names:
                    while True:
                        m, _p, body = ch.basic_get("qcounted")
                        if body == name:
                            ch.basic_nack(m.delivery_tag, requeue=True)
                            break
                        ch.basic_nack(m.delivery_tag, requeue=True)
        expect = {}
        for _ in range(10):  # read them all once (and return them: +1 each) to know the counts
            m, p, body = ch.basic_get("qcounted")
            expect[body] = p.headers["x-delivery-count"] + 1
        conn.close()  # the 10 unacked return: each counts one more
        # one delivered and unacknowledged when the broker is killed: its consumer is gone
        # with it, which counts as a return
        holder = pika.BlockingConnection(pika.URLParameters(b.url))
        m, p, held = holder.channel().basic_get("qcounted")
        assert p.headers["x-delivery-count"] == expect[held]
        expect[held] += 1
        time.sleep(0.2)  # (its "delivered" mark reaches the file)
        script = tmp_path / "pub.py"
        script.write_text(confirmed_publisher('qcrash', 1))
        pub = subprocess.Popen([sys.executable, str(script), b.url, "100000"], stdout=subprocess.PIPE, text=True)
        assert pub.stdout is not None
        first = pub.stdout.readline()  # publishing has started and confirms flow
        time.sleep(rnd.uniform(0.2, 0.8))
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait(5)
        out, _ = pub.communicate(timeout=30)
        confirmed = [int(x) for x in (first + out).split()]
        assert confirmed, "the publisher got no confirm before the kill"
        b = start_durable(data_dir, b.port)
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        bodies = []
        while (g := ch.basic_get("qcrash", auto_ack=True))[0] is not None:
            bodies.append(int(g[2]))
        assert len(bodies) == len(set(bodies))
        assert bodies == sorted(bodies)
        missing = set(confirmed) - set(bodies)
        assert not missing, f"{len(missing)} confirmed messages lost"
        counts = {}
        for _ in range(10):  # all of them delivered, none acked ...
            m, p, body = ch.basic_get("qcounted")
            assert m.redelivered
            counts[body] = p.headers["x-delivery-count"]
        assert counts == expect
        assert counts[b"c0"] >= 4 and min(counts.values()) >= 2  # (returned before the kill)
        time.sleep(0.2)
        b.kill()  # ... and the broker killed again: each counts one more, the held one only once
        b = start_durable(data_dir, b.port)
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        counts = {}
        while (g := ch.basic_get("qcounted", auto_ack=True))[0] is not None:
            assert g[0].redelivered
            counts[g[2]] = g[1].headers["x-delivery-count"]
        assert counts == {k: v + 1 for k, v in expect.items()}
        conn.close()
    finally:
        b.stop()
