"""The web dashboard (``/``), in a real browser: Debian's headless Chromium driven by
Playwright for Python, against a Leveret subprocess with its HTTP port open.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (Debian's
``chromium`` package; ``interop/install.sh`` installs it, ``$LEVERET_CHROMIUM`` names another).
Without it the browser tests skip, except in CI (CI=true), where a missing browser fails them.
The page polls every ``?interval=`` ms (300 here) instead of its 2 s, so the tests are quick.

The Playwright tests are plain (sync) functions: sync Playwright refuses to run inside a
running asyncio loop, and these tests have none.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pytest

from leveret.broker import Config
from leveret.broker.http.dashboard import FILES, STATIC_FOLDER, STATIC_PACKAGE
from leveret.testing import SubprocessBroker, free_port
from tests.httpapi import Api

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("LEVERET_CHROMIUM", "/usr/bin/chromium")
# as this machine needs them: no sandbox (root), no GPU, and no background traffic to Google
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INTERVAL_MS = 300
TIMEOUT_MS = 10_000
OTHER_VHOST = "dash/v"  # a vhost with a slash: %2F inside one path segment


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} missing in CI (interop/install.sh installs chromium; pip install -e '.[test]')")
    pytest.skip(f"{what} not found (apt-get install chromium, or set $LEVERET_CHROMIUM)")


# ---------------------------------------------------------------------------- without a browser


def test_static_files_are_package_data() -> None:
    """The page's files are found through the installed package, as the server loads them."""
    folder = resources.files(STATIC_PACKAGE).joinpath(STATIC_FOLDER)
    for name in FILES:
        assert folder.joinpath(name).is_file(), name
    index = folder.joinpath("index.html").read_text("utf-8")
    for ref in ("/static/app.js", "/static/app.css", "/static/favicon.svg"):
        assert ref in index


@pytest.fixture(scope="module")
def broker() -> Iterator[tuple[SubprocessBroker, int]]:
    http = free_port()
    cfg = Config(port=0, host="127.0.0.1", http_port=http, http_rate_interval=0.5, vhosts=["/", OTHER_VHOST])
    with SubprocessBroker(cfg) as b:
        yield b, http


def fetch(http: int, path: str, auth: str | None = "guest:guest") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{http}{path}")
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_index_and_static_files_over_http(broker: tuple[SubprocessBroker, int]) -> None:
    _, http = broker
    status, headers, body = fetch(http, "/", auth=None)  # what `curl /` gets: no login needed for the page
    assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, headers)
    assert b"<title>Leveret</title>" in body and b"/api/overview" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        status, headers, body = fetch(http, f"/static/{name}", auth=None)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and body, name
    for path in ("/static/nothing.js", "/static/index.html", "/static/..%2Fapi.py", "/static/"):
        assert fetch(http, path, auth=None)[0] == 404, path


def test_401_challenge_only_without_credentials(broker: tuple[SubprocessBroker, int]) -> None:
    """As RabbitMQ: no credentials get ``WWW-Authenticate`` (a browser may ask); wrong ones
    get only the reason, so the page shows its own error and no browser dialog."""
    _, http = broker
    status, headers, body = fetch(http, "/api/overview", auth=None)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic ")
    status, headers, body = fetch(http, "/api/overview", auth="guest:wrong")
    assert status == 401 and "WWW-Authenticate" not in headers
    assert json.loads(body) == {"error": "not_authorised", "reason": "Login failed"}


# ---------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        _missing(CHROMIUM)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (pip package)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh browser context (empty sessionStorage) with its console errors collected."""

    def __init__(self, browser: Any, http: int) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.base = f"http://127.0.0.1:{http}/?interval={INTERVAL_MS}"

    def login(self, user: str, password: str) -> None:
        p = self.page
        p.fill("#login-user", user)
        p.fill("#login-password", password)
        p.click("#login-submit")

    def nav(self, view: str) -> None:
        self.page.click(f'#nav a[data-view="{view}"]')


