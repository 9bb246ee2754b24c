"""What README.md and docs/ say about this tree is true of it (issue 19: what a newcomer
trips on): the commands they say are missing, the Layout table, the list of what a test
broker lacks compared with RabbitMQ (checked against a running broker), and the README's
Figures section (one current table, the history in bench/RESULTS.md).

The code blocks themselves are run or checked by tests/test_docs_code_blocks.py."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from leveret.broker import Config
from leveret.testing import BrokerThread

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(text: str, heading: str) -> str:
    """The body of a markdown section (up to the next heading of its level or above)."""
    match = re.search(rf"^(#+) {re.escape(heading)}[^\n]*\n", text, re.M)
    assert match, f"no section {heading!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, match.end())
    return text[match.end(): end.start() if end else len(text)]


# ---------------------------------------------------------------------- commands, layout


def test_no_document_says_an_installed_command_is_missing() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = " ".join(path.read_text().split())  # a sentence may be broken across lines
        for name in scripts:
            for pattern in (rf"[Tt]here is no `{name}`", rf"no `{name}` command", rf"`{name}` does not exist"):
                assert not re.search(pattern, text), f"{path.name} says {name} is missing: it is installed"


def test_the_readme_layout_names_every_folder_and_package() -> None:
    layout = section(README, "Layout")
    rows = re.findall(r"^\| `([^`]+)/` \|", layout, re.M)
    packages = sorted(
        p.parent.relative_to(REPO).as_posix()
        for p in (REPO / "leveret").glob("*/__init__.py")
    )
    assert packages, "no subpackage of leveret/ found"
    for folder in ["protocol", "broker", "storage", "leveret", *packages, "tests", "interop", "bench", "docs"]:
        assert folder in rows, f"README's Layout table has no row for {folder}/ (rows: {rows})"
    for doc in sorted((REPO / "docs").glob("*.md")):
        assert doc.name in layout, f"README's Layout row for docs/ does not name {doc.name}"


# ---------------------------------------------------------------------- differences from RabbitMQ

AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0, prometheus_port=0)) as b:
        yield b


def http(broker: BrokerThread, method: str, path: str, body: object = None, port: int | None = None) -> int:
    assert broker.broker is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port or broker.broker.http_port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": AUTH, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def exchange_type_exists(broker: BrokerThread, kind: str) -> bool:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    try:
        conn.channel().exchange_declare(f"docs-probe-{kind}", kind, arguments={"x-delayed-type": "direct"})
        return True
    except pika.exceptions.ConnectionClosedByBroker as exc:
        assert exc.reply_code == 503 and "unknown exchange type" in exc.reply_text, exc
        return False
    finally:
        if conn.is_open:
            conn.close()


def queue_type_is_served(broker: BrokerThread, kind: str) -> bool:
    """A queue declared with ``x-queue-type: kind`` is reported as that type (not classic)."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    try:
        conn.channel().queue_declare(f"docs-probe-{kind}", durable=True, arguments={"x-queue-type": kind})
    finally:
        conn.close()
    assert broker.broker is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.broker.http_port}/api/queues/%2F/docs-probe-{kind}",
        headers={"Authorization": AUTH})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)["type"] == kind


def cli_mentions(word: str) -> bool:
    r = subprocess.run([sys.executable, "-m", "leveret", "--help"], capture_output=True, text=True, timeout=60)
    return word in r.stdout.lower()


# the phrase the guide uses -> does this tree have it (asked of a running broker)
PROBES: dict[str, Callable[[BrokerThread], bool]] = {
    "management HTTP API": lambda b: http(b, "GET", "/api/overview") == 200,
    "Prometheus": lambda b: http(b, "GET", "/metrics", port=b.broker.prometheus_port) == 200,  # type: ignore[union-attr]
    "`x-delayed-message`": lambda b: exchange_type_exists(b, "x-delayed-message"),
    "`x-consistent-hash`": lambda b: exchange_type_exists(b, "x-consistent-hash"),
    "quorum queues": lambda b: queue_type_is_served(b, "quorum"),
    "streams": lambda b: queue_type_is_served(b, "stream"),
    "policies": lambda b: http(b, "PUT", "/api/policies/%2F/docs-probe", {"pattern": "^x$", "definition": {"max-length": 1}}) in (201, 204),
    "MQTT": lambda b: cli_mentions("mqtt"),
    "STOMP": lambda b: cli_mentions("stomp"),
}


def test_the_guide_lists_what_a_test_broker_lacks_and_only_that(broker: BrokerThread) -> None:
    guide = (REPO / "docs" / "testing.md").read_text()
    differences = " ".join(section(guide, "Differences from a real RabbitMQ").split())
    missing = re.search(r"\* Not in Leveret (.*?)(?= \* |$)", differences)
    assert missing, "docs/testing.md: no '* Not in Leveret ...' item in 'Differences from a real RabbitMQ'"
    listed = missing.group(1)
    wrong = []
    for phrase, probe in PROBES.items():
        present = probe(broker)
        if present and phrase in listed:
            wrong.append(f"{phrase}: this tree has it, the guide says it is not there")
        if not present and phrase not in listed:
            wrong.append(f"{phrase}: this tree lacks it, the guide's list does not say so")
        if present:
            assert phrase in differences, f"the guide should say that {phrase} is there"
    assert not wrong, "docs/testing.md, 'Differences from a real RabbitMQ':\n" + "\n".join(wrong)


# ---------------------------------------------------------------------- figures


def test_the_readme_figures_are_one_current_table_and_the_history_is_in_the_results_log() -> None:
    figures = section(README, "Figures")
    assert "\n### " not in figures, "README's Figures: no per-session subsections (they go to bench/RESULTS.md)"
    tables = re.findall(r"(?:^\|.*\|\n)+", figures, re.M)
    assert len(tables) == 1, f"README's Figures: one table, not {len(tables)}"
    [table] = tables
    header = table.splitlines()[0]
    assert "Leveret" in header and "RabbitMQ" in header, header
    for kind in ("closed loop", "open loop", "latency", "memory"):
        assert f"**{kind}**" in table, f"README's Figures table has no {kind} rows"
    assert re.search(r"measured at [0-9a-f]{7,} on \d{4}-\d{2}-\d{2}", figures), "say which commit and date"
    for needed in ("](bench/RESULTS.md)", "![queue depth and rates over time](bench/overload.png)",
                   "python bench/bench.py", "python bench/overload.py"):
        assert needed in figures, f"README's Figures lacks {needed}"

    log = (REPO / "bench" / "RESULTS.md").read_text()
    dates = re.findall(r"^## (\d{4}-\d{2}-\d{2})", log, re.M)
    assert dates and dates == sorted(dates, reverse=True), f"bench/RESULTS.md: dated entries, newest first: {dates}"
    # the current table's figures come from the log: every number of it is in there
    numbers = set(re.findall(r"\d[\d,.]*\d|\d", "\n".join(table.splitlines()[2:])))
    # (a range such as 156–183 MB sums up a column of the log's table: each end is in it)
    unknown = {n for n in numbers if n not in log}
    assert not unknown, f"figures of README's table that bench/RESULTS.md does not have: {sorted(unknown)}"
