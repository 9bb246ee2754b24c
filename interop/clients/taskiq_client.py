"""taskiq with taskiq-aio-pika through Leveret; the worker (receiver) runs in-process.

taskiq-aio-pika declares quorum queues by default (x-queue-type=quorum) with a dead-letter
queue, and implements delays with a delay queue: the message gets a per-message
``expiration`` and the delay queue dead-letters it into the task exchange when it expires.
Both its connections are aio-pika connect_robust ones.
"""

from __future__ import annotations

import asyncio
import time

from interop_common import check, control, run_async_scenarios, scenario
from interop_common import env as ENV
from taskiq.api import run_receiver_task
from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue

P = ENV.prefix
broker = AioPikaBroker(
    ENV.url,
    exchange=Exchange(name=f"{P}.x"),
    task_queues=[Queue(name=f"{P}.tasks")],
    dead_letter_queue=Queue(name=f"{P}.dead"),
    delay_queue=Queue(name=f"{P}.delay"),
    reconnect_interval=0.5,
)
broker.is_worker_process = True  # this process kicks tasks and also runs them

ran: dict[str, float] = {}


@broker.task
async def record(label: str) -> str:
    ran[label] = time.time()
    return label.upper()


async def wait_ran(label: str, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while label not in ran:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {label!r} did not run")
        await asyncio.sleep(0.02)
    return ran[label]


receiver: asyncio.Task | None = None


@scenario("task", timeout=30)
async def s_task() -> None:
    global receiver
    await broker.startup()
    receiver = asyncio.create_task(run_receiver_task(broker))
    for i in range(10):
        await record.kiq(f"t{i}")
    for i in range(10):
        await wait_ran(f"t{i}")


@scenario("labels_delay")
async def s_labels_delay() -> None:
    t0 = time.time()
    await record.kicker().with_labels(delay=1).kiq("delayed")
    await asyncio.sleep(0.4)
    check("delayed" not in ran, "delayed task ran early")
    at = await wait_ran("delayed", 10)
    check(at - t0 >= 0.95, f"delay=1 s ran after {at - t0:.2f} s")


@scenario("reconnect", timeout=60)
async def s_reconnect() -> None:
    await asyncio.get_running_loop().run_in_executor(None, control, "restart 1")
    for attempt in range(60):
        try:
            await record.kiq("after")
            break
        except Exception:  # noqa: BLE001 - the robust channel is still reconnecting
            if attempt == 59:
                raise
            await asyncio.sleep(0.5)
    await wait_ran("after", 30)


async def main() -> None:
    try:
        await run_async_scenarios()
    finally:
        if receiver is not None:
            receiver.cancel()
        try:
            ch = broker.write_channel
            if ch is not None and not ch.is_closed:
                for q in (f"{P}.tasks", f"{P}.dead", f"{P}.delay"):
                    await ch.queue_delete(q)
                await ch.exchange_delete(f"{P}.x")
        except Exception:  # noqa: BLE001
            pass
        await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
