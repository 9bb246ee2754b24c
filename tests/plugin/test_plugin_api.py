"""The plain (non-pytest) API: BrokerThread, SubprocessBroker, start time, old names."""

from __future__ import annotations

import socket
import statistics
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

from leveret.broker.config import Config
from leveret.testing import (
    AsyncBroker,
    BrokerProcess,
    BrokerThread,
    SubprocessBroker,
    broker_url,
    free_port,
    running_broker,
)

START_LIMIT = 0.2  # seconds to a listening socket, in-process


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_in_process_start_time_is_under_200_ms() -> None:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        with BrokerThread() as b:
            listening = time.perf_counter() - t0
            assert _listening(b.port)
            assert b.startup_seconds is not None and b.startup_seconds <= listening
        times.append(listening)
    assert statistics.median(times) < START_LIMIT, times


async def test_async_broker_start_time_is_under_200_ms() -> None:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        async with AsyncBroker() as b:
            times.append(time.perf_counter() - t0)
            assert b.port > 0
    assert statistics.median(times) < START_LIMIT, times


def test_broker_thread_lifecycle_and_vhosts() -> None:
    b = BrokerThread(Config(port=0, users={"app": "pw"})).start()
    try:
        assert b.url == f"amqp://app:pw@127.0.0.1:{b.port}/"
        assert b.add_vhost("a/b") == f"amqp://app:pw@127.0.0.1:{b.port}/a%2Fb"
        conn = pika.BlockingConnection(pika.URLParameters(b.url_for("a/b")))
        conn.channel().queue_declare("q")
        assert [q.name for q in b.queues("a/b")] == ["q"]
        assert b.call(lambda: sorted(b.broker.vhosts)) == ["/", "a/b"]  # raw access on the loop
        b.delete_vhost("a/b")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
            conn.process_data_events(1)
        assert b.vhosts() == ["/"]
        with b.isolated_vhost("my test[1]") as v:
            assert v.vhost.startswith("my-test-1-") and v.vhost in b.vhosts()
        assert b.vhosts() == ["/"]
    finally:
        b.stop()
    assert not _listening(b.port)
    with pytest.raises(RuntimeError):
        b.stats()


def test_broker_thread_start_error_is_raised() -> None:
    with BrokerThread() as running:
        clash = BrokerThread(Config(port=running.port))
        with pytest.raises(OSError):
            clash.start()


def test_subprocess_broker() -> None:
    with SubprocessBroker() as b:
        assert b.startup_seconds is not None
        assert b.pid is not None and _listening(b.port)
        with b.isolated_vhost("sub") as v:
            conn = pika.BlockingConnection(pika.URLParameters(v.url))
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare("q", durable=True)
            ch.basic_publish("", "q", b"survives a soft restart")
            port = b.port

            b.restart()  # same process, state kept

            with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
                conn.process_data_events(1)
            assert b.port == port
            assert [m.body for m in v.peek("q")] == [b"survives a soft restart"]
            with pytest.raises(KeyError, match="no queue 'nope'"):
                v.peek("nope")  # errors cross the process boundary
            rule = v.drop_deliveries(queue="q")
            assert v.faults() == [rule]
            assert v.clear_faults() == 1

        old_pid = b.pid
        b.restart(hard=True)  # a new process on the same port; in-memory state is gone
        assert b.pid != old_pid and b.port == port and _listening(port)
        assert b.vhosts() == ["/"]

        b.kill()
        assert not _listening(port)
        with pytest.raises(RuntimeError, match="not running"):
            b.stats()


def test_subprocess_broker_exits_when_its_parent_goes_away() -> None:
    b = SubprocessBroker().start()
    assert b.proc is not None and b.proc.stdin is not None
    b.proc.stdin.close()  # what happens when the test process dies
    assert b.proc.wait(5) == 0
    b.stop()


async def test_existing_helpers_still_work() -> None:
    async with running_broker() as broker:
        assert broker_url(broker).endswith(f":{broker.port}/%2F")
    port = free_port()
    assert isinstance(port, int)
    assert BrokerProcess(port).url == f"amqp://guest:guest@127.0.0.1:{port}/"


def test_subprocess_broker_with_durable_storage_survives_a_hard_restart(tmp_path: Path) -> None:
    with SubprocessBroker(Config(port=0, data_dir=str(tmp_path))) as b:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("orders", durable=True)
        ch.basic_publish("", "orders", b"kept", pika.BasicProperties(delivery_mode=2))
        ch.basic_publish("", "orders", b"lost", pika.BasicProperties(delivery_mode=1))
        conn.close()

        b.restart(hard=True)  # a new process: only durable state comes back

        assert [q.name for q in b.queues()] == ["orders"]
        assert [m.body for m in b.peek("orders")] == [b"kept"]
