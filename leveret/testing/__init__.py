"""Run a Leveret broker for tests: in a background thread, as an async context
manager, or as a subprocess; look inside it and inject faults.

    with BrokerThread() as b:            # synchronous code (pika, kombu, unittest, Django)
        pika.BlockingConnection(pika.URLParameters(b.url))
        assert b.peek("jobs")[0].body == b"hello"

    async with AsyncBroker() as b:       # asyncio code (aio-pika), broker on this loop
        await aio_pika.connect(b.url)
        msg = await b.wait_for_message("jobs", timeout=2)

    with SubprocessBroker() as b:        # a separate process, same API as BrokerThread
        ...

``BrokerThread`` and ``SubprocessBroker`` are :class:`BrokerHandle`s: every inspection
and fault-injection call runs on the broker's own event loop (see
:class:`leveret.testing.inspect.Inspector` for what each does); calls that wait have an
``*_async`` twin for use inside a running event loop.  :meth:`BrokerHandle.isolated_vhost`
gives a fresh vhost with the same API scoped to it (the pytest plugin's ``leveret``
fixture is one).  ``running_broker`` and ``BrokerProcess`` (``python -m leveret`` in a
subprocess) are the older, plainer helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import queue as queue_mod
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from leveret.broker.config import Config
from leveret.broker.server import Broker
from leveret.protocol.constants import CONNECTION_FORCED
from leveret.testing.inspect import (
    DEFAULT_CLOSE_TEXT,
    BindingInfo,
    ConnectionInfo,
    ConsumerInfo,
    ExchangeInfo,
    FaultRule,
    Inspector,
    PeekedMessage,
    QueueInfo,
    Stats,
)

T = TypeVar("T")

__all__ = [
    "AsyncBroker",
    "BrokerHandle",
    "BrokerProcess",
    "BrokerThread",
    "SubprocessBroker",
    "VhostView",
    "broker_url",
    "free_port",
    "running_broker",
    # re-exported from leveret.testing.inspect
    "BindingInfo",
    "ConnectionInfo",
    "ConsumerInfo",
    "ExchangeInfo",
    "FaultRule",
    "Inspector",
    "PeekedMessage",
    "QueueInfo",
    "Stats",
]

Predicate = Callable[[PeekedMessage], bool]

# the folder that holds the `leveret` package (site-packages, or a source checkout)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child_path(env: dict[str, str]) -> None:
    """Let a child ``python -m leveret`` import this same Leveret: a source checkout goes
    on its PYTHONPATH; an installed copy (site-packages) is found without it, and must not
    go there (ahead of the standard library)."""
    import site

    sites = {os.path.abspath(p) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if os.path.abspath(_ROOT) not in sites:
        env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")


def _amqp_url(
    host: str,
    port: int,
    vhost: str,
    user: str = "guest",
    password: str = "guest",
    scheme: str = "amqp",
) -> str:
    # the default vhost as an empty path ("/"), which every client reads as "/"
    path = "" if vhost == "/" else quote(vhost, safe="")
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{path}"


def _guest(config: Config) -> tuple[str, str]:
    users = config.users
    if "guest" in users:
        return "guest", users["guest"]
    name = next(iter(users))
    return name, users[name]


# ---------------------------------------------------------------------- the shared API


class BrokerUrls:
    """The AMQP URLs of a test broker; the class provides ``host``, ``port``,
    ``tls_port`` and ``config``."""

    config: Config

    # host, port and tls_port come from the subclass (attributes or properties)
    if TYPE_CHECKING:

        @property
        def host(self) -> str: ...
        @property
        def port(self) -> int: ...
        @property
        def tls_port(self) -> int | None: ...

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/`` (the default vhost)."""
        return self.url_for("/")

    def url_for(self, vhost: str) -> str:
        user, password = _guest(self.config)
        return _amqp_url(self.host, self.port, vhost, user, password)

    @property
    def amqps_url(self) -> str:
        """``amqps://guest:guest@127.0.0.1:TLS_PORT/`` (the default vhost)."""
        return self.amqps_url_for("/")

    def amqps_url_for(self, vhost: str) -> str:
        if self.tls_port is None:
            raise RuntimeError("the broker has no TLS listener (give Config(tls_port=0, tls_cert=...))")
        user, password = _guest(self.config)
        return _amqp_url(self.host, self.tls_port, vhost, user, password, "amqps")


