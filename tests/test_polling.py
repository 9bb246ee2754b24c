"""tests/polling.py: the suite's way to wait for a condition."""

from __future__ import annotations

import asyncio

import pika
import pytest

from leveret.testing import BrokerThread
from tests.polling import async_wait_until, pump_until, wait_until


def test_wait_until_returns_the_first_true_value() -> None:
    calls = iter([0, None, [], "ready", "later"])
    assert wait_until(lambda: next(calls), interval=0) == "ready"


def test_wait_until_fails_naming_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError) as exc:
        wait_until(lambda: [], timeout=0.05, what="the queue to fill")
    assert str(exc.value) == "timed out after 0.05 s waiting for the queue to fill; last value: []"
    with pytest.raises(AssertionError) as exc:
        wait_until(lambda: 1 + 1 == 3, timeout=0.05)
    assert "lambda: 1 + 1 == 3" in str(exc.value)  # no what: the condition's source


def test_wait_until_ignores_only_the_exceptions_it_is_told_to() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("not yet")

    with pytest.raises(AssertionError, match=r"last value: ConnectionRefusedError\('not yet'\)"):
        wait_until(refused, timeout=0.05, ignore=(OSError,))
    with pytest.raises(ConnectionRefusedError):
        wait_until(refused, timeout=5)  # at once, not after the timeout


async def test_async_wait_until_lets_the_loop_run_and_awaits_coroutine_conditions() -> None:
    got: list[int] = []
    asyncio.get_running_loop().call_later(0.05, got.append, 1)
    assert await async_wait_until(lambda: got) == [1]

    async def later() -> str:
        return "done" if got else ""

    assert await async_wait_until(later) == "done"
    with pytest.raises(AssertionError, match="timed out after 0.05 s waiting for nothing; last value: ''"):
        await async_wait_until(lambda: "", timeout=0.05, what="nothing")


def test_pump_until_runs_pikas_io_loop_between_the_checks(broker_thread: BrokerThread) -> None:
    with pika.BlockingConnection(pika.URLParameters(broker_thread.url)) as conn:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        got: list[bytes] = []
        ch.basic_consume(q, lambda c, m, p, body: got.append(body), auto_ack=True)
        ch.basic_publish("", q, b"m")
        # the delivery callback runs only inside pika's I/O loop: a plain wait_until
        # would never see it
        assert pump_until(conn, lambda: got) == [b"m"]
        with pytest.raises(AssertionError, match="timed out after 0.1 s waiting for a second message; last value: False"):
            pump_until(conn, lambda: len(got) > 1, 0.1, what="a second message")
