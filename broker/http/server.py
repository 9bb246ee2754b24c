"""The aiohttp servers (management API, Prometheus) on the broker's own event loop."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from leveret.broker.config import DEFAULT_HOSTS

log = logging.getLogger("leveret.http")


class HttpServer:
    """An aiohttp application listening on one or more addresses (one port)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.sites: list[web.TCPSite] = []
        self.port = 0

    async def start(self, host: str | list[str], port: int, what: str = "HTTP") -> None:
        """Listen; an OSError names ``what``, the address and the reason."""
        try:
            await self._start(host, port)
        except OSError as exc:
            where = host if isinstance(host, str) else ", ".join(host)
            raise OSError(exc.errno, f"{what}: cannot listen on {where} port {port}: {exc.strerror or exc}") from None

    async def _start(self, host: str | list[str], port: int) -> None:
        await self.runner.setup()
        hosts = [host] if isinstance(host, str) else list(host)
        try:
            for i, h in enumerate(hosts):
                site = web.TCPSite(self.runner, h, self.port or port, reuse_address=True)
                try:
                    await site.start()
                except OSError:
                    # the default hosts on a machine without an IPv6 loopback: IPv4 alone
                    if i == 0 or tuple(hosts) != DEFAULT_HOSTS:
                        raise
                    continue
                self.sites.append(site)
                if not self.port:
                    server: Any = site._server
                    self.port = server.sockets[0].getsockname()[1]
        except BaseException:
            await self.runner.cleanup()
            raise

    @property
    def addresses(self) -> list[str]:
        out = []
        for site in self.sites:
            server: Any = site._server
            for s in server.sockets if server is not None else []:
                a = s.getsockname()
                out.append(f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}")
        return out

    async def stop(self) -> None:
        await self.runner.cleanup()
