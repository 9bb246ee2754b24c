"""Run a Leveret broker for tests: in a background thread, as an async context
manager, or as a subprocess.

    with BrokerThread() as b:            # synchronous code (pika, kombu, unittest)
        pika.BlockingConnection(pika.URLParameters(b.url))

    async with running_broker() as b:    # asyncio code (aio-pika)
        await aio_pika.connect(b.url)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from broker.config import Config
from broker.server import Broker

T = TypeVar("T")


class BrokerThread:
    """A broker running its own event loop in a daemon thread."""

    def __init__(self, config: Config | None = None, use_uvloop: bool = False) -> None:
        self.config = config or Config(port=0)
        self.use_uvloop = use_uvloop
        self.broker: Broker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> BrokerThread:
        self._thread = threading.Thread(target=self._run, name="leveret-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("broker did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        if self.use_uvloop:
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        try:
            self.broker = Broker(self.config)
            await self.broker.start()
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        await self.broker.stop()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the broker's loop and return its result."""
        assert self.loop is not None

        async def _call() -> T:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[return-value]

        return asyncio.run_coroutine_threadsafe(_call(), self.loop).result(30)

    def stop(self) -> None:
        if self.loop is not None and self._stopped is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.asynccontextmanager
async def running_broker(config: Config | None = None) -> AsyncIterator[Broker]:
    """An in-process broker on the running event loop, stopped on exit."""
    broker = Broker(config or Config(port=0))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def broker_url(broker: Broker, vhost: str = "/") -> str:
    from urllib.parse import quote

    return f"amqp://guest:guest@127.0.0.1:{broker.port}/{quote(vhost, safe='')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    """``python -m broker`` in a subprocess (for kill -9 and restart tests)."""

    def __init__(self, port: int | None = None, args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.args = list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 15.0) -> BrokerProcess:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *self.args],
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("broker subprocess did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
