"""The Prometheus endpoint with rabbitmq_prometheus's metric names (``/metrics``
aggregated, ``/metrics/per-object`` with ``vhost``/``queue`` labels), so that Grafana's
RabbitMQ-Overview dashboard (10991) works: every panel joins on ``rabbitmq_identity_info``."""

from __future__ import annotations

import os
import resource
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from leveret.broker.server import Broker

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


def render(broker: Broker, per_object: bool) -> str:
    b = broker
    out = _Out()
    node = f"leveret@{socket.gethostname()}"
    cluster = b.server_properties()["cluster_name"]
    out.metric("rabbitmq_identity_info", "untyped", "RabbitMQ node & cluster identity info",
               [({"rabbitmq_node": node, "rabbitmq_cluster": cluster, "rabbitmq_cluster_permanent_id": cluster}, 1)])
    out.metric("rabbitmq_build_info", "untyped", "RabbitMQ & Erlang/OTP version info",
               [({"rabbitmq_version": "3.10.8", "prometheus_plugin_version": "3.10.8",
                  "prometheus_client_version": "4.6.0", "erlang_version": "none",
                  "product_name": "Leveret", "product_version": b.server_properties()["version"]}, 1)])
    conns = [c for c in b.connections if c.vhost is not None and not c.draining]
    queues = [q for v in b.vhosts.values() for q in v.queues.values()]
    consumers = sum(len(q.consumers) for q in queues)
    out.metric("rabbitmq_connections", "gauge", "Connections currently open", [({}, len(conns))])
    out.metric("rabbitmq_channels", "gauge", "Channels currently open", [({}, sum(len(c.channels) for c in conns))])
    out.metric("rabbitmq_consumers", "gauge", "Consumers currently connected", [({}, consumers)])
    out.metric("rabbitmq_queues", "gauge", "Queues available", [({}, len(queues))])
    opened = b.stats_connections_opened
    out.metric("rabbitmq_connections_opened_total", "counter", "Total number of connections opened", [({}, opened)])
    out.metric("rabbitmq_connections_closed_total", "counter", "Total number of connections closed or terminated",
               [({}, max(opened - len(b.connections), 0))])
    out.metric("rabbitmq_queues_declared_total", "counter", "Total number of queues declared",
               [({}, b.stats_queues_created)])
    out.metric("rabbitmq_queues_created_total", "counter", "Total number of queues created",
               [({}, b.stats_queues_created)])
    out.metric("rabbitmq_queues_deleted_total", "counter", "Total number of queues deleted",
               [({}, b.stats_queues_deleted)])
    per_q: list[tuple[Any, int, int]] = [(q, q.message_count, q.unacked_count) for q in queues]
    if per_object:
        def lab(q: Any) -> dict[str, str]:
            return {"vhost": q.vhost.name, "queue": q.name}

        out.metric("rabbitmq_queue_messages_ready", "gauge", "Messages ready to be delivered to consumers",
                   [(lab(q), r) for q, r, _ in per_q])
        out.metric("rabbitmq_queue_messages_unacked", "gauge", "Messages delivered to consumers but not yet acknowledged",
                   [(lab(q), u) for q, _, u in per_q])
        out.metric("rabbitmq_queue_messages", "gauge", "Sum of ready and unacknowledged messages",
                   [(lab(q), r + u) for q, r, u in per_q])
        out.metric("rabbitmq_queue_consumers", "gauge", "Consumers on a queue", [(lab(q), len(q.consumers)) for q, _, _ in per_q])
    else:
        ready = sum(r for _, r, _ in per_q)
        unacked = sum(u for _, _, u in per_q)
        out.metric("rabbitmq_queue_messages_ready", "gauge", "Messages ready to be delivered to consumers", [({}, ready)])
        out.metric("rabbitmq_queue_messages_unacked", "gauge",
                   "Messages delivered to consumers but not yet acknowledged", [({}, unacked)])
        out.metric("rabbitmq_queue_messages", "gauge", "Sum of ready and unacknowledged messages", [({}, ready + unacked)])
        out.metric("rabbitmq_queue_consumers", "gauge", "Consumers on a queue", [({}, consumers)])
    out.metric("rabbitmq_global_messages_received_total", "counter", "Total number of messages received from publishers",
               [(AMQP, b.stats_published)])
    totals = b.message_totals()
    unroutable = totals["return_unroutable"] + totals["drop_unroutable"]
    out.metric("rabbitmq_global_messages_routed_total", "counter",
               "Total number of messages routed to queues or streams", [(AMQP, max(b.stats_published - unroutable, 0))])
    out.metric("rabbitmq_global_messages_unroutable_dropped_total", "counter",
               "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
               [(AMQP, totals["drop_unroutable"])])
    out.metric("rabbitmq_global_messages_unroutable_returned_total", "counter",
               "Total number of messages published as mandatory into an exchange and returned to the publisher "
               "as unroutable", [(AMQP, totals["return_unroutable"])])
    out.metric("rabbitmq_global_messages_confirmed_total", "counter",
               "Total number of messages confirmed to publishers", [(AMQP, totals["confirm"])])
    out.metric("rabbitmq_global_messages_delivered_total", "counter", "Total number of messages delivered to consumers",
               [(CLASSIC, b.stats_delivered)])
    out.metric("rabbitmq_global_messages_acknowledged_total", "counter",
               "Total number of messages acknowledged by consumers", [(CLASSIC, b.stats_acked)])
    out.metric("rabbitmq_global_publishers", "gauge", "Current number of publishers",
               [(AMQP, sum(1 for c in conns if c.is_publisher))])
    out.metric("rabbitmq_global_consumers", "gauge", "Current number of consumers", [(AMQP, consumers)])
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        rss = fds = 0
    out.metric("rabbitmq_process_open_fds", "gauge", "Open file descriptors", [({}, fds)])
    out.metric("rabbitmq_process_max_fds", "gauge", "Open file descriptors limit",
               [({}, resource.getrlimit(resource.RLIMIT_NOFILE)[0])])
    out.metric("rabbitmq_process_resident_memory_bytes", "gauge", "Memory used in bytes", [({}, rss)])
    out.metric("rabbitmq_resident_memory_limit_bytes", "gauge", "Memory high watermark in bytes",
               [({}, b.config.memory_high_watermark)])
    if b.config.data_dir:
        try:
            st = os.statvfs(b.config.data_dir)
            out.metric("rabbitmq_disk_space_available_bytes", "gauge", "Disk space available in bytes",
                       [({}, st.f_bavail * st.f_frsize)])
        except OSError:
            pass
    out.metric("rabbitmq_disk_space_available_limit_bytes", "gauge",
               "Free disk space low watermark in bytes", [({}, b.config.disk_free_limit)])
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
    return out.text()


def make_app(broker: Broker) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(broker, False).encode(), headers={"Content-Type": CONTENT_TYPE})

    async def per_object(request: web.Request) -> web.Response:
        return web.Response(body=render(broker, True).encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/per-object", per_object)
    return app
