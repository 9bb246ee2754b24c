"""The operations surface: RabbitMQ's management HTTP API and its Prometheus endpoint,
served by aiohttp on the broker's own event loop.  Built on the ``Broker`` and the
core's public objects; nothing below the server imports this package."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from leveret.broker.http.api import Api
from leveret.broker.http.dashboard import add_dashboard
from leveret.broker.http.prometheus import make_app
from leveret.broker.http.server import HttpServer

if TYPE_CHECKING:
    from leveret.broker.server import Broker

__all__ = ["HttpServer", "start_http", "start_prometheus"]


class ApiServer(HttpServer):
    def __init__(self, app: web.Application, api: Api) -> None:
        super().__init__(app)
        self.api = api

    async def stop(self) -> None:
        self.api.rates.stop()
        await super().stop()


async def start_http(
    broker: Broker, host: str | list[str], port: int | None, tls_port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpServer:
    """The management API on ``host``:``port`` (0: a free port; None: no plain HTTP
    listener) and, with ``ssl_context``, over HTTPS at ``tls_port``; the web dashboard
    (``/``, ``/static/...``) on the API."""
    api = Api(broker)
    app = web.Application(client_max_size=broker.config.http_max_body)

    add_dashboard(app)
    app.router.add_route("*", "/api/{tail:.*}", api.handle)
    srv = ApiServer(app, api)
    await srv.start(host, port, "management HTTP API (--http-port)", tls_port, ssl_context,
                    "management HTTP API over TLS (--http-tls-port)")
    api.rates.start()
    return srv


async def start_prometheus(
    broker: Broker, host: str | list[str], port: int | None, tls_port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpServer:
    """The Prometheus endpoint on ``host``:``port`` (0: a free port; None: no plain HTTP
    listener) and, with ``ssl_context``, over HTTPS at ``tls_port``."""
    srv = HttpServer(make_app(broker))
    await srv.start(host, port, "Prometheus endpoint (--prometheus-port)", tls_port, ssl_context,
                    "Prometheus endpoint over TLS (--prometheus-tls-port)")
    return srv
