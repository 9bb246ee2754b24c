"""Celery >= 5.5 on quorum queues (issue 22), unchanged, against a broker subprocess: a
worker consuming a quorum queue (Celery then uses per-consumer qos: global qos is
refused on quorum queues), ``apply_async(countdown=...)`` delivered through Celery's
native delayed delivery (the 28 ``celery_delayed_*`` quorum queues with
``x-dead-letter-strategy: at-least-once`` it declares), and a task that always asks to
be requeued, dead-lettered with reason ``delivery_limit`` past ``x-delivery-limit``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.broker import Config
from leveret.testing import SubprocessBroker, free_port
from tests.httpapi import Api

pytestmark = [pytest.mark.external, pytest.mark.slow]  # a Celery worker process

celery = pytest.importorskip("celery")

APP = """
import json, os, time
from celery import Celery
from celery.exceptions import Reject
from kombu import Exchange, Queue

app = Celery("qapp", broker="amqp://guest:guest@127.0.0.1:{port}//")
work = Exchange("work", type="topic")
app.conf.update(
    task_queues=[Queue("work", work, routing_key="work", queue_arguments={{
        "x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": "dead"}})],
    task_default_queue="work", task_default_exchange="work", task_default_exchange_type="topic",
    task_default_routing_key="work",
    broker_transport_options={{"confirm_publish": True}},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)
LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ran.jsonl")


def record(**kw):
    with open(LOG, "a") as f:
        f.write(json.dumps(dict(kw, at=time.time())) + "\\n")


@app.task(name="qapp.add", bind=True)
def add(self, x, y):
    record(task="add", result=x + y, sent=self.request.kwargs.get("sent") if self.request.kwargs else None)
    return x + y


@app.task(name="qapp.poison", bind=True, acks_late=True)
def poison(self):
    record(task="poison", redelivered=bool(self.request.delivery_info.get("redelivered")))
    raise Reject("always fails", requeue=True)
"""

PUBLISH = """
import sys, time
from qapp import add, poison
print(time.time(), flush=True)
add.apply_async((2, 3), countdown=int(sys.argv[1]))
add.delay(1, 1)
poison.delay()
"""


def _wait(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[SubprocessBroker, Api, Path]]:
    http_port = free_port()
    with SubprocessBroker(Config(port=0, host="127.0.0.1", http_port=http_port,
                                 data_dir=str(tmp_path / "data"))) as broker:
        (tmp_path / "qapp.py").write_text(APP.format(port=broker.port))
        (tmp_path / "publish.py").write_text(PUBLISH)
        yield broker, Api("127.0.0.1", http_port), tmp_path


def test_celery_worker_on_quorum_queues_with_native_delayed_delivery(
    env: tuple[SubprocessBroker, Api, Path],
) -> None:
    broker, api, path = env
    assert tuple(int(x) for x in celery.__version__.split(".")[:2]) >= (5, 5), celery.__version__
    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = c.channel()
    ch.exchange_declare("dead", "fanout", durable=True)
    ch.queue_declare("dead-letters", durable=True)
    ch.queue_bind("dead-letters", "dead")
    c.close()
    penv = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]))
    log = open(path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "qapp", "worker", "-Q", "work", "-c", "1",
                               "-P", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                              cwd=path, env=penv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        # the worker declares the delayed-delivery topology: 28 quorum queues
        def topology() -> Any:
            qs = {q["name"]: q for q in api.get("/queues/%2F")}
            return len([n for n in qs if n.startswith("celery_delayed_")]) == 28 and "work" in qs and qs
        qs = _wait("the worker's queues", topology, 60, worker)
        assert qs["work"]["type"] == "quorum"
        lvl = qs["celery_delayed_1"]
        assert lvl["type"] == "quorum"
        assert lvl["arguments"]["x-dead-letter-strategy"] == "at-least-once"
        assert lvl["arguments"]["x-overflow"] == "reject-publish"
        _wait("the worker to consume", lambda: api.get("/queues/%2F/work")["consumers"] == 1, 30, worker)

        countdown = 2
        r = subprocess.run([sys.executable, "publish.py", str(countdown)], cwd=path, env=penv,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-3000:]
        sent = float(r.stdout.split()[0])

        def ran() -> list[dict[str, Any]]:
            p = path / "ran.jsonl"
            return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

        rows = _wait("the delayed task", lambda: [x for x in ran() if x["task"] == "add" and x["result"] == 5], 30, worker)
        # it waited in the delayed-delivery queues (bit 1 of 2 s: celery_delayed_1), not in the worker
        assert rows[0]["at"] - sent >= countdown - 0.3
        assert api.get("/queues/%2F/celery_delayed_1")["message_stats"]["publish"] >= 1
        assert [x["result"] for x in ran() if x["task"] == "add"][0] == 2  # the immediate one ran first

        # the poison task: delivered 1 + x-delivery-limit (2) times, then dead-lettered
        def dead() -> Any:
            c2 = pika.BlockingConnection(pika.URLParameters(broker.url))
            try:
                got = c2.channel().basic_get("dead-letters", auto_ack=True)
                return got if got[0] is not None else None
            finally:
                c2.close()
        m, props, _body = _wait("the poison task to be dead-lettered", dead, 30, worker)
        assert props.headers["x-first-death-reason"] == "delivery_limit"
        assert props.headers["x-first-death-queue"] == "work"
        assert "x-delivery-count" not in props.headers
        runs = [x for x in ran() if x["task"] == "poison"]
        assert [x["redelivered"] for x in runs] == [False, True, True]
    except AssertionError:
        print((path / "worker.log").read_text(errors="replace")[-5000:])
        raise
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
