"""The aiohttp servers (management API, Prometheus) on the broker's own event loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from typing import Any

from aiohttp import web

from leveret.broker.config import DEFAULT_HOSTS
from leveret.broker.listener import PORT_ATTEMPTS, resolve

log = logging.getLogger("leveret.http")


class HttpServer:
    """An aiohttp application listening on one or more addresses: at one port in plain
    HTTP, and/or at another over TLS (HTTPS), on the same hosts."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.sites: list[web.TCPSite] = []
        self.tls_sites: list[web.TCPSite] = []
        self.port = 0  # 0: no plain HTTP listener
        self.tls_port = 0  # 0: no HTTPS listener

    async def start(
        self,
        host: str | list[str],
        port: int | None,
        what: str = "HTTP",
        tls_port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tls_what: str = "HTTPS",
    ) -> None:
        """Listen at ``port`` (None: not in plain HTTP) and, with ``ssl_context``, at
        ``tls_port`` over TLS (0: a free port).  An OSError names ``what`` (or
        ``tls_what``), the address and the reason."""
        await self.runner.setup()
        try:
            if port is not None:
                self.port = await self._listen(host, port, None, self.sites, what)
            if tls_port is not None and ssl_context is not None:
                self.tls_port = await self._listen(host, tls_port, ssl_context, self.tls_sites, tls_what)
        except BaseException:
            await self.runner.cleanup()
            raise

    async def _listen(self, host: str | list[str], port: int, ctx: ssl.SSLContext | None,
                      sites: list[web.TCPSite], what: str) -> int:
        try:
            return await self._sites(host, port, ctx, sites)
        except OSError as exc:
            where = host if isinstance(host, str) else ", ".join(host)
            raise OSError(exc.errno, f"{what}: cannot listen on {where} port {port}: {exc.strerror or exc}") from None

    async def _sites(self, host: str | list[str], port: int, ctx: ssl.SSLContext | None,
                     sites: list[web.TCPSite]) -> int:
        """One site per address of the hosts, all at one port (0: the first address picks a
        free one, the others take the same number; all again elsewhere if it is taken)."""
        hosts = [host] if isinstance(host, str) else list(host)
        addrs: list[tuple[str, str]] = []  # (the host it came from, a numeric address)
        loop = asyncio.get_running_loop()
        for h in hosts:
            try:
                infos = await resolve(loop, h, port)
            except OSError:
                if h == hosts[0] or tuple(hosts) != DEFAULT_HOSTS:
                    raise
                continue
            addrs += [(h, info[3][0]) for info in infos if (h, info[3][0]) not in addrs]
        for attempt in range(PORT_ATTEMPTS):
            bound = port
            started: list[web.TCPSite] = []
            try:
                for h, addr in addrs:
                    site = web.TCPSite(self.runner, addr, bound, reuse_address=True, ssl_context=ctx)
                    try:
                        await site.start()
                    except OSError as exc:
                        if port == 0 and started and exc.errno == errno.EADDRINUSE and attempt + 1 < PORT_ATTEMPTS:
                            raise _Retry from None
                        # the default hosts on a machine without an IPv6 loopback: IPv4 alone
                        if h == hosts[0] or tuple(hosts) != DEFAULT_HOSTS:
                            raise
                        continue
                    started.append(site)
                    if not bound:
                        server: Any = site._server
                        bound = server.sockets[0].getsockname()[1]
            except _Retry:
                for site in started:
                    await site.stop()
                continue
            except BaseException:
                for site in started:
                    await site.stop()
                raise
            sites += started
            return bound
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _addresses(sites: list[web.TCPSite]) -> list[str]:
        out = []
        for site in sites:
            server: Any = site._server
            for s in server.sockets if server is not None else []:
                a = s.getsockname()
                out.append(f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}")
        return out

    @property
    def addresses(self) -> list[str]:
        """The plain HTTP listener's addresses ("host:port")."""
        return self._addresses(self.sites)

    @property
    def tls_addresses(self) -> list[str]:
        """The HTTPS listener's addresses ("host:port")."""
        return self._addresses(self.tls_sites)

    async def stop(self) -> None:
        await self.runner.cleanup()


class _Retry(Exception):
    pass
