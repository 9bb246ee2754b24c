"""Issue 19, "Differences from RabbitMQ that tools show": what the management API, the
Prometheus endpoint and leveret-ctl report, compared with RabbitMQ 3.10.8 (the figures and
texts below were read from a real RabbitMQ 3.10.8).  Real sockets and HTTP throughout."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from leveret.broker import Config
from leveret.testing import BrokerThread
from tests.httpapi import Api
from tests.rawamqp import RawClient, publish_frames


def connect(b: BrokerThread, vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", b.port, vhost, pika.PlainCredentials("guest", "guest")))


def api_of(b: BrokerThread) -> Api:
    assert b.broker is not None and b.broker.http_port
    return Api("127.0.0.1", b.broker.http_port)


CLASSIC = {"protocol": "amqp091", "queue_type": "rabbit_classic_queue"}


def wait_for(pred: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.02)


@pytest.fixture
def disk_broker(tmp_path: Path) -> Iterator[BrokerThread]:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, data_dir=str(tmp_path / "data"), users={"guest": "guest"})
    with BrokerThread(cfg) as b:
        yield b


# ---------------------------------------------------------------------- 1. queue JSON


def test_queue_json_counts_persistent_messages_and_bytes(disk_broker: BrokerThread, tmp_path: Path) -> None:
    """RabbitMQ 3.10.8: three persistent 10-byte messages and one transient 5-byte one in a
    durable queue give messages_persistent 3, message_bytes_persistent 30.  An ack, a
    no-ack get, and a purge take them off; a restart recovers them."""
    api = api_of(disk_broker)
    conn = connect(disk_broker)
    ch = conn.channel()
    ch.queue_declare("pq", durable=True)
    ch.queue_declare("tq")  # a transient queue: never persistent (RabbitMQ: 0)
    ch.confirm_delivery()
    for _ in range(3):
        ch.basic_publish("", "pq", b"0123456789", pika.BasicProperties(delivery_mode=2))
        ch.basic_publish("", "tq", b"0123456789", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "pq", b"01234", pika.BasicProperties(delivery_mode=1))

    def persistent(name: str) -> tuple[int, int]:
        q = api.get(f"/queues/%2F/{name}")
        return q["messages_persistent"], q["message_bytes_persistent"]

    assert persistent("pq") == (3, 30)
    assert persistent("tq") == (0, 0)
    # one delivered and unacked still counts (RabbitMQ: persistent_count covers unacked)
    method, _, body = ch.basic_get("pq")
    assert body == b"0123456789"
    assert persistent("pq") == (3, 30)
    ch.basic_ack(method.delivery_tag)
    assert wait_for(lambda: persistent("pq") == (2, 20))
    # a no-ack get takes one off at once
    ch.basic_get("pq", auto_ack=True)
    assert persistent("pq") == (1, 10)
    conn.close()

    # recovered after a restart: the persistent message is back, the transient one is not
    cfg = disk_broker.config
    disk_broker.stop()
    with BrokerThread(cfg) as b2:
        api2 = api_of(b2)
        q = api2.get("/queues/%2F/pq")
        assert (q["messages"], q["messages_persistent"], q["message_bytes_persistent"]) == (1, 1, 10)
        conn = connect(b2)
        ch = conn.channel()
        ch.basic_publish("", "pq", b"abcdefghij", pika.BasicProperties(delivery_mode=2))
        assert wait_for(lambda: api2.get("/queues/%2F/pq")["messages_persistent"] == 2)
        ch.queue_purge("pq")
        q = api2.get("/queues/%2F/pq")
        assert (q["messages"], q["messages_persistent"], q["message_bytes_persistent"]) == (0, 0, 0)
        conn.close()


def test_queue_json_nulls_as_rabbitmq(disk_broker: BrokerThread) -> None:
    """RabbitMQ 3.10.8 answers null, not "", for a queue's policy, operator_policy,
    recoverable_slaves, exclusive_consumer_tag, single_active_consumer_tag and
    head_message_timestamp when there is none; the head message's timestamp property
    when there is one; the tags of the exclusive / single active consumer."""
    api = api_of(disk_broker)
    conn = connect(disk_broker)
    ch = conn.channel()
    ch.queue_declare("plain")
    q = api.get("/queues/%2F/plain")
    for key in ("policy", "operator_policy", "recoverable_slaves", "exclusive_consumer_tag",
                "single_active_consumer_tag", "head_message_timestamp"):
        assert key in q and q[key] is None, (key, q.get(key))
    assert "slave_nodes" not in q and "synchronised_slave_nodes" not in q  # (not mirrored: absent)
    ch.basic_publish("", "plain", b"x", pika.BasicProperties(timestamp=1700000000))
    assert wait_for(lambda: api.get("/queues/%2F/plain")["head_message_timestamp"] == 1700000000)

    ch.queue_declare("sac", arguments={"x-single-active-consumer": True})
    ch.basic_consume("sac", lambda *a: None, consumer_tag="active-one")
    ch.basic_consume("sac", lambda *a: None, consumer_tag="waiting-one")
    ch.queue_declare("excl")
    ch.basic_consume("excl", lambda *a: None, consumer_tag="only-me", exclusive=True)
    assert api.get("/queues/%2F/sac")["single_active_consumer_tag"] == "active-one"
    assert api.get("/queues/%2F/sac")["exclusive_consumer_tag"] is None
    assert api.get("/queues/%2F/excl")["exclusive_consumer_tag"] == "only-me"
    assert api.get("/queues/%2F/excl")["single_active_consumer_tag"] is None
    conn.close()


# ---------------------------------------------------------------------- 2. leveret-ctl


def ctl_run(b: BrokerThread, *args: str) -> subprocess.CompletedProcess[str]:
    assert b.broker is not None and b.broker.http_port
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_CTL_")}
    return subprocess.run([sys.executable, "-m", "leveret.ctl", "-H", "127.0.0.1", "-P", str(b.broker.http_port),
                           *args], capture_output=True, text=True, timeout=60, env=environ)


@pytest.fixture(scope="module")
def ctl_broker() -> Iterator[BrokerThread]:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, users={"guest": "guest"},
                 memory_high_watermark=2_000_000_000, disk_free_limit=50_000_000)
    with BrokerThread(cfg) as b:
        yield b


def test_ctl_status_in_rabbitmqctl_gb_and_names_the_node_it_talks_to(ctl_broker: BrokerThread) -> None:
    """rabbitmqctl's "gb" is 10^9 bytes (RabbitMQ 3.10.8: a disk_free_limit of 50000000 is
    "0.05 gb"); status says which product, node and URL answered."""
    r = ctl_run(ctl_broker, "status")
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert "Memory high watermark: 2.0 gb" in lines
    assert "Low free disk space watermark: 0.05 gb" in lines
    assert "Free disk space: 0.0 gb" in lines  # (no data directory)
    node = f"leveret@{socket.gethostname()}"
    assert f"Node name: {node}" in lines and "Product name: Leveret" in lines
    assert ctl_broker.broker is not None
    url = f"http://127.0.0.1:{ctl_broker.broker.http_port}"
    assert f"Management API: {url}" in lines
    banner = r.stderr.splitlines()[0]
    assert banner.startswith(f"Status of node {node} (Leveret ") and f"management API at {url}) ..." in banner
    info = json.loads(ctl_run(ctl_broker, "--formatter", "json", "status").stdout)
    assert (info["node_name"], info["product_name"], info["management_api"]) == (node, "Leveret", url)


def test_ctl_list_items_name_the_leveret_node(ctl_broker: BrokerThread) -> None:
    conn = connect(ctl_broker)
    try:
        conn.channel().queue_declare("ctl-node-q")
        r = ctl_run(ctl_broker, "-q", "--no-table-headers", "list_queues", "name", "node")
        assert r.returncode == 0, r
        assert ["ctl-node-q", f"leveret@{socket.gethostname()}"] in [ln.split("\t") for ln in r.stdout.splitlines()]
        r = ctl_run(ctl_broker, "-q", "--no-table-headers", "list_connections", "node")
        assert r.stdout.splitlines() == [f"leveret@{socket.gethostname()}"]
    finally:
        conn.close()


def test_ctl_close_connection_refuses_an_empty_name(ctl_broker: BrokerThread) -> None:
    """It sent DELETE /api/connections/ and printed "DELETE not allowed (allowed: GET)"."""
    r = ctl_run(ctl_broker, "close_connection", "", "x")
    assert r.returncode == 64, r
    assert r.stderr.splitlines()[0] == (
        "Error (argument validation): Bad argument. connection name cannot be an empty string "
        "(use the name column of list_connections)")
    assert "not allowed" not in r.stderr


# ---------------------------------------------------------------------- 6. global parameters


def rabbitmq_export() -> dict[str, Any]:
    """A definitions export as RabbitMQ 3.10.8 writes it (GET /api/definitions): its
    internal_cluster_id and a cluster_name (rabbitmqctl set_cluster_name) as global
    parameters, a policy and an operator policy (not supported by Leveret)."""
    from leveret.broker.core import access as A

    return {
        "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8", "product_name": "RabbitMQ",
        "product_version": "3.10.8",
        "users": [{"name": "guest", "password_hash": A.hash_password("guest", A.SHA256),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {}}],
        "vhosts": [{"name": "/", "description": "", "tags": [], "metadata": {"description": "", "tags": []}}],
        "permissions": [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
        "topic_permissions": [],
        "parameters": [{"value": {"pattern": "^zz", "definition": {"max-length": 2}, "priority": 0,
                                  "apply-to": "queues"}, "vhost": "/", "component": "operator_policy", "name": "o1"}],
        "global_parameters": [{"name": "cluster_name", "value": "prod-eu"},
                              {"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-I9-v6PZrI8RUEfWttn8waQ"}],
        "policies": [{"vhost": "/", "name": "p1", "pattern": "^q", "apply-to": "queues",
                      "definition": {"message-ttl": 1000}, "priority": 0}],
        "queues": [], "exchanges": [], "bindings": [],
    }


def test_rabbitmq_export_global_parameters_stored_and_exported_back(tmp_path: Path) -> None:
    """Loading RabbitMQ's own export at boot (the real command line) logged
    "global_parameters: not supported yet" twice; the global parameters are now kept
    (cluster_name names the cluster as RabbitMQ's does) and exported back, and what is
    really unsupported is logged once."""
    from leveret.testing import BrokerProcess, free_port

    defs = tmp_path / "defs.json"
    defs.write_text(json.dumps(rabbitmq_export()))
    http = free_port()
    log_path = tmp_path / "broker.log"
    with open(log_path, "wb") as log_file, BrokerProcess(
            args=["--load-definitions", str(defs), "--http-port", str(http), "--data-dir", str(tmp_path / "d")],
            stderr=log_file) as bp:
        api = Api("127.0.0.1", http)
        assert wait_for(lambda: _up(api), 10)
        exported = api.get("/definitions")
        expected = sorted(rabbitmq_export()["global_parameters"], key=lambda p: p["name"])
        assert sorted(exported["global_parameters"], key=lambda p: p["name"]) == expected
        assert sorted(api.get("/global-parameters"), key=lambda p: p["name"]) == expected
        assert api.get("/overview")["cluster_name"] == "prod-eu"
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", bp.port))
        assert conn._impl.server_properties["cluster_name"] in (b"prod-eu", "prod-eu")
        conn.close()
    text = log_path.read_text()
    assert "global_parameters" not in text, text
    assert "policies: not supported" not in text, text  # (policies are applied)
    assert text.count("parameters: not supported yet, skipped (1 entries)") == 1, text
    assert [p["name"] for p in exported["policies"]] == [p["name"] for p in rabbitmq_export()["policies"]]


def _up(api: Api) -> bool:
    try:
        return api.call("GET", "/overview")[0] == 200
    except OSError:
        return False


def test_global_parameters_survive_a_restart_and_a_node_has_its_own_cluster_id(tmp_path: Path) -> None:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, data_dir=str(tmp_path / "d"), users={"guest": "guest"})
    with BrokerThread(cfg) as b:
        api = api_of(b)
        own = api.get("/definitions")["global_parameters"]
        assert [p["name"] for p in own] == ["internal_cluster_id"] and own[0]["value"].startswith("leveret-cluster-id-")
        status, body = api.call("POST", "/definitions", {"global_parameters": [{"name": "cluster_name", "value": 7}]})
        assert (status, body["reason"]) == (400, "global_parameters[0].value: cluster_name must be a string")
        assert api.call("POST", "/definitions", {"global_parameters": [{"name": "cluster_name", "value": "c1"}]})[0] == 204
    with BrokerThread(cfg) as b:
        api = api_of(b)
        assert api.get("/definitions")["global_parameters"] == [*own, {"name": "cluster_name", "value": "c1"}]
        assert api.get("/overview")["cluster_name"] == "c1"


# ---------------------------------------------------------------------- 3. health checks


def test_health_check_virtual_hosts(tmp_path: Path) -> None:
    """RabbitMQ 3.10: GET /api/health/checks/virtual-hosts is 200 {"status": "ok"}, or 503
    {"status": "failed", "reason": "Some virtual hosts are down", "virtual-hosts": [...]}.
    A Leveret vhost is down while its durable queues cannot write their log: here the
    broker's files may not grow past 2 MiB (RLIMIT_FSIZE, so writes fail with EFBIG)."""
    import resource

    from leveret.testing import BrokerProcess, free_port

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    http = free_port()
    with BrokerProcess(args=["--http-port", str(http), "--data-dir", str(tmp_path / "d")],
                       preexec_fn=small_files, stderr=subprocess.DEVNULL) as bp:
        api = Api("127.0.0.1", http)
        assert wait_for(lambda: _up(api), 10)
        assert api.call("GET", "/health/checks/virtual-hosts") == (200, {"status": "ok"})
        assert api.call("PUT", "/vhosts/durable-vh")[0] == 201
        assert api.call("PUT", "/vhosts/other-vh")[0] == 201
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", bp.port, "durable-vh"))
        conn.channel().queue_declare("dq", durable=True)
        conn.close()

        raw = RawClient.connect(bp.port)
        raw.handshake(vhost="durable-vh")
        raw.open_channel(1)

        def publish() -> None:
            # (in a thread: once the write fails, the disk alarm stops reading this publisher)
            body = b"x" * (256 << 10)
            with contextlib.suppress(OSError):
                for _ in range(12):  # 3 MiB of persistent messages: the log cannot take them
                    raw.send(publish_frames(1, "", "dq", body, delivery_mode=2))

        threading.Thread(target=publish, daemon=True).start()
        status, answer = wait_for(lambda: (r := api.call("GET", "/health/checks/virtual-hosts"))[0] == 503 and r, 10)
        assert (status, answer) == (503, {"status": "failed", "reason": "Some virtual hosts are down",
                                          "virtual-hosts": ["durable-vh"]})
        assert api.call("GET", "/health/checks/virtual-hosts", auth="")[0] == 401
    raw.close()


# ---------------------------------------------------------------------- 4. Prometheus

#: every metric name the panels of Grafana's RabbitMQ-Overview dashboard (id 10991) query,
#: read from rabbitmq/rabbitmq-server deps/rabbitmq_prometheus/docker/grafana/dashboards/
#: RabbitMQ-Overview.json (its "expr" fields)
DASHBOARD_10991 = (
    "rabbitmq_identity_info", "rabbitmq_build_info",
    "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked", "rabbitmq_queue_messages_published_total",
    "rabbitmq_channels", "rabbitmq_channel_consumers", "rabbitmq_connections", "rabbitmq_queues",
    "rabbitmq_channel_messages_published_total", "rabbitmq_channel_messages_confirmed_total",
    "rabbitmq_channel_messages_unconfirmed", "rabbitmq_channel_messages_unroutable_dropped_total",
    "rabbitmq_channel_messages_unroutable_returned_total", "rabbitmq_channel_messages_redelivered_total",
    "rabbitmq_channel_messages_delivered_total", "rabbitmq_channel_messages_delivered_ack_total",
    "rabbitmq_channel_messages_acked_total", "rabbitmq_channel_get_total", "rabbitmq_channel_get_ack_total",
    "rabbitmq_channel_get_empty_total",
    "rabbitmq_resident_memory_limit_bytes", "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_disk_space_available_bytes", "rabbitmq_process_max_fds", "rabbitmq_process_open_fds",
    "rabbitmq_process_max_tcp_sockets", "rabbitmq_process_open_tcp_sockets",
    "rabbitmq_queues_declared_total", "rabbitmq_queues_created_total", "rabbitmq_queues_deleted_total",
    "rabbitmq_channels_opened_total", "rabbitmq_channels_closed_total",
    "rabbitmq_connections_opened_total", "rabbitmq_connections_closed_total",
)


def scrape(b: BrokerThread, path: str = "/metrics") -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    assert b.broker is not None and b.broker.prometheus_port
    with urllib.request.urlopen(f"http://127.0.0.1:{b.broker.prometheus_port}{path}", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in m[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, m.get(name))
    return found[0]


@pytest.fixture
def prom_broker() -> Iterator[BrokerThread]:
    cfg = Config(port=0, host="127.0.0.1", http_port=0, prometheus_port=0, users={"guest": "guest"},
                 vhosts=["/", "pv"])
    with BrokerThread(cfg) as b:
        yield b


def traffic(b: BrokerThread) -> None:
    """Some of everything: confirmed publishes, unroutable ones (returned and dropped),
    consumers with manual and automatic acks, gets of both kinds and an empty one, a
    requeue (redelivery), a channel closed, a failed login, and a deleted queue."""
    conn = connect(b)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("pm.q")
    for i in range(10):
        ch.basic_publish("", "pm.q", b"m%d" % i)  # 10 received in confirm mode, confirmed
    with contextlib.suppress(pika.exceptions.UnroutableError):
        ch.basic_publish("amq.direct", "nowhere", b"r", mandatory=True)  # returned
    ch.basic_publish("amq.direct", "nowhere", b"d")  # dropped
    ch2 = conn.channel()
    m, _, _ = ch2.basic_get("pm.q")  # get, manual ack
    ch2.basic_ack(m.delivery_tag)
    ch2.basic_get("pm.q", auto_ack=True)  # get, auto ack
    m, _, _ = ch2.basic_get("pm.q")
    ch2.basic_reject(m.delivery_tag, requeue=True)  # redelivered on the next delivery
    got: list[Any] = []
    ch2.basic_qos(prefetch_count=3)
    ch2.basic_consume("pm.q", lambda c, meth, p, body: got.append(meth), consumer_tag="manual")
    while len(got) < 3:
        conn.process_data_events(0.1)
    ch2.basic_cancel("manual")  # (before the acks: no more deliveries)
    for meth in got:
        ch2.basic_ack(meth.delivery_tag)  # consume, manual ack: 3 delivered, 3 acked (+1 get)
    ch3 = conn.channel()
    auto: list[Any] = []
    ch3.basic_consume("pm.q", lambda c, meth, p, body: auto.append(meth), auto_ack=True)
    while len(auto) < 5:
        conn.process_data_events(0.1)
    ch3.close()  # consume, auto ack: the other 5; a channel closed
    assert ch2.basic_get("pm.q") == (None, None, None)  # empty
    ch2.queue_declare("pm.gone")
    ch2.basic_publish("", "pm.gone", b"g")
    ch2.basic_get("pm.gone", auto_ack=True)
    ch2.queue_delete("pm.gone")  # its counters stay in the node's totals
    conn.close()
    with contextlib.suppress(pika.exceptions.AMQPError):
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", b.port, "/", pika.PlainCredentials("guest", "wrong"), connection_attempts=1))


def test_every_metric_of_grafana_dashboard_10991_is_exposed_after_traffic(prom_broker: BrokerThread) -> None:
    traffic(prom_broker)
    m = scrape(prom_broker)
    missing = [name for name in DASHBOARD_10991 if name not in m]
    assert not missing, missing
    # the counters the issue names, with the workload's figures
    c = CLASSIC
    assert one(m, "rabbitmq_global_messages_received_confirm_total", protocol="amqp091") == 12  # (+2 unroutable)
    assert one(m, "rabbitmq_global_messages_delivered_get_manual_ack_total", **c) == 2
    assert one(m, "rabbitmq_global_messages_delivered_get_auto_ack_total", **c) == 2  # (+ pm.gone's)
    assert one(m, "rabbitmq_global_messages_delivered_consume_manual_ack_total", **c) == 3
    assert one(m, "rabbitmq_global_messages_delivered_consume_auto_ack_total", **c) == 5
    assert one(m, "rabbitmq_global_messages_delivered_total", **c) == 12
    assert one(m, "rabbitmq_global_messages_get_empty_total", **c) == 1
    assert one(m, "rabbitmq_global_messages_redelivered_total", **c) == 1
    assert one(m, "rabbitmq_channels_opened_total") == 3 and one(m, "rabbitmq_channels_closed_total") == 3
    assert one(m, "rabbitmq_channel_messages_published_total") == 13
    assert one(m, "rabbitmq_channel_messages_unroutable_returned_total") == 1
    assert one(m, "rabbitmq_channel_messages_unroutable_dropped_total") == 1
    assert one(m, "rabbitmq_channel_messages_delivered_ack_total") == 3
    assert one(m, "rabbitmq_channel_messages_delivered_total") == 5
    assert one(m, "rabbitmq_channel_get_ack_total") == 2 and one(m, "rabbitmq_channel_get_total") == 2
    assert one(m, "rabbitmq_channel_messages_acked_total") == 4
    assert one(m, "rabbitmq_queue_messages_published_total") == 11
    assert one(m, "rabbitmq_auth_attempts_total", protocol="amqp091") == 2
    assert one(m, "rabbitmq_auth_attempts_failed_total", protocol="amqp091") == 1
    assert one(m, "rabbitmq_auth_attempts_succeeded_total", protocol="amqp091") == 1
    assert one(m, "rabbitmq_disk_space_available_bytes") == 0  # (no data directory, as the API's disk_free)
    assert 0 < one(m, "rabbitmq_erlang_uptime_seconds") < 600
    api_of(prom_broker).get("/overview")
    api_of(prom_broker).call("GET", "/overview", auth="Basic Z3Vlc3Q6d3Jvbmc=")  # guest:wrong
    m = scrape(prom_broker)
    assert one(m, "rabbitmq_auth_attempts_total", protocol="http") == 2
    assert one(m, "rabbitmq_auth_attempts_failed_total", protocol="http") == 1


def test_channel_gauges_per_channel_and_summed(prom_broker: BrokerThread) -> None:
    conn = connect(prom_broker)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=7)
        ch.queue_declare("pm.g")
        ch.basic_publish("", "pm.g", b"x")
        ch.basic_publish("", "pm.g", b"y")
        ch.basic_consume("pm.g", lambda *a: None, consumer_tag="holder")
        conn.process_data_events(0.3)
        m = scrape(prom_broker)
        assert one(m, "rabbitmq_channel_consumers") == 1 and one(m, "rabbitmq_channel_messages_unacked") == 2
        p = scrape(prom_broker, "/metrics/per-object")
        [(labels, unacked)] = p["rabbitmq_channel_messages_unacked"]
        assert unacked == 2 and labels["channel"].endswith(" (1)")
        assert one(p, "rabbitmq_consumer_prefetch", channel=labels["channel"]) == 7
    finally:
        conn.close()


def test_metrics_detailed_selects_families_and_vhosts(prom_broker: BrokerThread) -> None:
    """RabbitMQ 3.10: /metrics/detailed?family=queue_coarse_metrics&vhost=... serves only
    those families, names prefixed rabbitmq_detailed_, queues of those vhosts only;
    rabbitmq_identity_info always; an unknown family is ignored."""
    conn = connect(prom_broker)
    other = connect(prom_broker, "pv")
    try:
        conn.channel().queue_declare("pd.root")
        ch = other.channel()
        ch.queue_declare("pd.pv")
        ch.basic_publish("", "pd.pv", b"x")
        m = scrape(prom_broker, "/metrics/detailed?family=queue_coarse_metrics&vhost=pv")
        assert set(m) == {"rabbitmq_identity_info", "rabbitmq_build_info", "rabbitmq_detailed_queue_messages_ready",
                          "rabbitmq_detailed_queue_messages_unacked", "rabbitmq_detailed_queue_messages",
                          "rabbitmq_detailed_queue_process_reductions_total"}
        assert m["rabbitmq_detailed_queue_messages_ready"] == [({"vhost": "pv", "queue": "pd.pv"}, 1.0)]
        m = scrape(prom_broker, "/metrics/detailed?family=queue_consumer_count&family=connection_churn_metrics"
                                "&family=auth_attempt_metrics&family=node_metrics&family=bogus")
        assert {lab["queue"] for lab, _ in m["rabbitmq_detailed_queue_consumers"]} == {"pd.root", "pd.pv"}
        for name in ("rabbitmq_detailed_connections_opened_total", "rabbitmq_detailed_channels_closed_total",
                     "rabbitmq_detailed_queues_created_total", "rabbitmq_detailed_auth_attempts_total",
                     "rabbitmq_detailed_erlang_uptime_seconds", "rabbitmq_detailed_process_max_fds"):
            assert name in m, name
        assert "rabbitmq_detailed_queue_messages_ready" not in m
        assert one(m, "rabbitmq_detailed_connections_opened_total") == 2
        m = scrape(prom_broker, "/metrics/detailed?family=queue_metrics&family=channel_metrics&family=vhost_status")
        assert one(m, "rabbitmq_detailed_queue_messages_ready_bytes", vhost="pv", queue="pd.pv") == 1
        assert len(m["rabbitmq_detailed_channel_consumers"]) == 2
        assert {lab["vhost"]: v for lab, v in m["rabbitmq_cluster_vhost_status"]} == {"/": 1, "pv": 1}
        assert set(scrape(prom_broker, "/metrics/detailed")) == {"rabbitmq_identity_info", "rabbitmq_build_info"}
    finally:
        conn.close()
        other.close()
