"""Flower (PyPI ``flower``), unchanged, against Leveret: a Celery app on Leveret, its
queues and message counts on Flower's ``/broker`` page and in its JSON API (read from
Leveret's management API), and a task run by a Celery worker seen through Flower's
events (``celeryev``).

Everything runs as subprocesses: the broker (``SubprocessBroker`` with an HTTP port),
a publisher, a Celery worker (``-E``) and Flower; the worker and Flower are stopped in
teardown (SIGTERM, then SIGKILL after a timeout).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from leveret.broker import Config
from leveret.testing import SubprocessBroker, free_port
from tests.polling import wait_until

pytest.importorskip("flower")
pytest.importorskip("celery")

FLOWER_AUTH = ("flo", "wer")

# Celery worker processes and Flower
pytestmark = [pytest.mark.external, pytest.mark.slow]
APP = """
from celery import Celery
from kombu import Queue

app = Celery("fapp", broker="amqp://guest:guest@127.0.0.1:{port}//")
app.conf.update(
    task_default_queue="default",
    task_queues=[Queue("default"), Queue("images")],
    task_routes={{"fapp.resize": {{"queue": "images"}}}},
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="fapp.add")
def add(x, y):
    return x + y


@app.task(name="fapp.resize")
def resize(n):
    return n
"""
PUBLISH = """
import sys
from fapp import add, resize
for i in range(int(sys.argv[1])):
    add.delay(i, 1)
for i in range(int(sys.argv[2])):
    resize.delay(i)
"""


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# what a check of Flower's HTTP answers may raise while Flower is not ready yet
NOT_READY = (OSError, urllib.error.URLError, ValueError)


def _while_running(proc: subprocess.Popen[bytes], check: Callable[[], Any]) -> Callable[[], Any]:
    """``check``, failing at once once ``proc`` has exited (no point waiting then)."""

    def checked() -> Any:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}")
        return check()

    return checked


class Env:
    def __init__(self, broker: SubprocessBroker, http_port: int, path: Path) -> None:
        self.broker, self.http_port, self.path = broker, http_port, path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.flower_port = 0
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]))
        self.env.pop("FLOWER_UNAUTHENTICATED_API", None)

    def run(self, *args: str, timeout: float = 60.0) -> None:
        r = subprocess.run([sys.executable, *args], cwd=self.path, env=self.env, capture_output=True, timeout=timeout)
        assert r.returncode == 0, r.stderr.decode()[-3000:]

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        try:
            p = subprocess.Popen([sys.executable, *args], cwd=self.path, env=self.env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.path / f"{name}.log").read_text(errors="replace")[-5000:]

    def start_flower(self) -> subprocess.Popen[bytes]:
        self.flower_port = free_port()
        p = self.spawn(
            "flower", "-m", "celery", "-A", "fapp", "flower",
            f"--port={self.flower_port}", "--address=127.0.0.1",
            f"--broker_api=http://guest:guest@127.0.0.1:{self.http_port}/api/",
            f"--basic_auth={FLOWER_AUTH[0]}:{FLOWER_AUTH[1]}",
            "--inspect_timeout=2000",
        )
        wait_until(_while_running(p, lambda: self.flower("/healthcheck") == "OK"), 30, what="Flower to answer",
                   interval=0.2, ignore=NOT_READY)
        return p

    def flower(self, path: str) -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.flower_port}{path}")
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(FLOWER_AUTH).encode()).decode())
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def flower_json(self, path: str) -> Any:
        return json.loads(self.flower(path))

    def stop(self) -> None:
        for p in reversed(self.procs):
            _stop(p)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    http_port = free_port()
    with SubprocessBroker(Config(port=0, host="127.0.0.1", http_port=http_port)) as broker:
        (tmp_path / "fapp.py").write_text(APP.format(port=broker.port))
        (tmp_path / "publish.py").write_text(PUBLISH)
        e = Env(broker, http_port, tmp_path)
        try:
            yield e
        finally:
            e.stop()


def broker_rows(page: str) -> dict[str, list[str]]:
    """The queue table of Flower's /broker page: name -> [messages, unacked, ready, consumers, idle since]."""
    rows = {}
    for tr in re.findall(r"<tr id=[^>]*>(.*?)</tr>", page, re.S):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        rows[cells[0]] = cells[1:]
    return rows


def test_flower_shows_every_celery_queue_and_its_counts(env: Env) -> None:
    env.run("publish.py", "3", "5")
    flower = env.start_flower()

    # the Broker page: each Celery queue, its messages, unacked, ready and consumers
    rows = wait_until(_while_running(flower, lambda: (r := broker_rows(env.flower("/broker"))) and set(r) >= {"default", "images"} and r),
                      30, what="the queues on Flower's /broker page", interval=0.2, ignore=NOT_READY)
    assert rows["default"][:4] == ["3", "0", "3", "0"], rows
    assert rows["images"][:4] == ["5", "0", "5", "0"], rows
    assert rows["default"][4] and rows["default"][4] != "None"  # idle since

    # the JSON API says the same
    active = {q["name"]: q for q in env.flower_json("/api/queues/length")["active_queues"]}
    assert set(active) == {"default", "images"}
    assert (active["default"]["messages"], active["default"]["messages_ready"]) == (3, 3)
    assert (active["images"]["messages"], active["images"]["messages_ready"]) == (5, 5)
    assert active["images"]["messages_unacknowledged"] == 0 and active["images"]["consumers"] == 0


def test_flower_sees_a_worker_run_tasks(env: Env) -> None:
    env.run("publish.py", "3", "0")
    flower = env.start_flower()
    worker = env.spawn("worker", "-m", "celery", "-A", "fapp", "worker", "-E", "-Q", "default", "-c", "1",
                       "-P", "solo", "-n", "w1@%h", "--without-gossip", "--without-mingle", "-l", "info")

    def tasks_done() -> dict[str, Any]:
        tasks = env.flower_json("/api/tasks")
        done = {k: t for k, t in tasks.items() if t.get("state") == "SUCCESS"}
        return tasks if len(done) == 3 else {}

    try:
        tasks = wait_until(_while_running(worker, tasks_done), 60, interval=0.2, ignore=NOT_READY,
                           what="Flower to see the 3 tasks succeed (task events over celeryev)")
    except AssertionError:
        raise AssertionError(f"{env.log('worker')}\n---- flower\n{env.log('flower')}") from None
    assert sorted(t["result"] for t in tasks.values()) == ["1", "2", "3"]
    assert {t["name"] for t in tasks.values()} == {"fapp.add"}
    assert all(t["worker"] == next(iter(tasks.values()))["worker"] for t in tasks.values())

    # the worker is known to Flower (its events, and its replies to inspect broadcasts)
    workers = wait_until(_while_running(flower, lambda: {k: w for k, w in env.flower_json("/api/workers?refresh=1").items()
                                                         if w.get("active_queues")}),
                         30, what="the worker in Flower's /api/workers", interval=0.2, ignore=NOT_READY)
    (name, info), = workers.items()
    assert name.startswith("w1@")
    assert [q["name"] for q in info["active_queues"]] == ["default"]

    # and the Broker page now lists the worker's queue: empty, one consumer
    def worker_queue() -> dict[str, list[str]]:
        r = broker_rows(env.flower("/broker"))
        return r if r.get("default", [])[:4] == ["0", "0", "0", "1"] else {}

    rows = wait_until(worker_queue, 30, what="the worker's queue on /broker, drained, with its consumer", interval=0.2,
                      ignore=NOT_READY)
    assert set(rows) == {"default"}
