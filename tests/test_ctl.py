"""``leveret-ctl`` (rabbitmqctl's commands over the management HTTP API) against a Leveret
subprocess, with pika clients making and checking state.

Every command runs as its own process (``python -m leveret.ctl``), as an operator would run
it; the exit codes are checked exactly.
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
import pika.exceptions
import pytest

from leveret.broker import Config
from leveret.testing import SubprocessBroker, free_port

Broker = tuple[SubprocessBroker, int]

# every command is a process of its own: about a second or more per test
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    http = free_port()
    with SubprocessBroker(Config(port=0, host="127.0.0.1", http_port=http)) as b:
        yield b, http


def run(http: int, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        user: tuple[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cred = ["--username", user[0], "--password", user[1]] if user else []
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_CTL_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "leveret.ctl", "-H", "127.0.0.1", "-P", str(http), *cred, *args],
                          capture_output=True, text=True, input=stdin, timeout=60, env=environ)


def ctl(broker: Broker, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command that must succeed."""
    r = run(broker[1], *args, stdin=stdin)
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r


def table(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines()]


def rows(broker: Broker, *args: str) -> list[dict[str, object]]:
    """A list command's rows, through --formatter json."""
    return json.loads(ctl(broker, "--formatter", "json", *args).stdout)


def connect(broker: Broker, user: str = "guest", password: str = "guest", vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker[0].port, vhost, pika.PlainCredentials(user, password),
        connection_attempts=1, blocked_connection_timeout=None))


def ready(broker: Broker, queue: str, vhost: str = "/") -> int:
    conn = connect(broker, vhost=vhost)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


# ---------------------------------------------------------------------- installation, help


