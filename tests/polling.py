"""Waiting for a condition in tests: ``wait_until`` (blocking), ``async_wait_until``
(inside ``async def`` tests, where a blocking wait would stall the client under test) and
``pump_until`` (``wait_until`` for pika's BlockingConnection, whose callbacks only run
while its I/O loop does).

Poll instead of sleeping a fixed time: quick when the condition comes at once, patient on a
loaded machine.  Both return the first true value of ``pred()``; on timeout they fail with
an AssertionError naming what was awaited (``what``, else the condition's source line),
for how long, and the last value seen::

    wait_until(lambda: broker.message_count("q") == 3, what="3 messages in q")
    await async_wait_until(lambda: len(got) >= 4)
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

#: how long a wait lasts unless told
TIMEOUT = 5.0


def describe(pred: Callable[..., Any]) -> str:
    """A name for a condition in a failure message: its source line (a lambda's call
    site) or its qualified name."""
    try:
        text = " ".join(inspect.getsource(pred).split())
    except (OSError, TypeError):
        text = getattr(pred, "__qualname__", repr(pred))
    return text if len(text) <= 200 else text[:197] + "..."


def _timed_out(pred: Callable[..., Any], timeout: float, what: str | None, last: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for {what or describe(pred)}; last value: {last!r}")


def wait_until(
    pred: Callable[[], T],
    timeout: float = TIMEOUT,
    what: str | None = None,
    interval: float = 0.02,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``pred`` every ``interval`` seconds until it returns a true value, and return
    that value.  Exceptions of the ``ignore`` types count as a false value (and are
    shown as the last value on timeout); any other exception propagates at once."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = pred()
            if value:
                return value
            last = value
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise _timed_out(pred, timeout, what, last)
        time.sleep(interval)


async def async_wait_until(
    pred: Callable[[], T | Awaitable[T]],
    timeout: float = TIMEOUT,
    what: str | None = None,
    interval: float = 0.01,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """``wait_until`` for the event loop: ``pred`` may be a plain function or return an
    awaitable (a coroutine function); the loop runs between the checks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            value = pred()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last = value
        except ignore as exc:
            last = exc
        if loop.time() >= deadline:
            raise _timed_out(pred, timeout, what, last)
        await asyncio.sleep(interval)


class EventLoopClient(Protocol):
    """A blocking client with an I/O loop to run (pika's BlockingConnection)."""

    def process_data_events(self, time_limit: float | None = ...) -> None: ...


def pump_until(
    conns: EventLoopClient | Sequence[EventLoopClient],
    pred: Callable[[], T],
    timeout: float = TIMEOUT,
    what: str | None = None,
    pump: float = 0.02,
) -> T:
    """``wait_until`` for blocking clients: between the checks, run each connection's I/O
    loop for ``pump`` seconds instead of sleeping, so that its callbacks (deliveries,
    cancels, returns) run."""
    clients = list(conns) if isinstance(conns, Sequence) else [conns]

    def pumped() -> T:
        value = pred()
        if not value:
            for c in clients:
                c.process_data_events(time_limit=pump)
        return value

    return wait_until(pumped, timeout, what=what or describe(pred), interval=0)
