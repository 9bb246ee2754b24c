"""Celery: Celery's own pytest fixtures (celery_app, celery_worker) on a Leveret broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import shared_task

from leveret.testing import BrokerHandle

pytest_plugins = ("celery.contrib.pytest",)

# ---- the code under test ---------------------------------------------------------------


@shared_task(name="shop.add_to_cart")
def add_to_cart(cart_id: int, sku: str, quantity: int = 1) -> dict:
    return {"cart": cart_id, "sku": sku, "quantity": quantity}


# ---- configuration: point Celery at the session's Leveret broker -----------------------


@pytest.fixture(scope="session")
def celery_config(leveret_broker: BrokerHandle) -> dict:
    return {
        "broker_url": leveret_broker.add_vhost("celery"),  # a vhost for the Celery tests
        "result_backend": "rpc://",  # results travel through the broker too
    }


@pytest.fixture
def celery_queue(leveret_broker: BrokerHandle) -> Iterator[str]:
    yield "celery"
    leveret_broker.purge("celery", vhost="celery")  # leave no task for the next test


# ---- the tests -------------------------------------------------------------------------


# `depends_on_current_app` (Celery's) makes `celery_app` the current app: a shared_task
# needs that, else it would use a default app that talks to amqp://localhost:5672.


def test_add_to_cart_runs_on_a_worker(depends_on_current_app: None, celery_worker: object) -> None:
    result = add_to_cart.delay(1, "sku-1", quantity=2)

    assert result.get(timeout=10) == {"cart": 1, "sku": "sku-1", "quantity": 2}


def test_delay_publishes_the_task_message(
    depends_on_current_app: None, leveret_broker: BrokerHandle, celery_queue: str
) -> None:
    add_to_cart.delay(5, "sku-5")  # no worker: the message stays in the queue

    message = leveret_broker.wait_for_message(celery_queue, vhost="celery", timeout=2)
    assert message.headers["task"] == "shop.add_to_cart"
    args, kwargs, _embed = message.json()  # Celery's message protocol 2
    assert (args, kwargs) == ([5, "sku-5"], {})
    assert message.content_type == "application/json"
