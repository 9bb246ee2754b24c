"""dramatiq's RabbitmqBroker (pika underneath) through Leveret, with an in-process Worker.

Each queue Q comes with Q.DQ (delayed messages: the worker holds them until their eta,
then re-enqueues them on Q) and Q.XQ (dead letters: Q is declared with
x-dead-letter-exchange "" / x-dead-letter-routing-key Q.XQ, and a message that fails for
good is basic.nack'ed with requeue=false, so the *broker* moves it to Q.XQ).
"""

from __future__ import annotations

import threading
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker, dq_name, xq_name
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications
from interop_common import check, control, eq, run_scenarios, scenario, wait_until
from interop_common import env as ENV

QUEUE = ENV.prefix.replace("/", "-") + ".work"
URL = ENV.url + ("&" if "?" in ENV.url else "?") + "heartbeat=0"
broker = RabbitmqBroker(url=URL, middleware=[
    AgeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(),
    Retries(min_backoff=100, max_backoff=300)])
dramatiq.set_broker(broker)

lock = threading.Lock()
done: list[tuple[str, float]] = []
attempts: dict[str, int] = {}


def record(label: str) -> None:
    with lock:
        done.append((label, time.time()))


def seen(label: str) -> bool:
    with lock:
        return any(lbl == label for lbl, _ in done)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def work(label: str) -> None:
    record(label)


@dramatiq.actor(queue_name=QUEUE, max_retries=5)
def flaky(label: str, fail_times: int) -> None:
    with lock:
        attempts[label] = attempts.get(label, 0) + 1
        n = attempts[label]
    if n <= fail_times:
        raise RuntimeError(f"attempt {n} fails")
    record(label)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def doomed(label: str) -> None:
    raise RuntimeError("always fails: dead-lettered")


worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)


def counts() -> tuple[int, int, int]:
    return broker.get_queue_message_counts(QUEUE)


@scenario("task", timeout=30)
def s_task() -> None:
    broker.declare_queue(QUEUE)
    worker.start()
    for i in range(20):
        work.send(f"t{i}")
    wait_until(lambda: all(seen(f"t{i}") for i in range(20)), 10, "20 tasks")
    worker.join()  # all queues, delayed included, are empty and nothing is in flight


@scenario("retry")
def s_retry() -> None:
    flaky.send("r1", 2)
    wait_until(lambda: seen("r1"), 10, "success after 2 failures")
    eq(attempts["r1"], 3, "attempts")


@scenario("delayed")
def s_delayed() -> None:
    t0 = time.time()
    work.send_with_options(args=("d1",), delay=1000)
    time.sleep(0.3)
    check(not seen("d1"), "delayed message ran early")
    wait_until(lambda: seen("d1"), 10, "delayed message")
    ran = next(t for lbl, t in done if lbl == "d1")
    check(ran - t0 >= 0.95, f"delay=1000 ms ran after {ran - t0:.2f} s")
    check(QUEUE in broker.get_declared_queues(), "queue declared")


@scenario("dead_letter")
def s_dead_letter() -> None:
    doomed.send("x1")
    # nack(requeue=false) on QUEUE: the broker dead-letters into QUEUE.XQ
    wait_until(lambda: counts()[2] >= 1, 10, f"a message in {xq_name(QUEUE)}")
    ch = broker.channel
    method, props, body = ch.basic_get(xq_name(QUEUE), auto_ack=True)
    check(method is not None, "dead letter")
    deaths = (props.headers or {}).get("x-death")
    check(deaths and deaths[0]["queue"] == QUEUE and deaths[0]["reason"] == "rejected",
          f"x-death header {deaths}")
    eq(broker.consumer_class.__name__, "_RabbitmqConsumer", "consumer class")
    check(b"x1" in body, "dead-lettered body")


@scenario("reconnect", timeout=60)
def s_reconnect() -> None:
    control("restart 1")
    # the producer retries the publish on a new connection; the worker's consumers reconnect
    # and redeclare their queues
    for attempt in range(30):
        try:
            work.send("after")
            break
        except dramatiq.errors.ConnectionError:
            if attempt == 29:
                raise
            time.sleep(0.5)
    wait_until(lambda: seen("after"), 30, "task sent after the restart")


def cleanup() -> None:
    try:
        worker.stop(timeout=5000)
    except Exception:  # noqa: BLE001
        pass
    try:
        ch = broker.channel
        for q in (QUEUE, dq_name(QUEUE), xq_name(QUEUE)):
            ch.queue_delete(q)
    except Exception:  # noqa: BLE001
        pass
    broker.close()


if __name__ == "__main__":
    try:
        run_scenarios()
    finally:
        cleanup()
