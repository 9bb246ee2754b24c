"""Celery apps and tasks for celery_client.py (imported by the workers it starts).

``app`` uses the rpc:// result backend (results come back over AMQP).  The rpc backend
cannot run chords (a Celery limitation, not the broker's), so ``chord_app`` is the same
broker with a file:// result backend, served by its own worker on the ``chords`` queue.
"""

from __future__ import annotations

import os
import socket
import time

from celery import Celery

BROKER = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PREFIX = os.environ.get("INTEROP_PREFIX", "interop-celery")
STATE_DIR = os.environ.get("CELERY_INTEROP_DIR", "/tmp")


def configure(app: Celery) -> None:
    app.conf.update(
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=0,
        task_default_queue=f"{PREFIX}.default",
        task_routes={"celery_tasks.where": {"queue": f"{PREFIX}.routed"}},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        event_queue_prefix=f"{PREFIX}.ev",
        control_exchange=f"{PREFIX}.pidbox",
        task_reject_on_worker_lost=True,
        broker_transport_options={"confirm_publish": True},
    )


app = Celery("interop", broker=BROKER, backend="rpc://")
configure(app)

chord_app = Celery("interop_chords", broker=BROKER, backend=f"file://{STATE_DIR}/results")
configure(chord_app)
chord_app.conf.task_default_queue = f"{PREFIX}.chords"


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=5)
def flaky(self, fail_times: int) -> dict:
    """Fail ``fail_times`` times, retrying through the broker each time."""
    if self.request.retries < fail_times:
        raise self.retry(exc=RuntimeError("not yet"), countdown=0.2)
    return {"retries": self.request.retries}


@app.task(bind=True)
def where(self) -> str:
    """Routed to its own queue: reports which worker ran it."""
    return self.request.hostname


@app.task
def stamp() -> float:
    return time.time()


@app.task(acks_late=True)
def crash_once(token: str) -> str:
    """Kill the worker process the first time (acks_late: the message is redelivered)."""
    marker = os.path.join(STATE_DIR, f"crash-{token}")
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(socket.gethostname())
        os._exit(1)
    return "survived"


@chord_app.task(name="chords.square")
def square(x: int) -> int:
    return x * x


@chord_app.task(name="chords.total")
def total(xs: list[int]) -> int:
    return sum(xs)
