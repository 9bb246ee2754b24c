"""The Prometheus endpoint with rabbitmq_prometheus's metric names (``/metrics``
aggregated, ``/metrics/per-object`` with ``vhost``/``queue`` and ``channel`` labels,
``/metrics/detailed?family=...&vhost=...`` as RabbitMQ 3.10 selects families), so that
Grafana's RabbitMQ-Overview dashboard (10991) shows every panel: each joins on
``rabbitmq_identity_info``.  Nothing is counted here: every counter is read from where it
is counted once (exchanges, queues' backing stores, vhosts, the node, channels' confirm
numbering) and summed."""

from __future__ import annotations

import os
import resource
import socket
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from leveret.broker.server import Broker
    from leveret.broker.views import ChannelInfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
AMQP = {"protocol": "amqp091"}
CLASSIC = {"protocol": "amqp091", "queue_type": "rabbit_classic_queue"}


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# TYPE {name} {kind}")
        self.lines.append(f"# HELP {name} {help_}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _identity(b: Broker, out: _Out) -> None:
    node = f"leveret@{socket.gethostname()}"
    cluster = b.cluster_name
    permanent = str(b.global_parameters.get("internal_cluster_id", cluster))
    out.metric("rabbitmq_identity_info", "untyped", "RabbitMQ node & cluster identity info",
               [({"rabbitmq_node": node, "rabbitmq_cluster": cluster, "rabbitmq_cluster_permanent_id": permanent}, 1)])
    out.metric("rabbitmq_build_info", "untyped", "RabbitMQ & Erlang/OTP version info",
               [({"rabbitmq_version": "3.10.8", "prometheus_plugin_version": "3.10.8",
                  "prometheus_client_version": "4.6.0", "erlang_version": "none",
                  "product_name": "Leveret", "product_version": b.server_properties()["version"]}, 1)])


def _process() -> tuple[int, int]:
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        rss = fds = 0
    return rss, fds


def _disk_free(b: Broker) -> int:
    """Free bytes where the data directory is (0 without one: as the API's disk_free)."""
    if b.config.data_dir:
        try:
            st = os.statvfs(b.config.data_dir)
            return st.f_bavail * st.f_frsize
        except OSError:
            pass
    return 0


def _churn(b: Broker, out: _Out, p: str) -> None:
    """connection_churn_metrics: opened/closed counters; closed = opened minus open now."""
    opened = b.totals.stats_connections_opened
    out.metric(p + "connections_opened_total", "counter", "Total number of connections opened", [({}, opened)])
    out.metric(p + "connections_closed_total", "counter", "Total number of connections closed or terminated",
               [({}, max(opened - len(b.connections), 0))])
    ch_opened = b.totals.stats_channels_opened
    ch_open = sum(len(c.channels) for c in b.connections)
    out.metric(p + "channels_opened_total", "counter", "Total number of channels opened", [({}, ch_opened)])
    out.metric(p + "channels_closed_total", "counter", "Total number of channels closed",
               [({}, max(ch_opened - ch_open, 0))])
    out.metric(p + "queues_declared_total", "counter", "Total number of queues declared", [({}, b.totals.stats_queues_created)])
    out.metric(p + "queues_created_total", "counter", "Total number of queues created", [({}, b.totals.stats_queues_created)])
    out.metric(p + "queues_deleted_total", "counter", "Total number of queues deleted", [({}, b.totals.stats_queues_deleted)])


def _node_coarse(b: Broker, out: _Out, p: str) -> None:
    rss, fds = _process()
    out.metric(p + "process_open_fds", "gauge", "Open file descriptors", [({}, fds)])
    out.metric(p + "process_open_tcp_sockets", "gauge", "Open TCP sockets", [({}, len(b.connections))])
    out.metric(p + "process_resident_memory_bytes", "gauge", "Memory used in bytes", [({}, rss)])
    out.metric(p + "disk_space_available_bytes", "gauge", "Disk space available in bytes", [({}, _disk_free(b))])


def _node(b: Broker, out: _Out, p: str) -> None:
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    out.metric(p + "process_max_fds", "gauge", "Open file descriptors limit", [({}, limit)])
    out.metric(p + "process_max_tcp_sockets", "gauge", "Open TCP sockets limit", [({}, limit)])
    out.metric(p + "resident_memory_limit_bytes", "gauge", "Memory high watermark in bytes",
               [({}, b.config.memory_high_watermark)])
    out.metric(p + "disk_space_available_limit_bytes", "gauge", "Free disk space low watermark in bytes",
               [({}, b.config.disk_free_limit)])
    out.metric(p + "erlang_uptime_seconds", "gauge", "Node uptime", [({}, round(time.time() - b.started_at, 3))])


def _auth(b: Broker, out: _Out, p: str) -> None:
    stats = b.totals.stats_auth
    out.metric(p + "auth_attempts_total", "counter", "Total number of authorization attempts",
               [({"protocol": k}, n) for k, (n, _) in stats.items()])
    out.metric(p + "auth_attempts_succeeded_total", "counter", "Total number of successful authentication attempts",
               [({"protocol": k}, n - f) for k, (n, f) in stats.items()])
    out.metric(p + "auth_attempts_failed_total", "counter", "Total number of failed authentication attempts",
               [({"protocol": k}, f) for k, (_, f) in stats.items()])


def _channel_gauges(ch: ChannelInfo) -> tuple[int, int, int, int, int, int, int]:
    """consumers, unacked, unconfirmed, uncommitted, acks uncommitted, consumer prefetch,
    channel (global) prefetch, as rabbitmq_channel_* reports them."""
    return (ch.consumer_count, ch.messages_unacknowledged, ch.messages_unconfirmed, ch.messages_uncommitted,
            ch.acks_uncommitted, ch.prefetch_count, ch.global_prefetch_count)


CHANNEL_GAUGES = (
    ("channel_consumers", "Consumers on a channel"),
    ("channel_messages_unacked", "Delivered but not yet acknowledged messages"),
    ("channel_messages_unconfirmed", "Published but not yet confirmed messages"),
    ("channel_messages_uncommitted", "Messages received in a transaction but not yet committed"),
    ("channel_acks_uncommitted", "Message acknowledgements in a transaction not yet committed"),
    ("consumer_prefetch", "Limit of unacknowledged messages for each consumer"),
    ("channel_prefetch", "Total limit of unacknowledged messages for all consumers on a channel"),
)


def _channels(b: Broker, out: _Out, p: str, per_channel: bool) -> None:
    """channel_metrics: the gauges, per channel (``channel`` label: its name in the API)
    or summed over the node's channels."""
    infos = [i for i in (c.info() for c in list(b.connections)) if i is not None]
    rows = [(f"{c.name} ({ch.number})", _channel_gauges(ch)) for c in infos for ch in c.channels]
    for i, (name, help_) in enumerate(CHANNEL_GAUGES):
        if per_channel:
            out.metric(p + name, "gauge", help_, [({"channel": n}, g[i]) for n, g in rows])
        elif name != "consumer_prefetch":  # (RabbitMQ's aggregate has no consumer_prefetch)
            out.metric(p + name, "gauge", help_, [({}, sum(g[i] for _, g in rows))])


def _message_counters(b: Broker, out: _Out) -> None:
    """The node's message counters, each counted once where it happens (exchanges, queues,
    vhosts, channels' confirm numbering) and summed here: the rabbitmq_global_* family and,
    from the same counters, the rabbitmq_channel_* counters (RabbitMQ sums those over the
    channels open now; these are the node's totals, which never go down)."""
    totals = b.message_totals()
    received = b.stats_published
    unroutable = totals["return_unroutable"] + totals["drop_unroutable"]
    delivered = b.stats_delivered
    noack = delivered - b.queue_stat("deliver_manual")
    get = b.queue_stat("get")
    get_noack = b.queue_stat("get_noack")
    get_empty = b.queue_stat("get_empty")
    redelivered = b.queue_stat("redeliver")
    consume_auto = noack - get_noack
    consume_manual = delivered - get - consume_auto
    acked = b.stats_acked
    g = out.metric
    g("rabbitmq_global_messages_received_total", "counter", "Total number of messages received from publishers",
      [(AMQP, received)])
    g("rabbitmq_global_messages_received_confirm_total", "counter",
      "Total number of messages received from publishers expecting confirmations", [(AMQP, b.stats_received_confirm)])
    g("rabbitmq_global_messages_routed_total", "counter", "Total number of messages routed to queues or streams",
      [(AMQP, max(received - unroutable, 0))])
    g("rabbitmq_global_messages_unroutable_dropped_total", "counter",
      "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
      [(AMQP, totals["drop_unroutable"])])
    g("rabbitmq_global_messages_unroutable_returned_total", "counter",
      "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
      [(AMQP, totals["return_unroutable"])])
    g("rabbitmq_global_messages_confirmed_total", "counter", "Total number of messages confirmed to publishers",
      [(AMQP, totals["confirm"])])
    g("rabbitmq_global_messages_delivered_total", "counter", "Total number of messages delivered to consumers",
      [(CLASSIC, delivered)])
    g("rabbitmq_global_messages_delivered_consume_manual_ack_total", "counter",
      "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
      [(CLASSIC, consume_manual)])
    g("rabbitmq_global_messages_delivered_consume_auto_ack_total", "counter",
      "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
      [(CLASSIC, consume_auto)])
    g("rabbitmq_global_messages_delivered_get_manual_ack_total", "counter",
      "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
      [(CLASSIC, get - get_noack)])
    g("rabbitmq_global_messages_delivered_get_auto_ack_total", "counter",
      "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
      [(CLASSIC, get_noack)])
    g("rabbitmq_global_messages_get_empty_total", "counter",
      "Total number of times basic.get operations fetched no message", [(CLASSIC, get_empty)])
    g("rabbitmq_global_messages_redelivered_total", "counter", "Total number of messages redelivered to consumers",
      [(CLASSIC, redelivered)])
    g("rabbitmq_global_messages_acknowledged_total", "counter", "Total number of messages acknowledged by consumers",
      [(CLASSIC, acked)])
    g("rabbitmq_channel_messages_published_total", "counter",
      "Total number of messages published into an exchange on a channel", [({}, received)])
    g("rabbitmq_channel_messages_confirmed_total", "counter",
      "Total number of messages published into an exchange and confirmed on the channel", [({}, totals["confirm"])])
    g("rabbitmq_channel_messages_unroutable_returned_total", "counter",
      "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
      [({}, totals["return_unroutable"])])
    g("rabbitmq_channel_messages_unroutable_dropped_total", "counter",
      "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
      [({}, totals["drop_unroutable"])])
    g("rabbitmq_channel_process_reductions_total", "counter", "Total number of channel process reductions", [({}, 0)])
    g("rabbitmq_channel_get_ack_total", "counter",
      "Total number of messages fetched with basic.get in manual acknowledgement mode", [({}, get - get_noack)])
    g("rabbitmq_channel_get_total", "counter",
      "Total number of messages fetched with basic.get in automatic acknowledgement mode", [({}, get_noack)])
    g("rabbitmq_channel_messages_delivered_ack_total", "counter",
      "Total number of messages delivered to consumers in manual acknowledgement mode", [({}, consume_manual)])
    g("rabbitmq_channel_messages_delivered_total", "counter",
      "Total number of messages delivered to consumers in automatic acknowledgement mode", [({}, consume_auto)])
    g("rabbitmq_channel_messages_redelivered_total", "counter", "Total number of messages redelivered to consumers",
      [({}, redelivered)])
    g("rabbitmq_channel_messages_acked_total", "counter", "Total number of messages acknowledged by consumers",
      [({}, acked)])
    g("rabbitmq_channel_get_empty_total", "counter", "Total number of times basic.get operations fetched no message",
      [({}, get_empty)])
    g("rabbitmq_queue_messages_published_total", "counter", "Total number of messages published to queues",
      [({}, b.queue_stat("publish"))])


QUEUE_COARSE = (
    ("queue_messages_ready", "gauge", "Messages ready to be delivered to consumers"),
    ("queue_messages_unacked", "gauge", "Messages delivered to consumers but not yet acknowledged"),
    ("queue_messages", "gauge", "Sum of ready and unacknowledged messages"),
    ("queue_process_reductions_total", "counter", "Total number of queue process reductions"),
)

QUEUE_METRICS = (
    ("queue_consumer_capacity", "gauge", "Consumer capacity"),
    ("queue_consumer_utilisation", "gauge", "Same as consumer capacity"),
    ("queue_messages_ram", "gauge", "Ready and unacked messages stored in memory"),
    ("queue_messages_ready_ram", "gauge", "Ready messages stored in memory"),
    ("queue_messages_persistent", "gauge", "Persistent messages"),
    ("queue_messages_persistent_bytes", "gauge", "Size in bytes of persistent messages"),
    ("queue_messages_bytes", "gauge", "Size in bytes of ready and unacknowledged messages"),
    ("queue_messages_ready_bytes", "gauge", "Size in bytes of ready messages"),
    ("queue_messages_paged_out", "gauge", "Messages paged out to disk"),
    ("queue_messages_paged_out_bytes", "gauge", "Size in bytes of messages paged out to disk"),
    ("queue_process_memory_bytes", "gauge", "Memory in bytes used by the queue's messages in memory"),
)


def _queue_values(q: Any, family: str) -> tuple[float, ...]:
    s = q.store
    ready, unacked = q.reported_counts()
    if family == "coarse":
        return (ready, unacked, ready + unacked, 0)
    cap = 1.0 if q.consumers else 0.0
    in_ram = len(s.messages)
    paged = s.total() - in_ram
    return (cap, cap, in_ram + unacked, in_ram, s.persistent_count, s.persistent_bytes, s.total_bytes(),
            s.total_bytes(), paged, s.tail_bytes, s.ready_bytes)


def _queues(out: _Out, p: str, queues: list[Any], families: set[str]) -> None:
    def lab(q: Any) -> dict[str, str]:
        return {"vhost": q.vhost.name, "queue": q.name}

    if "queue_coarse_metrics" in families:
        vals = [(lab(q), _queue_values(q, "coarse")) for q in queues]
        for i, (name, kind, help_) in enumerate(QUEUE_COARSE):
            out.metric(p + name, kind, help_, [(labels, v[i]) for labels, v in vals])
    if families & {"queue_consumer_count", "queue_metrics"}:
        out.metric(p + "queue_consumers", "gauge", "Consumers on a queue", [(lab(q), len(q.consumers)) for q in queues])
    if "queue_metrics" in families:
        vals = [(lab(q), _queue_values(q, "metrics")) for q in queues]
        for i, (name, kind, help_) in enumerate(QUEUE_METRICS):
            out.metric(p + name, kind, help_, [(labels, v[i]) for labels, v in vals])
        out.metric(p + "queue_messages_published_total", "counter", "Total number of messages published to queues",
                   [(lab(q), q.store.stats_publish) for q in queues])


#: the families of /metrics/detailed (RabbitMQ 3.10's names) that Leveret serves; others
#: (per channel and exchange/queue counters, Erlang and Raft internals) are ignored, as
#: RabbitMQ ignores a family it does not know
DETAILED_FAMILIES = ("queue_coarse_metrics", "queue_consumer_count", "queue_metrics", "connection_churn_metrics",
                     "node_coarse_metrics", "node_metrics", "auth_attempt_metrics", "channel_metrics", "vhost_status")


def render_detailed(broker: Broker, families: list[str], vhosts: list[str]) -> str:
    """``/metrics/detailed?family=...&vhost=...``: the families asked for, names prefixed
    ``rabbitmq_detailed_`` (``vhost_status``: ``rabbitmq_cluster_vhost_status``); the queue
    families only for the vhosts asked for (all without ``vhost``)."""
    b = broker
    out = _Out()
    _identity(b, out)
    fam = set(families)
    p = "rabbitmq_detailed_"
    queues = [q for v in b.vhosts.values() if not vhosts or v.name in vhosts for q in v.queues.values()]
    _queues(out, p, queues, fam)
    if "connection_churn_metrics" in fam:
        _churn(b, out, p)
    if "node_coarse_metrics" in fam:
        _node_coarse(b, out, p)
    if "node_metrics" in fam:
        _node(b, out, p)
    if "auth_attempt_metrics" in fam:
        _auth(b, out, p)
    if "channel_metrics" in fam:
        _channels(b, out, p, True)
    if "vhost_status" in fam:
        down = set(b.vhosts_down())
        out.metric("rabbitmq_cluster_vhost_status", "gauge", "Whether a given vhost is running",
                   [({"vhost": v}, 0 if v in down else 1) for v in b.vhosts])
    return out.text()


def render(broker: Broker, per_object: bool) -> str:
    """``/metrics`` (aggregated) or ``/metrics/per-object`` (queues and channels labelled)."""
    b = broker
    out = _Out()
    _identity(b, out)
    conns = [c for c in b.connections if c.vhost is not None and not c.draining]
    queues = [q for v in b.vhosts.values() for q in v.queues.values()]
    consumers = sum(len(q.consumers) for q in queues)
    out.metric("rabbitmq_connections", "gauge", "Connections currently open", [({}, len(conns))])
    out.metric("rabbitmq_channels", "gauge", "Channels currently open", [({}, sum(len(c.channels) for c in conns))])
    out.metric("rabbitmq_consumers", "gauge", "Consumers currently connected", [({}, consumers)])
    out.metric("rabbitmq_queues", "gauge", "Queues available", [({}, len(queues))])
    _churn(b, out, "rabbitmq_")
    if per_object:
        _queues(out, "rabbitmq_", queues, {"queue_coarse_metrics", "queue_consumer_count"})
    else:
        per_q = [q.reported_counts() for q in queues]
        ready = sum(r for r, _ in per_q)
        unacked = sum(u for _, u in per_q)
        out.metric("rabbitmq_queue_messages_ready", "gauge", "Messages ready to be delivered to consumers", [({}, ready)])
        out.metric("rabbitmq_queue_messages_unacked", "gauge",
                   "Messages delivered to consumers but not yet acknowledged", [({}, unacked)])
        out.metric("rabbitmq_queue_messages", "gauge", "Sum of ready and unacknowledged messages", [({}, ready + unacked)])
        out.metric("rabbitmq_queue_consumers", "gauge", "Consumers on a queue", [({}, consumers)])
    _message_counters(b, out)
    _channels(b, out, "rabbitmq_", per_object)
    out.metric("rabbitmq_global_publishers", "gauge", "Current number of publishers",
               [(AMQP, sum(1 for c in conns if c.is_publisher))])
    out.metric("rabbitmq_global_consumers", "gauge", "Current number of consumers", [(AMQP, consumers)])
    _auth(b, out, "rabbitmq_")
    _node_coarse(b, out, "rabbitmq_")
    _node(b, out, "rabbitmq_")
    m = b.memory
    out.metric("leveret_memory_budget_bytes", "gauge",
               "Bytes of messages all queues together may keep in RAM (the node-wide memory budget)", [({}, m.limit)])
    out.metric("leveret_memory_budget_used_bytes", "gauge",
               "Bytes of messages the queues keep in RAM (bodies and bookkeeping)", [({}, m.used)])
    out.metric("leveret_memory_budget_queues", "gauge",
               "Queues holding messages in RAM, among which the budget is shared", [({}, m.holders)])
    out.metric("leveret_memory_queue_share_bytes", "gauge",
               "A queue's share of the budget: past it, it pages to disk", [({}, m.share)])
    out.metric("leveret_memory_trimmed_bytes_total", "counter",
               "Bytes of free heap memory given back to the system at quiet moments", [({}, m.trimmed_bytes)])
    out.metric("rabbitmq_alarms_memory_used_watermark", "gauge", "1 if the memory alarm is in effect",
               [({}, int(b.memory_alarm))])
    out.metric("rabbitmq_alarms_free_disk_space_watermark", "gauge", "1 if the disk alarm is in effect",
               [({}, int(b.disk_alarm))])
    if b.shovels.shovels or b.shovels.forwarded:
        shovel_metrics(out, b)
    return out.text()


def shovel_metrics(out: Any, b: Broker) -> None:
    """Leveret's shovels (leveret.broker.shovel): what each moved, and its state."""
    shovels = b.shovels.list_shovels()

    def lab(s: Any) -> dict[str, str]:
        return {"vhost": s.vhost, "shovel": s.name}

    out.metric("leveret_shovels", "gauge", "Dynamic shovels by state",
               [({"state": st}, sum(1 for s in shovels if s.state == st)) for st in ("running", "starting", "terminated")])
    out.metric("leveret_global_shovel_messages_forwarded_total", "counter",
               "Messages shovels published to their destinations (deleted shovels included)",
               [({}, b.shovels.forwarded)])
    out.metric("leveret_global_shovel_messages_acknowledged_total", "counter",
               "Messages shovels acknowledged at their sources (deleted shovels included)", [({}, b.shovels.acked)])
    out.metric("leveret_shovel_messages_forwarded_total", "counter",
               "Messages this shovel published to its destination", [(lab(s), s.forwarded) for s in shovels])
    out.metric("leveret_shovel_messages_acknowledged_total", "counter",
               "Messages this shovel acknowledged at its source (with on-confirm: once the destination confirmed them)",
               [(lab(s), s.acked) for s in shovels])
    out.metric("leveret_shovel_running", "gauge", "1 if the shovel is running",
               [(lab(s), int(s.state == "running")) for s in shovels])


def make_app(broker: Broker) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(broker, False).encode(), headers={"Content-Type": CONTENT_TYPE})

    async def per_object(request: web.Request) -> web.Response:
        return web.Response(body=render(broker, True).encode(), headers={"Content-Type": CONTENT_TYPE})

    async def detailed(request: web.Request) -> web.Response:
        text = render_detailed(broker, request.query.getall("family", []), request.query.getall("vhost", []))
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/per-object", per_object)
    app.router.add_get("/metrics/detailed", detailed)
    return app
