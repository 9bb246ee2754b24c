"""The node-wide memory budget (leveret.broker.core.memory): queues share it, the ones
holding the most page to disk first, nothing is lost or reordered, durable messages are
unaffected; the memory breakdown over the management API and Prometheus."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from leveret.broker import Config
from leveret.broker.core.memory import MESSAGE_COST, MIN_SHARE
from leveret.testing import BrokerThread
from tests.httpapi import Api

BUDGET = 4 << 20  # two queues holding: a share of 2 MiB each


def _wait(pred: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.02)


def _paged(b: BrokerThread, name: str) -> int:
    assert b.broker is not None
    s = b.broker.vhosts["/"].queues[name].store
    return len(s.tail) - s.tail_start


def _drain(ch: Any, queue: str, n: int) -> list[bytes]:
    got = []
    for _ in range(n):
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        assert method is not None, (queue, len(got))
        got.append(body)
    assert ch.basic_get(queue, auto_ack=True)[0] is None
    return got


def test_two_queues_filling_the_bigger_one_pages_first_nothing_lost_or_reordered(tmp_path: Path) -> None:
    # big gets 10 messages for every one small gets: with a budget of 4 MiB shared by the
    # two, big passes its 2 MiB share and pages to its overflow log; small (~0.3 MiB)
    # stays in RAM.  (Before the budget, a queue paged at 20,000 messages or 64 MiB of its
    # own: neither would have paged.)
    n_big, every = 3000, 10
    body_size = 1024
    with BrokerThread(Config(port=0, data_dir=str(tmp_path), memory_budget=BUDGET)) as b:
        assert b.broker is not None
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.queue_declare("big")
        ch.queue_declare("small")
        big = [b"%06d:" % i + os.urandom(body_size) for i in range(n_big)]
        small = [b"s%06d:" % i + os.urandom(body_size) for i in range(n_big // every)]
        for i, body in enumerate(big):
            ch.basic_publish("", "big", body)
            if i % every == 0:
                ch.basic_publish("", "small", small[i // every])
            if i == 100:
                time.sleep(0.3)  # a tick of the node: both queues hold messages now
        assert ch.queue_declare("big", passive=True).method.message_count == n_big
        assert ch.queue_declare("small", passive=True).method.message_count == len(small)
        mem = b.broker.memory
        assert mem.holders == 2 and mem.share == BUDGET // 2, (mem.holders, mem.share)
        assert _paged(b, "big") > 0, "the queue holding the most did not page"
        assert _paged(b, "small") == 0
        big_store = b.broker.vhosts["/"].queues["big"].store
        # what big keeps in RAM is its share (bodies and bookkeeping), not more
        in_ram = big_store.ready_bytes + len(big_store.messages) * MESSAGE_COST
        assert BUDGET // 4 < in_ram <= BUDGET // 2, in_ram
        assert _drain(ch, "big", n_big) == big
        assert _drain(ch, "small", len(small)) == small
        conn.close()


def test_a_durable_queues_persistent_messages_are_unaffected(tmp_path: Path) -> None:
    n = 1500
    bodies = [b"%05d:" % i + os.urandom(2048) for i in range(n)]
    cfg = Config(port=0, data_dir=str(tmp_path), memory_budget=BUDGET)
    with BrokerThread(cfg) as b:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("d", durable=True)
        ch.queue_declare("t")
        for i, body in enumerate(bodies):
            ch.basic_publish("", "d", body, pika.BasicProperties(delivery_mode=2))  # confirmed (raises if nacked)
            ch.basic_publish("", "t", body)
            if i == 100:
                time.sleep(0.3)
        assert b.broker is not None and b.broker.memory.holders == 2
        assert _paged(b, "d") > 0 and _paged(b, "t") > 0  # both past their 2 MiB share
        conn.close()
    with BrokerThread(cfg) as b:  # a restart: the persistent messages are all there, in order
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        assert _drain(ch, "d", n) == bodies
        conn.close()


def test_the_share_never_goes_below_its_floor_and_the_budget_is_capped_by_the_watermark() -> None:
    with BrokerThread(Config(port=0, memory_high_watermark=10 << 20, memory_budget=1 << 30)) as b:
        assert b.broker is not None
        assert b.broker.memory.limit == 5 << 20  # half the watermark
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        for i in range(20):
            ch.queue_declare(f"q{i}")
            ch.basic_publish("", f"q{i}", b"x")
        assert _wait(lambda: b.broker.memory.holders == 20)
        assert b.broker.memory.share == MIN_SHARE and b.broker.memory.page_bytes == 1 << 20
        conn.close()


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_memory_breakdown_endpoint_and_prometheus_gauges(tmp_path: Path) -> None:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, prometheus_port=0, memory_budget=64 << 20,
                 users={"guest": "guest"})
    with BrokerThread(cfg) as b:
        assert b.broker is not None and b.broker.http_port and b.broker.prometheus_port
        api = Api("127.0.0.1", b.broker.http_port)
        node = api.get("/nodes")[0]["name"]
        empty = api.get(f"/nodes/{node}/memory")
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.queue_declare("held")
        for _ in range(1000):
            ch.basic_publish("", "held", b"x" * 4096)
        assert ch.queue_declare("held", passive=True).method.message_count == 1000
        # (the budget's figures are those of the node's last tick, every 100 ms)
        assert _wait(lambda: b.broker.memory.used == 1000 * (4096 + MESSAGE_COST))
        got = api.get(f"/nodes/{node}/memory")
        mem = got["memory"]
        for part in ("connection_readers", "connection_writers", "connection_channels", "connection_other",
                     "queue_procs", "binary", "other_proc", "allocated_unused", "code"):
            assert isinstance(mem[part], int) and mem[part] >= 0, part
        assert mem["strategy"] == "rss"
        assert mem["binary"] == 1000 * 4096 and empty["memory"]["binary"] == 0
        assert mem["queue_procs"] == 1000 * MESSAGE_COST
        assert mem["total"]["rss"] >= mem["binary"] + mem["queue_procs"]
        budget = got["budget"]
        assert budget["limit"] == 64 << 20
        assert budget["used"] == 1000 * (4096 + MESSAGE_COST) and budget["queues_holding"] == 1
        metrics = _scrape(b.broker.prometheus_port)
        assert metrics["leveret_memory_budget_bytes"] == 64 << 20
        assert metrics["leveret_memory_budget_used_bytes"] == 1000 * (4096 + MESSAGE_COST)
        assert metrics["leveret_memory_budget_queues"] == 1
        assert metrics["leveret_memory_queue_share_bytes"] == 64 << 20
        assert "leveret_memory_trimmed_bytes_total" in metrics
        assert api.call("GET", "/nodes/rabbit@nowhere/memory")[0] == 404
        ch.queue_delete("held")
        assert _wait(lambda: api.get(f"/nodes/{node}/memory")["memory"]["binary"] == 0)
        conn.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_freed_heap_is_given_back_when_the_node_is_quiet(tmp_path: Path) -> None:
    # a broker subprocess (its own RSS): 200 MB of 1 KiB messages in 20 queues, deleted;
    # the heap they held is given back within seconds (malloc_trim at a quiet moment)
    from leveret.testing import BrokerProcess

    with BrokerProcess(args=["--data-dir", str(tmp_path / "d"), "--memory-budget", str(512 << 20)]) as bp:
        assert bp.proc is not None
        pid = bp.proc.pid

        def rss_mb() -> float:
            with open(f"/proc/{pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

        idle = rss_mb()
        conn = pika.BlockingConnection(pika.URLParameters(bp.url))
        ch = conn.channel()
        body = b"y" * 1024
        for q in range(20):
            ch.queue_declare(f"m{q}")
        for i in range(100_000):
            ch.basic_publish("", f"m{i % 20}", body)
        ch.queue_declare("m0", passive=True)  # (a round trip: every publish handled)
        loaded = rss_mb()
        assert loaded > idle + 80, (idle, loaded)
        for q in range(20):
            ch.queue_delete(f"m{q}")
        conn.close()
        assert _wait(lambda: rss_mb() < idle + 50, timeout=10), (idle, loaded, rss_mb())


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_large_messages_page_by_bytes_and_are_read_back_a_few_at_a_time(tmp_path: Path) -> None:
    # a broker subprocess (its own RSS), the default budget: 2,000 x 1 MiB into a queue
    # with no consumer page to its overflow log once its byte share (64 MiB) is held, and
    # a consumer draining them gets them read back a few MiB at a time, not hundreds of
    # them at once (the peak RSS was 650 MB when 256 records were read per batch and 500
    # messages read ahead, whatever their size)
    from leveret.testing import BrokerProcess

    n, size = 2000, 1 << 20
    with BrokerProcess(args=["--data-dir", str(tmp_path / "d")]) as bp:
        assert bp.proc is not None
        pid = bp.proc.pid

        def peak_mb() -> float:
            with open(f"/proc/{pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

        conn = pika.BlockingConnection(pika.URLParameters(bp.url))
        ch = conn.channel()
        ch.queue_declare("big")
        bodies = [i.to_bytes(4, "big") + bytes([i % 251]) * (size - 4) for i in range(16)]
        for i in range(n):
            ch.basic_publish("", "big", bodies[i % 16])
        assert ch.queue_declare("big", passive=True).method.message_count == n
        published = peak_mb()
        assert published < 300, published
        assert any(name.startswith("overflow") for name in os.listdir(tmp_path / "d")), "nothing paged"
        ch.basic_qos(prefetch_count=10)
        got = 0
        for method, _props, body in ch.consume("big", inactivity_timeout=30):
            assert method is not None, got
            assert body == bodies[got % 16], got
            ch.basic_ack(method.delivery_tag)
            got += 1
            if got == n:
                break
        ch.cancel()
        drained = peak_mb()
        assert drained < 300, (published, drained)
        conn.close()