@pytest.fixture
def page(browser: Any, broker: tuple[SubprocessBroker, int]) -> Iterator[Page]:
    pg = Page(browser, broker[1])
    try:
        yield pg
    finally:
        pg.context.close()


def pika_connection(b: SubprocessBroker, vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", b.port, vhost, pika.PlainCredentials("guest", "guest")))


def call(http: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return Api("127.0.0.1", http).call(method, path.removeprefix("/api"), body)


def api_get(http: int, path: str) -> Any:
    status, _, body = fetch(http, "/api" + path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def painted(page: Any, canvas_id: str, rgb: tuple[int, int, int]) -> int:
    """How many pixels of the canvas are (nearly) the colour of a chart line."""
    return page.evaluate("""([id, rgb]) => {
        const c = document.getElementById(id);
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] > 200 && Math.abs(d[i] - rgb[0]) + Math.abs(d[i + 1] - rgb[1]) + Math.abs(d[i + 2] - rgb[2]) < 30) n++;
        }
        return n;
    }""", [canvas_id, list(rgb)])


@pytest.mark.slow
@pytest.mark.external
def test_dashboard_end_to_end(broker: tuple[SubprocessBroker, int], page: Page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    b, http = broker
    p = page.page
    n = 25
    p.goto(page.base)
    expect(p.locator("#login")).to_be_visible()
    page.login("guest", "guest")
    expect(p.locator("#app")).to_be_visible()
    expect(p.locator("#whoami")).to_have_text("guest")
    expect(p.locator("#ov-ready")).to_have_text("0")

    page.nav("queues")
    conn = pika_connection(b)
    try:
        ch = conn.channel()
        ch.queue_declare("dash.q")
        ch.queue_bind("dash.q", "amq.direct", "dash.rk")
        row = p.locator('#queues-table tr[data-vhost="/"][data-queue="dash.q"]')
        expect(row).to_be_visible()
        # the queue fills as the test publishes: the page follows
        for i in range(10):
            ch.basic_publish("", "dash.q", f"msg-{i}".encode())
        expect(row.locator("td.ready")).to_have_text("10")
        for i in range(10, n):
            ch.basic_publish("", "dash.q", f"msg-{i}".encode())
        expect(row.locator("td.ready")).to_have_text(str(n))
        expect(row.locator("td.total")).to_have_text(str(n))
        expect(row.locator("td.type")).to_have_text("classic")
        # a stream: its type and the messages in it (acks remove nothing)
        ch.queue_declare("dash.s", durable=True, arguments={"x-queue-type": "stream"})
        for _ in range(3):
            ch.basic_publish("", "dash.s", b"s")
        srow = p.locator('#queues-table tr[data-vhost="/"][data-queue="dash.s"]')
        expect(srow.locator("td.type")).to_have_text("stream")
        expect(srow.locator("td.total")).to_have_text("3")
        ch.queue_delete("dash.s")  # (the overview's counts below are dash.q's alone)

        # the queue page: vhost "/" as %2F
        row.locator("a").click()
        p.wait_for_url(lambda u: u.endswith("#/queue/%2F/dash.q"))
        expect(p.locator("#queue-name")).to_have_text("dash.q")
        expect(p.locator("#q-ready")).to_have_text(str(n))

        # publish through the form (amq.default, routing key = the queue's name)
        p.fill("#publish-payload", "from the page <b>not bold</b>")
        p.click("#publish-submit")
        expect(p.locator("#publish-result")).to_have_text("Message published")
        expect(p.locator("#q-ready")).to_have_text(str(n + 1))

        # get one, requeued: its payload shown, the count unchanged
        p.fill("#get-count", "1")
        p.select_option("#get-ackmode", "ack_requeue_true")
        p.click("#get-submit")
        expect(p.locator("#get-result pre.payload")).to_have_text(["msg-0"])
        expect(p.locator("#q-ready")).to_have_text(str(n + 1))
        # all of them: the page's message last, its markup shown as text
        p.fill("#get-count", str(n + 1))
        p.click("#get-submit")
        payloads = p.locator("#get-result pre.payload")
        expect(payloads).to_have_count(n + 1)
        expect(payloads.last).to_have_text("from the page <b>not bold</b>")
        assert p.locator("#get-result b", has_text="not bold").count() == 0
        expect(p.locator("#q-ready")).to_have_text(str(n + 1))

        # purge through the page, accepting its confirm dialog
        dialogs: list[str] = []

        def accept(d: Any) -> None:
            dialogs.append(d.message)
            d.accept()

        p.once("dialog", accept)
        p.click("#purge-submit")
        expect(p.locator("#purge-result")).to_have_text("Queue purged")
        assert len(dialogs) == 1 and "dash.q" in dialogs[0], dialogs
        expect(p.locator("#q-ready")).to_have_text("0")
        assert ch.queue_declare("dash.q", passive=True).method.message_count == 0
        assert api_get(http, "/queues/%2F/dash.q")["messages"] == 0

        # connections and channels: the pika connection
        page.nav("connections")
        conns = p.locator("#connections-table tbody tr")
        expect(conns.filter(has_text="Pika Python Client Library")).to_have_count(1)
        expect(conns.first).to_contain_text("guest")
        expect(p.locator("#channels-table tbody tr").filter(has_text="(1)")).to_have_count(1)

        # exchanges, and an exchange's source bindings; a delayed exchange shows what it holds
        ch.exchange_declare("dash.later", "x-delayed-message", arguments={"x-delayed-type": "direct"})
        for _ in range(2):
            ch.basic_publish("dash.later", "k", b"m", pika.BasicProperties(headers={"x-delay": 600_000}))
        page.nav("exchanges")
        direct = p.locator('#exchanges-table tr[data-vhost="/"][data-exchange="amq.direct"]')
        expect(direct).to_contain_text("direct")
        later = p.locator('#exchanges-table tr[data-vhost="/"][data-exchange="dash.later"]')
        expect(later).to_contain_text("x-delayed-message")
        expect(later).to_contain_text("2 delayed")
        direct.locator("a").click()
        p.wait_for_url(lambda u: u.endswith("#/exchange/%2F/amq.direct"))
        expect(p.locator("#exchange-name")).to_have_text("amq.direct")
        expect(p.locator("#exchange-bindings tbody td")).to_have_text(["dash.q", "queue", "dash.rk", "{}"])
        p.locator('#exchanges-table tr[data-vhost="/"][data-exchange=""] a').click()
        p.wait_for_url(lambda u: u.endswith("#/exchange/%2F/amq.default"))
        expect(p.locator("#exchange-name")).to_have_text("(AMQP default)")

        # the overview with live charts: publish at a steady pace while it is shown
        page.nav("overview")
        expect(p.locator("#ov-connections")).to_have_text("1")
        for _ in range(12):
            for i in range(20):
                ch.basic_publish("", "dash.q", f"live-{i}".encode())
            conn.process_data_events(time_limit=0.25)
        expect(p.locator("#ov-ready")).to_have_text("240")
        expect(p.locator("#lg-ready")).to_have_text("240")
        # the node's memory: the 240 bodies (12 x (10 x 6 + 10 x 7) bytes), the budget
        expect(p.locator("#mem-binary")).to_have_text("1.5 KiB")
        expect(p.locator("#mem-budget")).to_contain_text("/ 256.0 MiB")
        expect(p.locator("#mem-share")).to_have_text("1 (256.0 MiB)")
        p.wait_for_timeout(3 * INTERVAL_MS)
        assert painted(p, "chart-rates", (0x2F, 0x6F, 0x5E)) > 100  # the publish line
        assert painted(p, "chart-queued", (0x2F, 0x6F, 0x5E)) > 100  # the ready line
        p.screenshot(path=tmp_path / "dashboard.png", full_page=True)
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        ch.queue_delete("dash.q")
    finally:
        conn.close()
    assert page.errors == []


@pytest.mark.external
def test_wrong_password_shows_the_reason(broker: tuple[SubprocessBroker, int], page: Page) -> None:
    from playwright.sync_api import expect

    p = page.page
    p.goto(page.base)
    page.login("guest", "not-the-password")
    expect(p.locator("#login-error")).to_have_text("Login failed")
    expect(p.locator("#app")).to_be_hidden()
    assert p.evaluate("sessionStorage.getItem('leveret.auth')") is None
    page.login("guest", "guest")
    expect(p.locator("#app")).to_be_visible()
    # the one expected console line: the browser's own note of the 401 response
    assert [e for e in page.errors if "status of 401" not in e] == [], page.errors
    # logged in, a reload keeps the session; logging out forgets it
    p.reload()
    expect(p.locator("#app")).to_be_visible()
    p.click("#logout")
    expect(p.locator("#login")).to_be_visible()
    assert p.evaluate("sessionStorage.getItem('leveret.auth')") is None


@pytest.mark.external
def test_names_are_text_and_vhosts_are_encoded(broker: tuple[SubprocessBroker, int], page: Page) -> None:
    """A queue named like markup is shown as its name, in a vhost whose name has a slash.
    (Declared and filled through the API: pika's queue.declare-ok of such a name fails.)"""
    from playwright.sync_api import expect

    _, http = broker
    name = '<img src=x onerror="window.pwned=1">&amp;'
    qpath = "/api/queues/" + quote(OTHER_VHOST, safe="") + "/" + quote(name, safe="")
    assert call(http, "PUT", qpath, {"durable": False})[0] == 201
    status, body = call(http, "POST", "/api/exchanges/" + quote(OTHER_VHOST, safe="") + "/amq.default/publish",
                        {"routing_key": name, "payload": "<script>window.pwned=2</script>", "properties": {}})
    assert (status, body) == (200, {"routed": True})
    try:
        p = page.page
        p.goto(page.base + "#/queues")
        page.login("guest", "guest")
        link = p.get_by_role("link", name=name, exact=True)
        expect(link).to_be_visible()
        expect(p.locator("#queues-table tbody tr", has=link).locator("td.ready")).to_have_text("1")
        link.click()
        expect(p.locator("#queue-name")).to_have_text(name)
        assert "#/queue/dash%2Fv/" in p.url, p.url
        expect(p.locator("#q-ready")).to_have_text("1")
        p.click("#get-submit")
        expect(p.locator("#get-result pre.payload")).to_have_text(["<script>window.pwned=2</script>"])
        assert p.evaluate("window.pwned") is None
        assert p.locator("#view img").count() == 0
    finally:
        call(http, "DELETE", qpath)
    assert page.errors == []


def test_queue_and_exchange_pages_show_the_policy(broker: tuple[SubprocessBroker, int], page: Page) -> None:
    from playwright.sync_api import expect

    _, http = broker
    assert call(http, "PUT", "/api/queues/%2F/dashpol.q", {"durable": False})[0] == 201
    assert call(http, "PUT", "/api/exchanges/%2F/dashpol.x", {"type": "fanout", "durable": False})[0] == 201
    body = {"pattern": r"^dashpol\.", "definition": {"max-length": 7, "alternate-exchange": "amq.fanout"}}
    assert call(http, "PUT", "/api/policies/%2F/dashpol", body)[0] == 201
    op = {"pattern": r"^dashpol\.", "definition": {"max-length": 3}, "apply-to": "queues"}
    assert call(http, "PUT", "/api/operator-policies/%2F/dashcap", op)[0] == 201
    try:
        p = page.page
        p.goto(page.base + "#/queue/%2F/dashpol.q")
        page.login("guest", "guest")
        expect(p.locator("#q-policy")).to_have_text("dashpol")
        expect(p.locator("#q-operator-policy")).to_have_text("dashcap")
        expect(p.locator("#q-effective-policy")).to_have_text('{"alternate-exchange":"amq.fanout","max-length":3}')
        page.nav("exchanges")
        row = p.locator('#exchanges-table tr[data-vhost="/"][data-exchange="dashpol.x"]')
        expect(row.locator("td.x-policy")).to_have_text("dashpol")
        # the policy deleted: the pages follow
        assert call(http, "DELETE", "/api/policies/%2F/dashpol")[0] == 204
        expect(row.locator("td.x-policy")).to_have_text("")
    finally:
        call(http, "DELETE", "/api/operator-policies/%2F/dashcap")
        call(http, "DELETE", "/api/policies/%2F/dashpol")
        call(http, "DELETE", "/api/queues/%2F/dashpol.q")
        call(http, "DELETE", "/api/exchanges/%2F/dashpol.x")


def test_overview_rate_cards_and_chart_legend_show_one_rate(broker: tuple[SubprocessBroker, int], page: Page) -> None:
    """The Publish card showed the API's publish_details.rate (sampled by the broker every
    http_rate_interval) while the chart legend beside it showed the page's own rate between
    polls: two figures for one thing (959.9/s and 798.4/s).  Both are now the page's rate,
    the chart's latest point."""
    from playwright.sync_api import expect

    b, _ = broker
    p = page.page
    p.goto(page.base)
    page.login("guest", "guest")
    expect(p.locator("#app")).to_be_visible()
    conn = pika_connection(b)
    seen: list[dict[str, str]] = []
    try:
        ch = conn.channel()
        ch.queue_declare("dash.rates")
        ch.basic_consume("dash.rates", lambda c, m, pr, body: None, auto_ack=True)
        for round_ in range(16):
            # an uneven pace, so that rates over different windows differ
            for i in range(10 + 15 * (round_ % 3)):
                ch.basic_publish("", "dash.rates", b"r%d" % i)
            conn.process_data_events(time_limit=0)
            p.wait_for_timeout(200)
            seen.append(p.evaluate("""() => Object.fromEntries(
                ["ov-publish", "lg-publish", "ov-deliver", "lg-deliver", "ov-ack", "lg-ack", "updated"].map(
                    (id) => [id, document.getElementById(id).textContent]))"""))
        ch.queue_delete("dash.rates")
    finally:
        conn.close()
    moving = [s for s in seen if s["lg-publish"] not in ("", "0.0/s")]
    assert len(moving) >= 5, seen
    for s in seen:
        assert (s["ov-publish"], s["ov-deliver"], s["ov-ack"]) == (s["lg-publish"], s["lg-deliver"], s["lg-ack"]), s
    assert page.errors == []


def test_shovels_listed_with_state_and_counts(broker: tuple[SubprocessBroker, int], page: Page) -> None:
    from playwright.sync_api import expect

    b, http = broker
    api = Api("127.0.0.1", http)
    conn = pika_connection(b)
    try:
        ch = conn.channel()
        ch.queue_declare("dash.sh.src")
        for i in range(7):
            ch.basic_publish("", "dash.sh.src", f"m{i}".encode())
        value = {"src-uri": "amqp://", "src-queue": "dash.sh.src", "dest-uri": "amqp://", "dest-queue": "dash.sh.dst"}
        assert api.call("PUT", "/parameters/shovel/%2F/dash-shovel", {"value": value})[0] == 201
        p = page.page
        p.goto(page.base)
        page.login("guest", "guest")
        page.nav("shovels")
        row = p.locator('#shovels-table tr[data-vhost="/"][data-shovel="dash-shovel"]')
        expect(row.locator("td.state")).to_have_text("running")
        expect(row.locator("td.forwarded")).to_have_text("7")
        assert api.call("DELETE", "/parameters/shovel/%2F/dash-shovel")[0] == 204
        expect(p.locator("#shovels-table td.empty")).to_have_text("no shovels")
    finally:
        conn.close()
