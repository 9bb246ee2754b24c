"""Work queue with competing consumers (RabbitMQ tutorial 2, through Leveret).

A producer puts 40 tasks on a durable queue (persistent messages, publisher confirms).
Three workers consume it with prefetch=1 and manual acks, so a busy worker is not handed
more work ("fair dispatch"): the slow worker ends up doing fewer tasks.  A fourth worker
crashes (closes its connection) while holding a task: the broker redelivers that task to
another worker, flagged redelivered.  Every task is done exactly once.
"""

from __future__ import annotations

import collections
import threading
import time

import pika
from _common import broker, parser

QUEUE = "example.work_queue"
TASKS = 40


def worker(url: str, name: str, seconds_per_task: float, done: dict, lock: threading.Lock,
           stop: threading.Event, crash_after: int | None = None) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    received = 0
    for method, _props, body in ch.consume(QUEUE, inactivity_timeout=0.1):
        if stop.is_set():
            break
        if method is None:
            continue
        received += 1
        if crash_after is not None and received > crash_after:
            conn.close()  # dies holding an unacked task: the broker requeues it
            return
        time.sleep(seconds_per_task)
        with lock:
            done[body.decode()].append((name, method.redelivered))
        ch.basic_ack(method.delivery_tag)
    ch.cancel()
    conn.close()


def main() -> None:
    args = parser(__doc__).parse_args()
    with broker(args.url) as url:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.queue_declare(QUEUE, durable=True)
        ch.queue_purge(QUEUE)
        ch.confirm_delivery()
        for i in range(TASKS):
            ch.basic_publish("", QUEUE, f"task-{i}".encode(),
                             pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
        print(f"queued {TASKS} tasks")

        done: dict[str, list] = collections.defaultdict(list)
        lock, stop = threading.Lock(), threading.Event()
        specs = [("fast-1", 0.02, None), ("fast-2", 0.02, None), ("slow", 0.1, None),
                 ("crashy", 0.02, 1)]
        threads = [threading.Thread(target=worker, args=(url, n, s, done, lock, stop, c))
                   for n, s, c in specs]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(done) < TASKS and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(10)

        per_worker = collections.Counter(who for runs in done.values() for who, _ in runs)
        redelivered = [task for task, runs in done.items() if any(r for _, r in runs)]
        print("tasks per worker:", dict(per_worker))
        print("redelivered after the crash:", redelivered)
        assert len(done) == TASKS, f"only {len(done)} of {TASKS} tasks done"
        assert all(len(runs) == 1 for runs in done.values()), "a task was done twice"
        assert per_worker["slow"] < per_worker["fast-1"], "fair dispatch: slow worker did less"
        assert len(redelivered) == 1, "the crashed worker's task was redelivered once"
        ch.queue_delete(QUEUE)
        conn.close()
        print("ok")


if __name__ == "__main__":
    main()