def test_console_script_is_installed_and_lists_commands() -> None:
    script = shutil.which("leveret-ctl", path=str(Path(sys.executable).parent)) or shutil.which("leveret-ctl")
    assert script, "leveret-ctl is not on PATH nor beside the interpreter"
    r = subprocess.run([script, "help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for name in ("list_queues", "add_user", "set_permissions", "purge_queue", "close_connection",
                 "export_definitions", "import_definitions", "status"):
        assert f"    {name} " in r.stdout, name
    r2 = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert r2.returncode == 0 and r2.stdout == r.stdout
    r3 = subprocess.run([script, "help", "list_queues"], capture_output=True, text=True, timeout=30)
    assert r3.returncode == 0 and "messages_unacknowledged" in r3.stdout and "Default: name messages" in r3.stdout


def test_usage_errors_exit_64() -> None:
    port = free_port()  # nothing is asked of the node for these
    r = run(port, "lst_queues")
    assert r.returncode == 64 and "Command 'lst_queues' not found" in r.stderr and "list_queues" in r.stderr
    r = run(port)
    assert r.returncode == 64 and "Commands:" in r.stderr
    r = run(port, "list_queues", "name", "bogus_item")
    assert r.returncode == 64 and "Info key(s) bogus_item are not supported" in r.stderr
    r = run(port, "set_permissions", "bob", ".*")
    assert r.returncode == 64 and "not enough arguments" in r.stderr and "set_permissions [-p <vhost>]" in r.stderr
    r = run(port, "delete_user", "a", "b")
    assert r.returncode == 64 and "too many arguments" in r.stderr
    r = run(port, "--frobnicate", "list_queues")
    assert r.returncode == 64 and "unknown option --frobnicate" in r.stderr
    r = run(port, "--formatter", "xml", "list_queues")
    assert r.returncode == 64 and "--formatter" in r.stderr


def test_node_not_running_exits_69() -> None:
    port = free_port()
    r = run(port, "list_queues")
    assert r.returncode == 69, (r.stdout, r.stderr)
    assert f"127.0.0.1:{port}" in r.stderr and "not reachable" in r.stderr
    assert r.stdout == ""
    assert run(port, "status").returncode == 69


# ---------------------------------------------------------------------- list commands


def test_list_queues_columns_header_and_banner(broker: Broker) -> None:
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("ctl.lq.a", durable=True, arguments={"x-max-length": 10})
        ch.queue_declare("ctl.lq.b", auto_delete=False)
        for i in range(3):
            ch.basic_publish("", "ctl.lq.a", f"m{i}".encode())
        ch.basic_qos(prefetch_count=1)
        ch.basic_consume("ctl.lq.a", lambda *a: None, consumer_tag="ctl-lq")  # holds one unacked
        conn.process_data_events(time_limit=0.3)

        r = ctl(broker, "list_queues")
        assert r.stderr.splitlines() == ["Timeout: 60.0 seconds ...", "Listing queues for vhost / ..."]
        t = table(r.stdout)
        assert t[0] == ["name", "messages"]
        assert ["ctl.lq.a", "3"] in t[1:] and ["ctl.lq.b", "0"] in t[1:]

        r = ctl(broker, "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers",
                "durable", "auto_delete", "exclusive", "arguments", "state")
        t = table(r.stdout)
        assert t[0] == ["name", "messages_ready", "messages_unacknowledged", "consumers", "durable",
                        "auto_delete", "exclusive", "arguments", "state"]
        by_name = {row[0]: row for row in t[1:]}
        assert by_name["ctl.lq.a"] == ["ctl.lq.a", "2", "1", "1", "true", "false", "false",
                                       '[{"x-max-length",10}]', "running"]
        assert by_name["ctl.lq.b"][1:4] == ["0", "0", "0"] and by_name["ctl.lq.b"][7] == "[]"

        # comma-separated items, no header, quiet: only the rows
        r = ctl(broker, "-q", "--no-table-headers", "list_queues", "name,messages")
        assert r.stderr == ""
        assert ["ctl.lq.a", "3"] in table(r.stdout) and ["name", "messages"] not in table(r.stdout)
        r2 = ctl(broker, "list_queues", "name,messages", "--silent")
        assert (r2.stdout, r2.stderr) == (r.stdout, "")
    finally:
        conn.close()
        ctl(broker, "delete_queue", "ctl.lq.a")
        ctl(broker, "delete_queue", "ctl.lq.b")


def test_json_formatter(broker: Broker) -> None:
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("ctl.json", arguments={"x-message-ttl": 60000})
        ch.basic_publish("", "ctl.json", b"x")
        r = ctl(broker, "--formatter", "json", "list_queues", "name", "messages", "durable", "arguments")
        assert r.stderr == ""  # no banner with json, as rabbitmqctl
        data = json.loads(r.stdout)
        (row,) = [q for q in data if q["name"] == "ctl.json"]
        assert row == {"name": "ctl.json", "messages": 1, "durable": False, "arguments": {"x-message-ttl": 60000}}
        assert all(set(q) == {"name", "messages", "durable", "arguments"} for q in data)
    finally:
        conn.close()
        ctl(broker, "delete_queue", "ctl.json")


def test_list_exchanges_bindings_consumers_connections_channels(broker: Broker) -> None:
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.exchange_declare("ctl.x", "topic", durable=False)
        ch.queue_declare("ctl.bound")
        ch.queue_bind("ctl.bound", "ctl.x", "a.*", arguments={"k": "v"})
        ch.basic_qos(prefetch_count=7)
        ch.basic_consume("ctl.bound", lambda *a: None, consumer_tag="ctl-consumer", auto_ack=False)
        conn.process_data_events(time_limit=0.2)
        local_port = conn._impl._transport._sock.getsockname()[1]

        t = table(ctl(broker, "list_exchanges").stdout)
        assert t[0] == ["name", "type"] and ["ctl.x", "topic"] in t and ["", "direct"] in t
        t = table(ctl(broker, "list_exchanges", "name", "type", "durable", "internal").stdout)
        assert ["ctl.x", "topic", "false", "false"] in t

        r = ctl(broker, "list_bindings")
        assert r.stderr.strip() == "Listing bindings for vhost /..."
        t = table(r.stdout)
        assert t[0] == ["source_name", "source_kind", "destination_name", "destination_kind", "routing_key", "arguments"]
        assert ["ctl.x", "exchange", "ctl.bound", "queue", "a.*", '[{"k","v"}]'] in t
        assert ["", "exchange", "ctl.bound", "queue", "ctl.bound", "[]"] in t  # the default exchange's
        t = table(ctl(broker, "list_bindings", "source_name", "routing_key").stdout)
        assert ["ctl.x", "a.*"] in t

        t = table(ctl(broker, "list_consumers").stdout)
        assert t[0] == ["queue_name", "channel_pid", "consumer_tag", "ack_required", "prefetch_count", "active",
                        "activity_status", "arguments"]
        (mine,) = [row for row in t[1:] if row[2] == "ctl-consumer"]
        assert mine[0] == "ctl.bound" and mine[3:] == ["true", "7", "true", "up", "[]"]
        assert f":{local_port} -> " in mine[1]

        t = table(ctl(broker, "list_connections").stdout)
        assert t[0] == ["user", "peer_host", "peer_port", "state"]
        assert ["guest", "127.0.0.1", str(local_port), "running"] in t
        conns = rows(broker, "list_connections", "name", "user", "peer_port", "channels", "vhost")
        (c,) = [c for c in conns if c["peer_port"] == local_port]
        assert c["user"] == "guest" and c["channels"] == 1 and c["vhost"] == "/"
        assert c["name"].startswith(f"127.0.0.1:{local_port} -> ")

        chans = rows(broker, "list_channels", "name", "connection", "user", "consumer_count", "prefetch_count")
        (chan,) = [x for x in chans if x["connection"] == c["name"]]
        assert chan["consumer_count"] == 1 and chan["user"] == "guest" and chan["prefetch_count"] == 7
        t = table(ctl(broker, "list_channels").stdout)
        assert t[0] == ["pid", "user", "consumer_count", "messages_unacknowledged"]
    finally:
        conn.close()
        ctl(broker, "delete_queue", "ctl.bound")
        conn = connect(broker)
        conn.channel().exchange_delete("ctl.x")
        conn.close()


def test_list_vhosts_users_permissions(broker: Broker) -> None:
    t = table(ctl(broker, "list_vhosts").stdout)
    assert t[0] == ["name"] and ["/"] in t
    t = table(ctl(broker, "list_users").stdout)
    assert t[0] == ["user", "tags"] and ["guest", "[administrator]"] in t
    t = table(ctl(broker, "list_permissions").stdout)
    assert t[0] == ["user", "configure", "write", "read"] and ["guest", ".*", ".*", ".*"] in t
    r = ctl(broker, "list_user_permissions", "guest")
    assert r.stderr.strip() == 'Listing permissions for user "guest" ...'
    assert table(r.stdout) == [["vhost", "configure", "write", "read"], ["/", ".*", ".*", ".*"]]


# ---------------------------------------------------------------------- users, vhosts, permissions


def test_user_lifecycle_takes_effect(broker: Broker) -> None:
    # the password from stdin, as rabbitmqctl does when it is left out
    r = ctl(broker, "add_user", "ctl-bob", stdin="s3cret\n")
    assert r.stderr.strip() == 'Adding user "ctl-bob" ...' and "Done." in r.stdout
    try:
        with pytest.raises(pika.exceptions.AMQPConnectionError):  # no permissions on "/" yet
            connect(broker, "ctl-bob", "s3cret")

        ctl(broker, "set_permissions", "ctl-bob", "^ctl-bob\\.", ".*", ".*")
        assert ["ctl-bob", "^ctl-bob\\.", ".*", ".*"] in table(ctl(broker, "list_permissions").stdout)
        conn = connect(broker, "ctl-bob", "s3cret")
        ch = conn.channel()
        ch.queue_declare("ctl-bob.q")  # allowed by the configure pattern
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            ch.queue_declare("elsewhere")
        assert exc.value.reply_code == 403
        conn.close()

        ctl(broker, "change_password", "ctl-bob", "n3w")
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            connect(broker, "ctl-bob", "s3cret")
        connect(broker, "ctl-bob", "n3w").close()
        ctl(broker, "change_password", "ctl-bob", stdin="n3w2\n")
        connect(broker, "ctl-bob", "n3w2").close()

        # tags: a management tag lets the user drive leveret-ctl itself; clearing them stops it
        r = run(broker[1], "list_users", user=("ctl-bob", "n3w2"))
        assert r.returncode == 77 and "authentication failed" in r.stderr
        ctl(broker, "set_user_tags", "ctl-bob", "administrator", "ops")
        assert ["ctl-bob", "[administrator, ops]"] in table(ctl(broker, "list_users").stdout)
        r = run(broker[1], "list_users", user=("ctl-bob", "n3w2"))
        assert r.returncode == 0 and "ctl-bob" in r.stdout
        r = run(broker[1], "list_users", env={"LEVERET_CTL_USER": "ctl-bob", "LEVERET_CTL_PASSWORD": "n3w2"})
        assert r.returncode == 0 and "ctl-bob" in r.stdout
        ctl(broker, "set_user_tags", "ctl-bob")
        assert ["ctl-bob", "[]"] in table(ctl(broker, "list_users").stdout)
        connect(broker, "ctl-bob", "n3w2").close()  # the password survived the tag changes

        ctl(broker, "clear_permissions", "ctl-bob")
        assert "ctl-bob" not in ctl(broker, "list_permissions").stdout
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            connect(broker, "ctl-bob", "n3w2")

        # delete_user closes the user's open connection (320) and it cannot log in again
        ctl(broker, "set_permissions", "ctl-bob", ".*", ".*", ".*")
        conn = connect(broker, "ctl-bob", "n3w2")
        r = ctl(broker, "delete_user", "ctl-bob")
        assert r.stderr.strip() == 'Deleting user "ctl-bob" ...'
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            conn.process_data_events(time_limit=5)
            conn.channel()
        assert closed.value.reply_code == 320 and "ctl-bob" in closed.value.reply_text
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            connect(broker, "ctl-bob", "n3w2")
        assert "ctl-bob" not in ctl(broker, "list_users").stdout
    finally:
        run(broker[1], "delete_user", "ctl-bob")
        ctl(broker, "delete_queue", "ctl-bob.q") if "ctl-bob.q" in ctl(broker, "list_queues").stdout else None


def test_vhost_lifecycle_and_topic_permissions(broker: Broker) -> None:
    ctl(broker, "add_vhost", "ctl-vh")
    try:
        assert ["ctl-vh"] in table(ctl(broker, "list_vhosts").stdout)
        # (Leveret gives its default user, guest, full permissions on a new vhost)
        ctl(broker, "clear_permissions", "-p", "ctl-vh", "guest")
        assert table(ctl(broker, "list_permissions", "-p", "ctl-vh").stdout)[1:] == []
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            connect(broker, vhost="ctl-vh")
        ctl(broker, "set_permissions", "-p", "ctl-vh", "guest", ".*", ".*", ".*")
        assert table(ctl(broker, "list_permissions", "-p", "ctl-vh").stdout)[1:] == [["guest", ".*", ".*", ".*"]]
        conn = connect(broker, vhost="ctl-vh")
        ch = conn.channel()
        ch.queue_declare("ctl.inner")
        ch.basic_publish("", "ctl.inner", b"1")
        conn.close()
        t = table(ctl(broker, "list_queues", "-p", "ctl-vh", "name", "messages").stdout)
        assert t == [["name", "messages"], ["ctl.inner", "1"]]
        assert "ctl.inner" not in ctl(broker, "list_queues").stdout

        ctl(broker, "set_topic_permissions", "-p", "ctl-vh", "guest", "amq.topic", "^allowed\\.", ".*")
        t = table(ctl(broker, "list_topic_permissions", "-p", "ctl-vh").stdout)
        assert t == [["user", "exchange", "write", "read"], ["guest", "amq.topic", "^allowed\\.", ".*"]]
        conn = connect(broker, vhost="ctl-vh")
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("amq.topic", "allowed.x", b"ok")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            ch.basic_publish("amq.topic", "denied.x", b"no")
        assert exc.value.reply_code == 403
        conn.close()
        ctl(broker, "clear_topic_permissions", "-p", "ctl-vh", "guest")
        assert table(ctl(broker, "list_topic_permissions", "-p", "ctl-vh").stdout)[1:] == []

        ctl(broker, "delete_vhost", "ctl-vh")
        assert ["ctl-vh"] not in table(ctl(broker, "list_vhosts").stdout)
        r = run(broker[1], "delete_vhost", "ctl-vh")
        assert r.returncode == 65 and "Virtual host 'ctl-vh' does not exist" in r.stderr
    finally:
        run(broker[1], "delete_vhost", "ctl-vh")


# ---------------------------------------------------------------------- queues, connections


def test_purge_and_delete_queue(broker: Broker) -> None:
    conn = connect(broker)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("ctl.purge")
    ch.queue_declare("ctl.del")
    for i in range(5):
        ch.basic_publish("", "ctl.purge", str(i).encode())
    for i in range(3):
        ch.basic_publish("", "ctl.del", str(i).encode())
    conn.close()
    try:
        assert ready(broker, "ctl.purge") == 5
        r = ctl(broker, "purge_queue", "ctl.purge")
        assert r.stderr.strip() == "Purging queue 'ctl.purge' in vhost '/' ..."
        assert ready(broker, "ctl.purge") == 0

        r = run(broker[1], "delete_queue", "ctl.del", "--if-empty")
        assert r.returncode == 64 and "Queue is not empty" in r.stderr
        assert ready(broker, "ctl.del") == 3
        r = ctl(broker, "delete_queue", "ctl.del")
        assert r.stdout.strip() == "Queue was successfully deleted with 3 ready messages"
        assert r.stderr.strip() == "Deleting queue 'ctl.del' on vhost '/' ..."
        conn = connect(broker)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            conn.channel().queue_declare("ctl.del", passive=True)
        assert exc.value.reply_code == 404
        conn.close()

        # --if-unused with a consumer; then deleted, --formatter json reports the count
        conn = connect(broker)
        ch = conn.channel()
        ch.queue_declare("ctl.used")
        ch.basic_consume("ctl.used", lambda *a: None)
        r = run(broker[1], "delete_queue", "ctl.used", "--if-unused")
        assert r.returncode == 64 and "Queue is in use" in r.stderr
        r = ctl(broker, "--formatter", "json", "delete_queue", "ctl.used", "--if-empty")
        assert json.loads(r.stdout) == {"result": "ok", "messages_ready": 0} and r.stderr == ""
        conn.close()
    finally:
        run(broker[1], "delete_queue", "ctl.purge")
        run(broker[1], "delete_queue", "ctl.del")


def test_close_connection(broker: Broker) -> None:
    conn = connect(broker)
    local_port = conn._impl._transport._sock.getsockname()[1]
    (c,) = [c for c in rows(broker, "list_connections", "name", "peer_port") if c["peer_port"] == local_port]
    r = ctl(broker, "close_connection", str(c["name"]), "go away, maintenance")
    assert r.stderr.strip() == f"Closing connection {c['name']}, reason: go away, maintenance..."
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        conn.process_data_events(time_limit=5)
        conn.channel()
    assert closed.value.reply_code == 320
    assert "go away, maintenance" in closed.value.reply_text
    r = run(broker[1], "close_connection", str(c["name"]), "again")
    assert r.returncode == 65 and f"Connection '{c['name']}' not found" in r.stderr


# ---------------------------------------------------------------------- definitions, status


def test_export_import_round_trip(broker: Broker, tmp_path: Path) -> None:
    conn = connect(broker)
    ch = conn.channel()
    ch.exchange_declare("ctl.defs.x", "fanout", durable=True)
    ch.queue_declare("ctl.defs.q", durable=True, arguments={"x-max-length": 5})
    ch.queue_bind("ctl.defs.q", "ctl.defs.x", "")
    conn.close()
    ctl(broker, "add_user", "ctl-defs", "pw")
    ctl(broker, "set_user_tags", "ctl-defs", "monitoring")
    ctl(broker, "add_vhost", "ctl-defs-vh")
    ctl(broker, "set_permissions", "-p", "ctl-defs-vh", "ctl-defs", "c", "w", "r")
    target = tmp_path / "defs.json"
    try:
        r = ctl(broker, "export_definitions", str(target))
        assert r.stderr.strip() == f'Exporting definitions in JSON to a file at "{target}" ...'
        defs = json.loads(target.read_text())
        assert {"name": "ctl.defs.q", "vhost": "/", "durable": True, "auto_delete": False,
                "arguments": {"x-max-length": 5}}.items() <= next(
                    q for q in defs["queues"] if q["name"] == "ctl.defs.q").items()
        assert json.loads(ctl(broker, "export_definitions", "-").stdout) == defs

        ctl(broker, "delete_queue", "ctl.defs.q")
        ctl(broker, "delete_user", "ctl-defs")
        ctl(broker, "delete_vhost", "ctl-defs-vh")
        conn = connect(broker)
        conn.channel().exchange_delete("ctl.defs.x")
        conn.close()
        assert "ctl.defs.q" not in ctl(broker, "list_queues").stdout

        r = ctl(broker, "import_definitions", str(target))
        assert r.stderr.strip() == f'Importing definitions in JSON from a file at "{target}" ...'
        assert ["ctl.defs.q", "true", '[{"x-max-length",5}]'] in table(
            ctl(broker, "list_queues", "name", "durable", "arguments").stdout)
        assert ["ctl.defs.x", "fanout"] in table(ctl(broker, "list_exchanges").stdout)
        assert ["ctl.defs.x", "ctl.defs.q"] in table(
            ctl(broker, "list_bindings", "source_name", "destination_name").stdout)
        assert ["ctl-defs", "[monitoring]"] in table(ctl(broker, "list_users").stdout)
        assert ["ctl-defs-vh", "c", "w", "r"] in table(ctl(broker, "list_user_permissions", "ctl-defs").stdout)
        # the password hash came back with the user: it logs in to its vhost
        connect(broker, "ctl-defs", "pw", vhost="ctl-defs-vh").close()
        conn = connect(broker)  # the binding routes again
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("ctl.defs.x", "", b"via-fanout")
        conn.close()
        assert ready(broker, "ctl.defs.q") == 1

        # from stdin; importing the same definitions twice changes nothing
        ctl(broker, "import_definitions", "-", stdin=target.read_text())
        assert json.loads(ctl(broker, "export_definitions", "-").stdout)["queues"] == defs["queues"]
    finally:
        run(broker[1], "delete_queue", "ctl.defs.q")
        run(broker[1], "delete_user", "ctl-defs")
        run(broker[1], "delete_vhost", "ctl-defs-vh")


def test_import_errors(broker: Broker, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run(broker[1], "import_definitions", str(bad))
    assert r.returncode == 65 and "not valid JSON" in r.stderr
    r = run(broker[1], "import_definitions", str(tmp_path / "missing.json"))
    assert r.returncode == 66 and "missing.json" in r.stderr
    r = run(broker[1], "import_definitions", "-", stdin=json.dumps({"queues": [{"name": "ctl.bad", "vhost": "/",
                                                                                 "durable": "maybe"}]}))
    assert r.returncode == 65 and "durable" in r.stderr.splitlines()[-1]
    assert "ctl.bad" not in ctl(broker, "list_queues").stdout


def test_status(broker: Broker) -> None:
    b, http = broker
    conn = connect(broker)
    try:
        r = ctl(broker, "status")
        node = json.loads(ctl(broker, "--formatter", "json", "status").stdout)
        assert r.stderr.strip() == (f"Status of node {node['node_name']} (Leveret {node['product_version']}, "
                                    f"management API at http://127.0.0.1:{http}) ...")
        assert node["node_name"].startswith("leveret@")
        out = r.stdout
        assert "RabbitMQ version: 3.10.8" in out and "Product name: Leveret" in out
        assert f"Node name: {node['node_name']}" in out
        assert f"Interface: 127.0.0.1, port: {b.port}, protocol: amqp, purpose: AMQP 0-9-1" in out
        assert f"Interface: 127.0.0.1, port: {http}, protocol: http, purpose: HTTP API" in out
        assert "Total memory used: " in out and "Uptime (seconds): " in out
        assert node["totals"]["connection_count"] >= 1 and node["totals"]["virtual_host_count"] >= 1
        assert f"Connection count: {node['totals']['connection_count']}" in out
        assert node["memory"]["used"] > 0 and node["os_pid"] and node["alarms"] == []
    finally:
        conn.close()


# ---------------------------------------------------------------------- error paths


def test_error_paths_exit_codes(broker: Broker) -> None:
    _, http = broker
    r = run(http, "purge_queue", "ctl.nope")
    assert (r.returncode, r.stderr.splitlines()[-2:]) == (69, ["Error:", "Queue 'ctl.nope' in vhost '/' not found"])
    r = run(http, "delete_queue", "ctl.nope")
    assert (r.returncode, r.stderr.splitlines()[-1]) == (64, "Queue 'ctl.nope' in vhost '/' not found")
    r = run(http, "list_queues", "-p", "ctl-no-vhost")
    assert (r.returncode, r.stderr.splitlines()[-1]) == (65, "Virtual host 'ctl-no-vhost' does not exist")
    r = run(http, "purge_queue", "-p", "ctl-no-vhost", "q")
    assert (r.returncode, r.stderr.splitlines()[-1]) == (65, "Virtual host 'ctl-no-vhost' does not exist")
    r = run(http, "delete_user", "ctl-nobody")
    assert (r.returncode, r.stderr.splitlines()[-1]) == (67, 'User "ctl-nobody" does not exist')
    r = run(http, "set_permissions", "ctl-nobody", ".*", ".*", ".*")
    assert r.returncode == 67
    r = run(http, "set_permissions", "-p", "ctl-no-vhost", "guest", ".*", ".*", ".*")
    assert r.returncode == 65
    r = run(http, "set_permissions", "guest", "(", ".*", ".*")
    assert r.returncode == 65 and "(" in r.stderr
    assert ["guest", ".*", ".*", ".*"] in table(ctl(broker, "list_permissions").stdout)  # unchanged
    r = run(http, "add_user", "guest", "x")
    assert (r.returncode, r.stderr.splitlines()[-1]) == (70, 'User "guest" already exists')
    r = run(http, "add_user", "ctl-nopass", stdin="")
    assert r.returncode == 65 and "Password is not provided" in r.stderr
    assert "ctl-nopass" not in ctl(broker, "list_users").stdout

    r = run(http, "list_queues", user=("guest", "wrong"))
    assert r.returncode == 77 and "authentication failed" in r.stderr and r.stdout == ""
    r = run(http, "list_queues", env={"LEVERET_CTL_PASSWORD": "wrong"})
    assert r.returncode == 77
    # https against the plain HTTP listener: the TLS handshake fails, the API is unreachable
    r = run(http, "--scheme", "https", "--insecure", "list_queues")
    assert r.returncode == 69 and f"https://127.0.0.1:{http}" in r.stderr


# ---------------------------------------------------------------------- certificates


def test_ctl_unreadable_cacert_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    # --cacert naming a missing or non-PEM file: rabbitmqctl's "input missing" (66) with
    # a message, not a Python traceback (exit 1)
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello\n")
    for cafile in (str(tmp_path / "missing.pem"), str(bad)):
        r = subprocess.run([sys.executable, "-m", "leveret.ctl", "--scheme", "https", "--port", "1", "--cacert", cafile,
                            "list_vhosts"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 66, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and cafile in r.stderr

