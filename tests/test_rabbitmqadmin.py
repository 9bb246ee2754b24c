"""rabbitmqadmin (the v1 Python script shipped with RabbitMQ 3.x), unchanged, against a
Leveret subprocess's management API.

The script comes from Debian's rabbitmq-server package without installing RabbitMQ
(``interop/install.sh``: ``apt-get download`` + ``dpkg-deb -x``); ``$RABBITMQADMIN``
names it, else it is looked up on PATH.  Without it the tests skip, except in CI
(CI=true), where a missing script fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from leveret.broker import Config
from leveret.testing import SubprocessBroker, free_port

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SCRIPT = os.environ.get("RABBITMQADMIN") or shutil.which("rabbitmqadmin")

# rabbitmqadmin (Debian's script) as subprocesses against a broker subprocess
pytestmark = [pytest.mark.external, pytest.mark.slow]


def _missing() -> None:
    if IN_CI:
        pytest.fail("rabbitmqadmin missing in CI (interop/install.sh installs it)")
    pytest.skip("rabbitmqadmin not found (interop/install.sh, or set $RABBITMQADMIN)")


@pytest.fixture(scope="module")
def broker() -> Iterator[tuple[SubprocessBroker, int]]:
    if not SCRIPT:
        _missing()
    http = free_port()
    with SubprocessBroker(Config(port=0, host="127.0.0.1", http_port=http)) as b:
        yield b, http


def admin(broker: tuple[SubprocessBroker, int], *args: str, vhost: str | None = None) -> str:
    _, http = broker
    cmd = [sys.executable, str(SCRIPT), "-H", "127.0.0.1", "-P", str(http), "-u", "guest", "-p", "guest"]
    if vhost is not None:
        cmd += ["-V", vhost]
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def rows(broker: tuple[SubprocessBroker, int], *args: str) -> list[dict[str, object]]:
    """``-f raw_json list ...``: the rows as the script received them."""
    return json.loads(admin(broker, "-f", "raw_json", "list", *args))


def test_list_everything_with_a_client_connected(broker: tuple[SubprocessBroker, int]) -> None:
    b, _ = broker
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port, "/", pika.PlainCredentials("guest", "guest")))
    try:
        ch = conn.channel()
        ch.queue_declare("ra.listed")
        ch.queue_bind("ra.listed", "amq.direct", "rk")
        ch.basic_publish("", "ra.listed", b"m1")
        ch.basic_publish("", "ra.listed", b"m2")
        ch.basic_consume("ra.listed", lambda *a: None, consumer_tag="ra-consumer", auto_ack=False)
        conn.process_data_events(time_limit=0.3)
        out = admin(broker, "list", "queues", "name", "messages", "consumers")
        assert "ra.listed" in out and "| 2 " in out
        for kind, expect in (("exchanges", "amq.direct"), ("bindings", "ra.listed"), ("connections", "guest"),
                             ("channels", "guest"), ("consumers", "ra-consumer"), ("vhosts", "/"),
                             ("users", "administrator"), ("permissions", ".*"), ("nodes", "leveret@")):
            out = admin(broker, "list", kind)
            assert expect in out, (kind, out)
            assert "None" not in out, (kind, out)
        (qrow,) = [q for q in rows(broker, "queues") if q["name"] == "ra.listed"]
        assert (qrow["messages"], qrow["messages_unacknowledged"], qrow["consumers"]) == (2, 2, 1)
        overview = admin(broker, "show", "overview")
        assert "3.10" in overview and "queue_totals.messages" in overview
    finally:
        conn.close()
        admin(broker, "delete", "queue", "name=ra.listed")


def test_declare_publish_get_delete(broker: tuple[SubprocessBroker, int]) -> None:
    assert "queue declared" in admin(broker, "declare", "queue", "name=ra.q", "durable=false")
    assert "exchange declared" in admin(broker, "declare", "exchange", "name=ra.x", "type=topic", "durable=false")
    assert "binding declared" in admin(broker, "declare", "binding", "source=ra.x", "destination=ra.q", "routing_key=a.*")
    assert any(r["source"] == "ra.x" and r["routing_key"] == "a.*" for r in rows(broker, "bindings"))
    assert "Message published" in admin(broker, "publish", "exchange=ra.x", "routing_key=a.b", "payload=hello")
    assert "Message published but NOT routed" in admin(broker, "publish", "exchange=ra.x", "routing_key=zzz", "payload=x")
    assert "Message published" in admin(broker, "publish", "routing_key=ra.q", "payload=direct")  # amq.default
    out = admin(broker, "get", "queue=ra.q", "ackmode=ack_requeue_true")
    assert "hello" in out and "a.b" in out
    out = admin(broker, "get", "queue=ra.q", "count=5", "ackmode=ack_requeue_false")
    assert "hello" in out and "direct" in out
    assert "No items" in admin(broker, "get", "queue=ra.q", "ackmode=ack_requeue_false")
    assert "binding deleted" in admin(broker, "delete", "binding", "source=ra.x", "destination=ra.q",
                                      "destination_type=queue", "properties_key=a.*")
    assert not any(r["source"] == "ra.x" for r in rows(broker, "bindings"))
    assert "queue deleted" in admin(broker, "delete", "queue", "name=ra.q")
    assert "exchange deleted" in admin(broker, "delete", "exchange", "name=ra.x")
    names = [q["name"] for q in rows(broker, "queues")]
    assert "ra.q" not in names and "ra.x" not in [x["name"] for x in rows(broker, "exchanges")]


def test_errors_are_reported(broker: tuple[SubprocessBroker, int]) -> None:
    _, http = broker
    admin(broker, "declare", "queue", "name=ra.err", "durable=true")
    try:
        cmd = [sys.executable, str(SCRIPT), "-H", "127.0.0.1", "-P", str(http), "-u", "guest", "-p", "guest"]
        r = subprocess.run([*cmd, "declare", "queue", "name=ra.err", "durable=false"], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "inequivalent arg 'durable'" in r.stdout + r.stderr
        r = subprocess.run([*cmd[:-2], "-p", "wrong", "list", "queues"], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "Access refused" in r.stdout + r.stderr
    finally:
        admin(broker, "delete", "queue", "name=ra.err")


def test_export_and_import(broker: tuple[SubprocessBroker, int], tmp_path: Path) -> None:
    admin(broker, "declare", "vhost", "name=ra-vh")
    admin(broker, "declare", "user", "name=ra-user", "password=pw", "tags=monitoring")
    admin(broker, "declare", "permission", "vhost=ra-vh", "user=ra-user", "configure=.*", "write=.*", "read=.*")
    admin(broker, "declare", "exchange", "name=ra.ex", "type=fanout", vhost="ra-vh")
    admin(broker, "declare", "queue", "name=ra.kept", "arguments={\"x-max-length\": 3}", vhost="ra-vh")
    admin(broker, "declare", "binding", "source=ra.ex", "destination=ra.kept", vhost="ra-vh")
    path = tmp_path / "defs.json"
    assert "Exported definitions" in admin(broker, "export", str(path))
    defs = json.loads(path.read_text())
    assert {"name": "ra.kept", "vhost": "ra-vh", "durable": True, "auto_delete": False,
            "arguments": {"x-max-length": 3}} in defs["queues"]
    # gone, then back from the file
    admin(broker, "delete", "vhost", "name=ra-vh")
    admin(broker, "delete", "user", "name=ra-user")
    assert "ra-vh" not in [v["name"] for v in rows(broker, "vhosts")]
    assert "Uploaded definitions" in admin(broker, "import", str(path))
    assert "ra-vh" in [v["name"] for v in rows(broker, "vhosts")]
    assert [q["name"] for q in json.loads(admin(broker, "-f", "raw_json", "list", "queues", vhost="ra-vh"))] == ["ra.kept"]
    assert any(r["user"] == "ra-user" and r["vhost"] == "ra-vh" for r in rows(broker, "permissions"))
    bindings = json.loads(admin(broker, "-f", "raw_json", "list", "bindings", vhost="ra-vh"))
    assert any(r["source"] == "ra.ex" and r["destination"] == "ra.kept" for r in bindings)
    admin(broker, "delete", "vhost", "name=ra-vh")
    admin(broker, "delete", "user", "name=ra-user")