class BrokerHandle(BrokerUrls):
    """A broker running elsewhere (another thread or process) that tests talk to.

    Subclasses provide ``host``, ``port``, ``config`` and :meth:`_invoke`, which runs an
    :class:`~leveret.testing.inspect.Inspector` method on the broker's loop."""

    config: Config
    startup_seconds: float | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def tls_port(self) -> int | None:
        """The amqps listener's port (None: the broker was not given ``tls_port``)."""
        return None

    def start(self, timeout: float = 15.0) -> BrokerHandle:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> BrokerHandle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _invoke(self, name: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def _ainvoke(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self._invoke, name, *args, **kwargs)

    # ------------------------------------------------------------------ vhosts

    def vhosts(self) -> list[str]:
        return self._invoke("vhosts")

    def add_vhost(self, name: str) -> str:
        """Create vhost ``name`` (no-op if it exists); return its URL."""
        self._invoke("add_vhost", name)
        return self.url_for(name)

    def delete_vhost(self, name: str) -> None:
        """Delete a vhost, closing its connections (320) and deleting its queues."""
        self._invoke("delete_vhost", name)

    def isolated_vhost(self, prefix: str = "test", name: str | None = None) -> VhostView:
        """Create a uniquely named vhost and return a :class:`VhostView` of it; the vhost
        is deleted by :meth:`VhostView.close` (or leaving its ``with`` block)."""
        if name is None:
            prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", prefix).strip("-")[:60] or "test"
            name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self._invoke("add_vhost", name)
        return VhostView(self, name)

    # ------------------------------------------------------------------ inspection

    def stats(self) -> Stats:
        return self._invoke("stats")

    def queues(self, vhost: str = "/") -> list[QueueInfo]:
        return self._invoke("queues", vhost)

    def queue(self, name: str, vhost: str = "/") -> QueueInfo:
        return self._invoke("queue", name, vhost)

    def exchanges(self, vhost: str = "/") -> list[ExchangeInfo]:
        return self._invoke("exchanges", vhost)

    def bindings(self, vhost: str = "/", include_default: bool = False) -> list[BindingInfo]:
        return self._invoke("bindings", vhost, include_default)

    def consumers(self, vhost: str = "/") -> list[ConsumerInfo]:
        return self._invoke("consumers", vhost)

    def connections(self, vhost: str | None = None) -> list[ConnectionInfo]:
        return self._invoke("connections", vhost)

    def message_count(self, queue: str, vhost: str = "/") -> int:
        return self._invoke("message_count", queue, vhost)

    def peek(
        self, queue: str, vhost: str = "/", limit: int | None = None, include_unacked: bool = False
    ) -> list[PeekedMessage]:
        return self._invoke("peek", queue, vhost, limit, include_unacked)

    def purge(self, queue: str, vhost: str = "/") -> int:
        return self._invoke("purge", queue, vhost)

    def wait_for_message(
        self,
        queue: str,
        vhost: str = "/",
        timeout: float = 5.0,
        predicate: Predicate | None = None,
        include_unacked: bool = False,
    ) -> PeekedMessage:
        """Block until ``queue`` holds a (matching) message; return a copy of it.  Do not
        call this from a running event loop: use :meth:`wait_for_message_async`."""
        return self.wait_for_messages(queue, 1, vhost, timeout, predicate, include_unacked)[0]

    def wait_for_messages(
        self,
        queue: str,
        count: int,
        vhost: str = "/",
        timeout: float = 5.0,
        predicate: Predicate | None = None,
        include_unacked: bool = False,
    ) -> list[PeekedMessage]:
        return self._invoke(
            "wait_for_messages", queue, count, vhost, timeout, predicate, include_unacked
        )

    async def wait_for_message_async(
        self,
        queue: str,
        vhost: str = "/",
        timeout: float = 5.0,
        predicate: Predicate | None = None,
        include_unacked: bool = False,
    ) -> PeekedMessage:
        msgs = await self.wait_for_messages_async(
            queue, 1, vhost, timeout, predicate, include_unacked
        )
        return msgs[0]

    async def wait_for_messages_async(
        self,
        queue: str,
        count: int,
        vhost: str = "/",
        timeout: float = 5.0,
        predicate: Predicate | None = None,
        include_unacked: bool = False,
    ) -> list[PeekedMessage]:
        return await asyncio.to_thread(
            self.wait_for_messages, queue, count, vhost, timeout, predicate, include_unacked
        )

    # ------------------------------------------------------------------ faults

    def close_connections(
        self,
        code: int = CONNECTION_FORCED,
        text: str = DEFAULT_CLOSE_TEXT,
        vhost: str | None = None,
        timeout: float = 0.0,
    ) -> int:
        """Close every client connection (of ``vhost``) with ``code``/``text``; return how
        many there were.  ``timeout``: wait up to that long for the clients to answer."""
        return self._invoke("close_connections", code, text, vhost, timeout)

    async def close_connections_async(
        self,
        code: int = CONNECTION_FORCED,
        text: str = DEFAULT_CLOSE_TEXT,
        vhost: str | None = None,
        timeout: float = 0.0,
    ) -> int:
        return await self._ainvoke("close_connections", code, text, vhost, timeout)

    def restart(self, downtime: float = 0.0, grace: float = 0.1) -> None:
        """Close every connection and the listener, wait ``downtime`` s, listen again on
        the same port; vhosts, queues and messages are kept.  See
        :meth:`leveret.testing.inspect.Inspector.restart`."""
        self._invoke("restart", downtime, grace)

    async def restart_async(self, downtime: float = 0.0, grace: float = 0.1) -> None:
        await self._ainvoke("restart", downtime, grace)

    def block_publishers(self, vhost: str | None = None, publishers_only: bool = False) -> int:
        """connection.blocked to every open connection (of ``vhost``); see
        :meth:`leveret.testing.inspect.Inspector.block_publishers`."""
        return self._invoke("block_publishers", vhost, publishers_only)

    def unblock_publishers(self, vhost: str | None = None) -> int:
        return self._invoke("unblock_publishers", vhost)

    def delay_deliveries(
        self,
        seconds: float,
        queue: str | None = None,
        vhost: str | None = None,
        consumer_tag: str | None = None,
        count: int | None = None,
    ) -> FaultRule:
        return self._invoke("delay_deliveries", seconds, queue, vhost, consumer_tag, count)

    def drop_deliveries(
        self,
        queue: str | None = None,
        vhost: str | None = None,
        consumer_tag: str | None = None,
        count: int | None = None,
    ) -> FaultRule:
        return self._invoke("drop_deliveries", queue, vhost, consumer_tag, count)

    def faults(self) -> list[FaultRule]:
        return self._invoke("faults")

    def clear_faults(self, vhost: str | None = None, rule_id: int | None = None) -> int:
        return self._invoke("clear_faults", vhost, rule_id)


class VhostView:
    """One vhost of a :class:`BrokerHandle`: its URL, and the handle's inspection and
    fault API scoped to it.  :meth:`stats` counts from the moment the view was made
    (the counters are broker-wide: other vhosts' traffic at the same time counts too)."""

    def __init__(self, handle: BrokerHandle, vhost: str) -> None:
        self.handle = handle
        self.vhost = vhost
        self._stats0 = handle.stats()
        self._closed = False

    def __repr__(self) -> str:
        return f"<VhostView {self.vhost!r} on port {self.port}>"

    @property
    def host(self) -> str:
        return self.handle.host

    @property
    def port(self) -> int:
        return self.handle.port

    @property
    def url(self) -> str:
        return self.handle.url_for(self.vhost)

    @property
    def tls_port(self) -> int | None:
        return self.handle.tls_port

    @property
    def amqps_url(self) -> str:
        """This vhost's ``amqps://`` URL (the broker needs ``tls_port``)."""
        return self.handle.amqps_url_for(self.vhost)

    # inspection
    def stats(self) -> Stats:
        return self.handle.stats() - self._stats0

    def queues(self) -> list[QueueInfo]:
        return self.handle.queues(self.vhost)

    def queue(self, name: str) -> QueueInfo:
        return self.handle.queue(name, self.vhost)

    def queue_names(self) -> list[str]:
        return sorted(q.name for q in self.queues())

    def exchanges(self) -> list[ExchangeInfo]:
        return self.handle.exchanges(self.vhost)

    def bindings(self, include_default: bool = False) -> list[BindingInfo]:
        return self.handle.bindings(self.vhost, include_default)

    def consumers(self) -> list[ConsumerInfo]:
        return self.handle.consumers(self.vhost)

    def connections(self) -> list[ConnectionInfo]:
        return self.handle.connections(self.vhost)

    def message_count(self, queue: str) -> int:
        return self.handle.message_count(queue, self.vhost)

    def peek(
        self, queue: str, limit: int | None = None, include_unacked: bool = False
    ) -> list[PeekedMessage]:
        return self.handle.peek(queue, self.vhost, limit, include_unacked)

    def purge(self, queue: str) -> int:
        return self.handle.purge(queue, self.vhost)

    def wait_for_message(
        self,
        queue: str,
        timeout: float = 5.0,
        predicate: Predicate | None = None,
        include_unacked: bool = False,
    ) -> PeekedMessage:
        return self.handle.wait_for_message(queue, self.vhost, timeout, predicate, include_unacked)

    def wait_for_messages(
        self,
        queue: str,
        count: int,
        timeout: float = 5.0,
        predicate: Predicate | None = None,
        include_unacked: bool = False,
    ) -> list[PeekedMessage]:
        return self.handle.wait_for_messages(
            queue, count, self.vhost, timeout, predicate, include_unacked
        )

    async def wait_for_message_async(
        self,
        queue: str,
        timeout: float = 5.0,
        predicate: Predicate | None = None,
        include_unacked: bool = False,
    ) -> PeekedMessage:
        return await self.handle.wait_for_message_async(
            queue, self.vhost, timeout, predicate, include_unacked
        )

    async def wait_for_messages_async(
        self,
        queue: str,
        count: int,
        timeout: float = 5.0,
        predicate: Predicate | None = None,
        include_unacked: bool = False,
    ) -> list[PeekedMessage]:
        return await self.handle.wait_for_messages_async(
            queue, count, self.vhost, timeout, predicate, include_unacked
        )

    # faults (this vhost only, except restart)
    def close_connections(
        self, code: int = CONNECTION_FORCED, text: str = DEFAULT_CLOSE_TEXT, timeout: float = 0.0
    ) -> int:
        return self.handle.close_connections(code, text, self.vhost, timeout)

    async def close_connections_async(
        self, code: int = CONNECTION_FORCED, text: str = DEFAULT_CLOSE_TEXT, timeout: float = 0.0
    ) -> int:
        return await self.handle.close_connections_async(code, text, self.vhost, timeout)

    def restart(self, downtime: float = 0.0, grace: float = 0.1) -> None:
        """Restart the whole broker (every vhost's connections are closed)."""
        self.handle.restart(downtime, grace)

    async def restart_async(self, downtime: float = 0.0, grace: float = 0.1) -> None:
        await self.handle.restart_async(downtime, grace)

    def block_publishers(self, publishers_only: bool = False) -> int:
        return self.handle.block_publishers(self.vhost, publishers_only)

    def unblock_publishers(self) -> int:
        return self.handle.unblock_publishers(self.vhost)

    def delay_deliveries(
        self,
        seconds: float,
        queue: str | None = None,
        consumer_tag: str | None = None,
        count: int | None = None,
    ) -> FaultRule:
        return self.handle.delay_deliveries(seconds, queue, self.vhost, consumer_tag, count)

    def drop_deliveries(
        self, queue: str | None = None, consumer_tag: str | None = None, count: int | None = None
    ) -> FaultRule:
        return self.handle.drop_deliveries(queue, self.vhost, consumer_tag, count)

    def faults(self) -> list[FaultRule]:
        return [r for r in self.handle.faults() if r.vhost == self.vhost]

    def clear_faults(self) -> int:
        return self.handle.clear_faults(self.vhost)

    # lifecycle
    def close(self) -> None:
        """Delete the vhost (its connections are closed, its queues deleted)."""
        if not self._closed:
            self._closed = True
            self.handle.delete_vhost(self.vhost)

    def __enter__(self) -> VhostView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- in a thread


class BrokerThread(BrokerHandle):
    """A broker running its own event loop in a daemon thread.

    ``start()`` returns once the broker listens (``startup_seconds`` records how long
    that took); ``stop()`` sends connection.close to every client, gives them
    ``stop_timeout`` seconds to answer, and joins the thread."""

    def __init__(
        self, config: Config | None = None, use_uvloop: bool = False, stop_timeout: float = 0.25
    ) -> None:
        self.config = config or Config(port=0)
        self.use_uvloop = use_uvloop
        self.stop_timeout = stop_timeout
        self.broker: Broker | None = None
        self.inspector: Inspector | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.startup_seconds: float | None = None
        self._port: int | None = None
        self._tls_port: int | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._port is not None:
            return self._port
        assert self.broker is not None
        return self.broker.port

    @property
    def tls_port(self) -> int | None:
        if self._tls_port is not None:
            return self._tls_port
        return None if self.broker is None else self.broker.tls_port

    def start(self, timeout: float = 10.0) -> BrokerThread:
        t0 = time.perf_counter()
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="leveret-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("broker did not start")
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise self._error
        self.startup_seconds = time.perf_counter() - t0
        return self

    def _run(self) -> None:
        if self.use_uvloop:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
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
            self._port = self.broker.port
            self._tls_port = self.broker.tls_port
            self.inspector = Inspector(self.broker)
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        await self.broker.stop(self.stop_timeout)

    def _on_loop(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
    ) -> Any:
        if self.loop is None or self._thread is None:
            raise RuntimeError("the broker thread is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("called from the broker's own thread: use the Inspector directly")

        async def _call() -> Any:
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(_call(), self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the broker's loop and return its result (awaited if it
        is a coroutine)."""
        return self._on_loop(fn, args, {}, 30)

    def _invoke(self, name: str, *args: Any, **kwargs: Any) -> Any:
        assert self.inspector is not None, "the broker thread is not running"
        # every Inspector wait is bounded by its own timeout argument; leave it room
        return self._on_loop(getattr(self.inspector, name), args, kwargs, 300)

    def stop(self) -> None:
        if self.loop is not None and self._stopped is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------- on this loop


class AsyncBroker(BrokerUrls, Inspector):
    """An in-process broker on the running event loop, with the
    :class:`~leveret.testing.inspect.Inspector` API (listings are plain calls; ``wait_for_*``,
    ``close_connections`` and ``restart`` are coroutines)::

        async with AsyncBroker() as b:
            conn = await aio_pika.connect(b.url)
    """

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(Broker(config or Config(port=0)))
        self.config = self.broker.config
        self.startup_seconds: float | None = None
        self._port: int | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        if self._port is not None:
            return self._port
        return self.broker.port

    @property
    def tls_port(self) -> int | None:
        """The amqps listener's port (None: the broker was not given ``tls_port``)."""
        return self.broker.tls_port

    async def start(self) -> AsyncBroker:
        t0 = time.perf_counter()
        await self.broker.start()
        self._port = self.broker.port
        self.startup_seconds = time.perf_counter() - t0
        return self

    async def stop(self) -> None:
        await self.broker.stop()

    async def __aenter__(self) -> AsyncBroker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def running_broker(config: Config | None = None) -> AsyncIterator[Broker]:
    """An in-process broker on the running event loop, stopped on exit (yields the
    :class:`Broker`; :class:`AsyncBroker` adds inspection)."""
    broker = Broker(config or Config(port=0))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def broker_url(broker: Broker, vhost: str = "/") -> str:
    return f"amqp://guest:guest@127.0.0.1:{broker.port}/{quote(vhost, safe='')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- subprocesses


class BrokerProcess:
    """``python -m leveret`` in a subprocess (for kill -9 and restart tests).  ``stderr``
    (a file, or ``subprocess.PIPE``/``DEVNULL``) takes its log; ``preexec_fn`` runs in the
    child before it starts (e.g. ``resource.setrlimit`` to give it few file descriptors)."""

    def __init__(
        self,
        port: int | None = None,
        args: list[str] | None = None,
        stderr: IO[Any] | int | None = None,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.stderr = stderr
        self.preexec_fn = preexec_fn
        self.args = list(args or [])
        if "--data-dir" not in self.args and "--in-memory" not in self.args:
            self.args.append("--in-memory")
        # a test broker opens no HTTP API or Prometheus listener unless asked
        for flag in ("--http-port", "--prometheus-port"):
            if flag not in self.args:
                self.args += [flag, "off"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 15.0) -> BrokerProcess:
        env = dict(os.environ)
        _child_path(env)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "leveret",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *self.args,
            ],
            env=env,
            stderr=self.stderr,
            preexec_fn=self.preexec_fn,
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


_LEN = struct.Struct(">I")


def _write_frame(out: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LEN.pack(len(data)) + data)
    out.flush()


def _read_frame(inp: IO[bytes]) -> Any:
    head = inp.read(4)
    if len(head) < 4:
        raise EOFError
    (n,) = _LEN.unpack(head)
    data = inp.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


class SubprocessBroker(BrokerHandle):
    """A broker in a child Python process, controlled over its stdin/stdout: the same
    API as :class:`BrokerThread` (inspection, faults, vhosts), plus :meth:`kill`
    (SIGKILL) and ``restart(hard=True)`` (a new process on the same port).

    The child exits by itself when its stdin closes, so it never outlives the test
    process.  Its log goes to the parent's stderr."""

    def __init__(self, config: Config | None = None, python: str | None = None) -> None:
        self.config = config or Config(port=0)
        self.python = python or sys.executable
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._port: int | None = None
        self._lock = threading.Lock()
        self._replies: queue_mod.Queue[Any] = queue_mod.Queue()
        self._reader: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker subprocess is not running")
        return self._port

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 15.0) -> SubprocessBroker:
        t0 = time.perf_counter()
        env = dict(os.environ)
        _child_path(env)
        config = self.config
        if self._port is not None and config.port == 0:
            # restart(hard=True): come back on the same port
            config = Config(**{**config.__dict__, "port": self._port})
        self.proc = subprocess.Popen(
            [self.python, "-c", "from leveret.testing import _subprocess_main; _subprocess_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._replies = queue_mod.Queue()
        self._reader = threading.Thread(
            target=self._read_replies, name="leveret-subprocess-reader", daemon=True
        )
        self._reader.start()
        try:
            assert self.proc.stdin is not None
            _write_frame(self.proc.stdin, config)
            self._port = self._reply(timeout)
        except BaseException:
            self.kill()
            raise
        self.startup_seconds = time.perf_counter() - t0
        return self

    def _read_replies(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                self._replies.put(_read_frame(proc.stdout))
        except (EOFError, OSError, pickle.UnpicklingError):
            self._replies.put(("err", RuntimeError(f"broker subprocess exited ({proc.poll()})")))

    def _reply(self, timeout: float) -> Any:
        try:
            kind, value = self._replies.get(timeout=timeout)
        except queue_mod.Empty:
            raise TimeoutError("no answer from the broker subprocess") from None
        if kind == "err":
            raise value
        return value

    def _invoke(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self.proc is None or self.proc.poll() is not None or self.proc.stdin is None:
                raise RuntimeError("the broker subprocess is not running")
            try:
                _write_frame(self.proc.stdin, ("call", name, args, kwargs))
            except (BrokenPipeError, OSError) as exc:
                raise RuntimeError("the broker subprocess is not running") from exc
            return self._reply(300)

    def wait_for_messages(
        self,
        queue: str,
        count: int,
        vhost: str = "/",
        timeout: float = 5.0,
        predicate: Predicate | None = None,
        include_unacked: bool = False,
    ) -> list[PeekedMessage]:
        if predicate is None:
            return super().wait_for_messages(queue, count, vhost, timeout, None, include_unacked)
        # a predicate cannot cross the process boundary: poll from here
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = [m for m in self.peek(queue, vhost, None, include_unacked) if predicate(m)]
            except KeyError:
                found = []
            if len(found) >= count:
                return found[:count]
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"expected {count} matching message(s) on queue {queue!r} in vhost {vhost!r} "
                    f"within {timeout} s; {len(found)} matching"
                )
            time.sleep(0.01)

    def restart(self, downtime: float = 0.0, grace: float = 0.1, hard: bool = False) -> None:
        """``hard=False``: as :meth:`BrokerHandle.restart` (state kept).  ``hard=True``:
        stop the process and start a new one on the same port; in-memory state is lost
        (durable state survives if the broker has a ``data_dir``)."""
        if not hard:
            super().restart(downtime, grace)
            return
        self.stop()
        if downtime > 0:
            time.sleep(downtime)
        self.start()

    def kill(self) -> None:
        """SIGKILL the broker process (no connection.close is sent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_pipes()

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with self._lock:
                try:
                    assert proc.stdin is not None
                    _write_frame(proc.stdin, ("stop",))
                    proc.stdin.close()
                except (OSError, ValueError):
                    pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError, ValueError):
                    f.close()
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None

    def __enter__(self) -> SubprocessBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _subprocess_main() -> None:
    """Entry point of :class:`SubprocessBroker`'s child process."""
    import logging

    rin, wout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the control channel only
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="leveret[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = _read_frame(rin)
    except EOFError:
        return
    asyncio.run(_subprocess_serve(config, rin, wout))


async def _subprocess_serve(config: Config, rin: IO[bytes], wout: IO[bytes]) -> None:
    loop = asyncio.get_running_loop()
    broker = Broker(config)
    try:
        await broker.start()
    except BaseException as exc:  # noqa: BLE001
        _write_frame(wout, ("err", _portable(exc)))
        return
    inspector = Inspector(broker)
    _write_frame(wout, ("ok", broker.port))
    requests: asyncio.Queue[Any] = asyncio.Queue()

    def read() -> None:
        try:
            while True:
                req = _read_frame(rin)
                loop.call_soon_threadsafe(requests.put_nowait, req)
                if req[0] == "stop":  # read no further: a thread blocked reading stdin
                    return  # would trip the interpreter's shutdown
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(requests.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    reply_on_stop = False
    while True:
        req = await requests.get()
        if req is None:
            break
        if req[0] == "stop":
            reply_on_stop = True
            break
        _, name, args, kwargs = req
        try:
            result = getattr(inspector, name)(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            reply: tuple[str, Any] = ("ok", result)
        except Exception as exc:  # noqa: BLE001
            reply = ("err", _portable(exc))
        try:
            _write_frame(wout, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _write_frame(wout, ("err", RuntimeError(f"unpicklable result of {name}: {exc}")))
        except OSError:
            break
    await broker.stop(0.25)
    if reply_on_stop:
        with contextlib.suppress(OSError):
            _write_frame(wout, ("ok", None))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")
