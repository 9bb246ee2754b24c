"""Celery through Leveret: three real worker processes, the rpc:// result backend.

w1 and w2 (prefork) consume the default queue; only w2 consumes the routed queue; w3 runs
chord_app (file:// result backend: rpc:// cannot run chords).  See celery_tasks.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from interop_common import check, control, eq, run_scenarios, scenario

STATE_DIR = tempfile.mkdtemp(prefix="celery-interop-")
os.environ["CELERY_INTEROP_DIR"] = STATE_DIR
os.makedirs(os.path.join(STATE_DIR, "results"), exist_ok=True)

from celery import chord, group  # noqa: E402
from celery_tasks import PREFIX, add, app, chord_app, crash_once, flaky, square, stamp, total, where  # noqa: E402,I001

WORKERS: list[subprocess.Popen[bytes]] = []


def start_worker(node: str, queues: list[str], app_path: str = "celery_tasks",
                 pool: str = "prefork", concurrency: int = 2) -> None:
    log = open(os.path.join(STATE_DIR, f"{node}.log"), "wb")  # noqa: SIM115
    WORKERS.append(subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app_path, "worker", "-n", f"{node}@%h",
         "-Q", ",".join(queues), "--pool", pool, "-c", str(concurrency), "-l", "WARNING",
         "--without-gossip", "--without-mingle"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    ))


def stop_workers() -> None:
    for w in WORKERS:
        if w.poll() is None:
            w.terminate()
    for w in WORKERS:
        try:
            w.wait(10)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait(5)


def worker_logs() -> str:
    out = []
    for f in sorted(os.listdir(STATE_DIR)):
        if f.endswith(".log"):
            with open(os.path.join(STATE_DIR, f), errors="replace") as fh:
                out.append(f"--- {f}\n{fh.read()[-3000:]}")
    return "\n".join(out)


def ping_names(timeout: float = 1.0) -> set[str]:
    replies = app.control.ping(timeout=timeout) or []
    return {name.split("@")[0] for r in replies for name in r}


def wait_workers(names: set[str], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if names <= ping_names():
            return
        for w in WORKERS:
            if w.poll() is not None:
                raise RuntimeError(f"a worker exited with {w.returncode}")
    raise TimeoutError(f"workers {sorted(names)} did not answer ping: got {sorted(ping_names())}")


@scenario("task_result", timeout=60)
def s_task_result() -> None:
    default, routed, chords = f"{PREFIX}.default", f"{PREFIX}.routed", f"{PREFIX}.chords"
    start_worker("w1", [default])
    start_worker("w2", [default, routed])
    start_worker("w3", [chords], app_path="celery_tasks:chord_app", pool="solo")
    wait_workers({"w1", "w2", "w3"})
    eq(add.delay(2, 3).get(timeout=10), 5, "add(2, 3)")
    results = [add.delay(i, i) for i in range(30)]
    eq([r.get(timeout=10) for r in results], [2 * i for i in range(30)], "30 results")


@scenario("retry")
def s_retry() -> None:
    eq(flaky.delay(2).get(timeout=15), {"retries": 2}, "succeeded on the third attempt")


@scenario("routed_queue")
def s_routed_queue() -> None:
    hosts = {where.delay().get(timeout=10).split("@")[0] for _ in range(4)}
    eq(hosts, {"w2"}, "workers that ran the routed task")


@scenario("countdown")
def s_countdown() -> None:
    t0 = time.time()
    r1 = stamp.apply_async(countdown=1.5)
    r2 = stamp.apply_async(eta=datetime.now(UTC) + timedelta(seconds=1))
    ran1, ran2 = r1.get(timeout=10), r2.get(timeout=10)
    check(ran1 - t0 >= 1.4, f"countdown=1.5 ran after {ran1 - t0:.2f} s")
    check(ran2 - t0 >= 0.9, f"eta +1 s ran after {ran2 - t0:.2f} s")


@scenario("group_chord")
def s_group_chord() -> None:
    eq(group(add.s(i, i) for i in range(10))().get(timeout=15), [2 * i for i in range(10)],
       "group")
    r = chord(square.s(i) for i in range(6))(total.s())
    eq(r.get(timeout=30), sum(i * i for i in range(6)), "chord")
    check(square.app is chord_app and total.app is chord_app, "chord tasks on chord_app")


@scenario("inspect_control")
def s_inspect_control() -> None:
    check({"w1", "w2", "w3"} <= ping_names(2.0), "ping replies")
    insp = app.control.inspect(timeout=2.0)
    queues = insp.active_queues() or {}
    w1 = next(n for n in queues if n.startswith("w1@"))
    eq([q["name"] for q in queues[w1]], [f"{PREFIX}.default"], "w1 queues")
    check(insp.stats(), "stats")
    extra = f"{PREFIX}.extra"
    reply = app.control.add_consumer(extra, destination=[w1], reply=True, timeout=2.0)
    check(reply and "ok" in reply[0][w1], f"add_consumer reply {reply}")
    eq(where.apply_async(queue=extra).get(timeout=10), w1, "task on the added queue")
    app.control.cancel_consumer(extra, destination=[w1], reply=True, timeout=2.0)
    app.control.rate_limit("celery_tasks.add", "100/s", destination=[w1], reply=True, timeout=2.0)


@scenario("acks_late")
def s_acks_late() -> None:
    token = uuid.uuid4().hex
    eq(crash_once.delay(token).get(timeout=30), "survived", "redelivered after the worker died")
    check(os.path.exists(os.path.join(STATE_DIR, f"crash-{token}")), "first attempt ran")


@scenario("reconnect", timeout=60)
def s_reconnect() -> None:
    control("restart 1")
    # workers and this client's producer/result consumer reconnect on their own
    r = add.apply_async((20, 22), retry=True, retry_policy={
        "max_retries": 30, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 1})
    eq(r.get(timeout=30), 42, "task after the restart")
    wait_workers({"w1", "w2", "w3"}, timeout=30)


if __name__ == "__main__":
    try:
        run_scenarios()
    finally:
        stop_workers()
        if os.environ.get("INTEROP_VERBOSE") or os.environ.get("CELERY_INTEROP_LOGS"):
            print(worker_logs(), file=sys.stderr)
