"""The web dashboard: static HTML/JS/CSS (``static/``, installed as package data) served at
``/`` and ``/static/<file>``.  The page uses only the public management API (``/api``), with
the user's Basic credentials; nothing here reads the broker."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

STATIC_PACKAGE = "leveret.broker.http"
STATIC_FOLDER = "static"
FILES = ("index.html", "app.js", "app.css", "favicon.svg")
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# the page loads only its own files and talks only to its own origin; API data never runs
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_static() -> dict[str, bytes]:
    """The dashboard's files, read from the installed package (a wheel, a zip or a checkout)."""
    folder = resources.files(STATIC_PACKAGE).joinpath(STATIC_FOLDER)
    return {name: folder.joinpath(name).read_bytes() for name in FILES}


def add_dashboard(app: web.Application) -> None:
    """Routes ``GET /`` (the page) and ``GET /static/{name}`` (its script, style, icon)."""
    files = load_static()

    def respond(name: str) -> web.Response:
        ext = name[name.rfind("."):]
        return web.Response(body=files[name], content_type=CONTENT_TYPES[ext], charset="utf-8",
                            headers=SECURITY_HEADERS)

    async def index(request: web.Request) -> web.Response:
        return respond("index.html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files or name == "index.html":
            raise web.HTTPNotFound()
        return respond(name)

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
