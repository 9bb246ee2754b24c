"""Leveret's version has one home (``leveret.__version__`` in leveret/__init__.py), and every
place that shows a version shows that one: ``leveret --version``, ``python -m leveret
--version``, ``leveret-ctl version`` / ``--version``, the server's connection.start
``version`` property, the HTTP API's overview (``product_version``), Prometheus'
``rabbitmq_build_info`` and the installed package's metadata (pyproject.toml reads it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version as installed_version
from pathlib import Path

import pika
import pytest

import leveret
from leveret.broker import Config
from leveret.testing import BrokerThread, free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VERSION = leveret.__version__


def script(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is not installed beside {sys.executable}"
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerThread]:
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0, prometheus_port=0)) as b:
        yield b


def test_the_version_has_one_home() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", VERSION), VERSION
    literal = re.compile(rf"""["']{re.escape(VERSION)}["']""")
    found = []
    for folder in ("broker", "protocol", "storage", "leveret"):
        for path in (REPO / folder).rglob("*.py"):
            if literal.search(path.read_text(encoding="utf-8")):
                found.append(path.relative_to(REPO).as_posix())
    pyproject = (REPO / "pyproject.toml").read_text()
    if literal.search(pyproject):
        found.append("pyproject.toml")
    assert found == ["leveret/__init__.py"], f"the version {VERSION!r} is written in {found}"
    assert 'dynamic = ["version"]' in pyproject and 'attr = "leveret.__version__"' in pyproject
    assert installed_version("leveret") == VERSION


@pytest.mark.parametrize("argv", [["leveret"], [sys.executable, "-m", "leveret"]], ids=["script", "python -m"])
def test_leveret_version(argv: list[str]) -> None:
    if argv == ["leveret"]:
        argv = [script("leveret")]
    r = run(*argv, "--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"leveret {VERSION}\n", "")


def test_leveret_ctl_version_without_a_node() -> None:
    port = free_port()  # nothing listens there: the tool's own version, and no error
    r = run(script("leveret-ctl"), "-H", "127.0.0.1", "-P", str(port), "version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{VERSION}\n", "")
    r = run(sys.executable, "-m", "leveret.ctl", "-P", str(port), "--formatter", "json", "version")
    assert r.returncode == 0 and json.loads(r.stdout) == {"version": VERSION, "node": None}
    r = run(script("leveret-ctl"), "--version")
    assert (r.returncode, r.stdout) == (0, f"leveret-ctl {VERSION}\n")
    r = run(script("leveret-ctl"), "help")
    assert re.search(r"^    version +Displays this tool's version", r.stdout, re.M), r.stdout


def test_leveret_ctl_version_with_the_node(broker: BrokerThread) -> None:
    assert broker.broker is not None
    http = broker.broker.http_port
    r = run(script("leveret-ctl"), "-H", "127.0.0.1", "-P", str(http), "version")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    first, node = r.stdout.splitlines()
    assert first == VERSION  # as `rabbitmqctl version` prints its own version, alone
    assert re.fullmatch(rf"node leveret@\S+: Leveret {re.escape(VERSION)} \(RabbitMQ 3\.10\.8\)", node), node
    r = run(script("leveret-ctl"), "-H", "127.0.0.1", "-P", str(http), "--formatter", "json", "version")
    out = json.loads(r.stdout)
    assert out["version"] == VERSION
    assert out["node"]["product_name"] == "Leveret" and out["node"]["product_version"] == VERSION
    assert out["node"]["rabbitmq_version"] == "3.10.8" and out["node"]["name"].startswith("leveret@")


def test_the_server_shows_the_version(broker: BrokerThread) -> None:
    assert broker.broker is not None
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    try:
        props = conn._impl.server_properties  # what connection.start carried
    finally:
        conn.close()
    assert props["product"] == "Leveret" and props["version"] == VERSION
    request = urllib.request.Request(f"http://127.0.0.1:{broker.broker.http_port}/api/overview",
                                     headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    with urllib.request.urlopen(request, timeout=10) as r:
        overview = json.load(r)
    assert overview["product_version"] == VERSION and overview["rabbitmq_version"] == "3.10.8"
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.broker.prometheus_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    [build] = [line for line in metrics.splitlines() if line.startswith("rabbitmq_build_info{")]
    assert f'product_version="{VERSION}"' in build and 'rabbitmq_version="3.10.8"' in build
