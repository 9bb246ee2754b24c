"""The node's listeners: the AMQP listener and the amqps one (``Listener``, accepting
``Connection``s), the management HTTP API and the Prometheus endpoint (started only
when configured), their ports and addresses, and closing them (``stop_listening``: the
AMQP listeners, connection.close 320 to every client, then drop the ones that did not
answer).

:class:`Listeners` is composed by :class:`leveret.broker.server.Broker`, which keeps the
public names (``listen``, ``stop_listening``, ``port``, ``http_port``, ``server``...) as
thin delegations.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from leveret import __version__ as VERSION
from leveret.broker.config import DEFAULT_HOSTS, PORTS
from leveret.broker.listener import Listener, open_listener
from leveret.broker.tls import http_context, server_context
from leveret.broker.wire.connection import Connection

if TYPE_CHECKING:
    from leveret.broker.server import Broker

log = logging.getLogger("leveret")


class Listeners:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.server: Listener | None = None
        self.tls_server: Listener | None = None  # the amqps listener (config.tls_port)
        self.ssl_context: ssl.SSLContext | None = None
        self._tls_bound: int | None = None  # the port the amqps listener got (listen again there)
        self.http: Any = None  # the management HTTP API (leveret.broker.http), when on
        self.prometheus: Any = None  # the Prometheus endpoint, when on

    async def stop_http(self) -> None:
        """Stop the management HTTP API and the Prometheus endpoint."""
        for srv in (self.http, self.prometheus):
            if srv is not None:
                await srv.stop()
        self.http = self.prometheus = None

    def configured_ports(self) -> list[tuple[str, str | list[str] | None, int]]:
        """(flag, hosts, port) of every listener the config asks for."""
        cfg = self.broker.config
        hosts = {"port": cfg.host, "tls_port": cfg.host, "http_port": cfg.http_host or cfg.host,
                 "http_tls_port": cfg.http_host or cfg.host, "prometheus_port": cfg.prometheus_host or cfg.host,
                 "prometheus_tls_port": cfg.prometheus_host or cfg.host}
        return [(flag, hosts[name], getattr(cfg, name)) for name, flag in PORTS if getattr(cfg, name)]

    async def start_http(self) -> None:
        """The management HTTP API and the Prometheus endpoint, if configured."""
        cfg = self.broker.config
        http_on = cfg.http_port is not None or cfg.http_tls_port is not None
        prometheus_on = cfg.prometheus_port is not None or cfg.prometheus_tls_port is not None
        if not http_on and not prometheus_on:
            return
        from leveret.broker.http import start_http, start_prometheus

        ctx = http_context(cfg) if cfg.http_tls_port is not None or cfg.prometheus_tls_port is not None else None
        if http_on:
            self.http = await start_http(self.broker, cfg.http_host or cfg.host, cfg.http_port, cfg.http_tls_port, ctx)
        if prometheus_on:
            try:
                self.prometheus = await start_prometheus(self.broker, cfg.prometheus_host or cfg.host, cfg.prometheus_port,
                                                         cfg.prometheus_tls_port, ctx)
            except BaseException:
                if self.http is not None:
                    await self.http.stop()
                    self.http = None
                raise

    @property
    def http_port(self) -> int | None:
        """The port the HTTP API listens on (None: off)."""
        return self.http.port or None if self.http is not None else None

    @property
    def http_tls_port(self) -> int | None:
        """The port the HTTP API listens on over TLS (None: off)."""
        return self.http.tls_port or None if self.http is not None else None

    @property
    def prometheus_port(self) -> int | None:
        return self.prometheus.port or None if self.prometheus is not None else None

    @property
    def prometheus_tls_port(self) -> int | None:
        return self.prometheus.tls_port or None if self.prometheus is not None else None

    async def listen(
        self, host: str | list[str] | None = None, port: int | None = None, tls_port: int | None = None
    ) -> None:
        """Open the listening socket(s): the configured ones, or ``host``/``port`` (again,
        after :meth:`stop_listening`).  With ``config.tls_port`` set, an amqps listener on
        the same hosts too: at ``tls_port``, else the port it had before, else the
        configured one."""
        host = self.broker.config.host if host is None else host
        port = self.broker.config.port if port is None else port
        if tls_port is None:
            tls_port = self._tls_bound if self._tls_bound is not None else self.broker.config.tls_port
        self.server = await self._open_listener(host, port, None)
        if tls_port is not None:
            try:
                if self.ssl_context is None:
                    self.ssl_context = server_context(self.broker.config)
                self.tls_server = await self._open_listener(host, tls_port, self.ssl_context)
            except BaseException:
                self.server.close()
                self.server = None
                raise
            self._tls_bound = self.tls_server.sockets[0].getsockname()[1]
        # (debug: the command line prints the startup line itself, once)
        log.debug("Leveret %s listening on %s", VERSION, ", ".join(self.addresses))

    async def _open_listener(self, host: str | list[str], port: int, ctx: ssl.SSLContext | None) -> Listener:
        def factory() -> Connection:
            self.broker.totals.stats_connections_opened += 1
            return Connection(self.broker, tls=ctx)

        cfg = self.broker.config
        timeout = cfg.handshake_timeout
        bufs = {"sndbuf": cfg.tcp_sndbuf, "recbuf": cfg.tcp_recbuf}
        try:
            return await open_listener(self.broker.loop, factory, host, port, 1024, self._count, ctx, timeout, **bufs)
        except OSError:
            if not isinstance(host, list) or tuple(host) != DEFAULT_HOSTS:
                raise  # addresses asked for explicitly must all work
            # the default, on a machine without an IPv6 loopback: IPv4 alone
            return await open_listener(self.broker.loop, factory, host[0], port, 1024, self._count, ctx, timeout, **bufs)

    def _count(self) -> int:
        return len(self.broker.connections)

    @property
    def addresses(self) -> list[str]:
        """Where it listens: ``127.0.0.1:5672``, ``[::1]:5672``, then the amqps listener's
        as ``127.0.0.1:5671 (amqps)``."""
        out = []
        for server, suffix in ((self.server, ""), (self.tls_server, " (amqps)")):
            for s in server.sockets if server else []:
                addr = s.getsockname()
                where = f"[{addr[0]}]:{addr[1]}" if s.family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}"
                out.append(where + suffix)
        return out

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def tls_port(self) -> int | None:
        """The port of the amqps listener (None: no TLS)."""
        if self.tls_server is None:
            return None
        return self.tls_server.sockets[0].getsockname()[1]

    async def stop_listening(self, grace: float = 1.0, abort: bool = True) -> tuple[list[str], int]:
        """Close the listener and send connection.close 320 to every client; after
        ``grace`` seconds drop those that did not answer (``abort``: reset; else close
        after what is queued for them).  Returns the hosts and port it listened on."""
        server, self.server = self.server, None
        tls_server, self.tls_server = self.tls_server, None
        addrs = [s.getsockname() for s in server.sockets] if server is not None else []
        for listener in (server, tls_server):
            if listener is not None:
                listener.close()
        for c in list(self.broker.connections):
            c.close_forced()
        deadline = self.broker.loop.time() + grace
        while self.broker.connections and self.broker.loop.time() < deadline:
            await asyncio.sleep(0.005)
        for c in list(self.broker.connections):
            c.drop(abort)
        for listener in (server, tls_server):
            if listener is not None:
                await listener.wait_closed()
        return [a[0] for a in addrs], addrs[0][1] if addrs else 0
