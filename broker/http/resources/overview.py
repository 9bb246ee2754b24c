"""``/api/overview``, ``/api/whoami``, ``/api/nodes``, ``/api/extensions``, ``/api/feature-flags``,
``/api/global-parameters`` and ``/api/parameters``: the node as a whole."""

from __future__ import annotations

import os
import resource
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.http.api import (
    RABBIT_VERSION,
    N,
    columns,
    json_ok,
    not_found,
)
from leveret.broker.http.resources.connections import visible_connections

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


#: RabbitMQ 3.10.8's feature flags: (name, description, provided by)
FEATURE_FLAGS = (
    ("classic_mirrored_queue_version", "Support setting version for classic mirrored queues", "rabbit"),
    ("drop_unroutable_metric", "Count unroutable publishes to be dropped in stats", "rabbitmq_management_agent"),
    ("empty_basic_get_metric", "Count AMQP `basic.get` on empty queues in stats", "rabbitmq_management_agent"),
    ("implicit_default_bindings", "Default bindings are now implicit, instead of being stored in the database",
     "rabbit"),
    ("maintenance_mode_status", "Maintenance mode status", "rabbit"),
    ("quorum_queue", "Support queues of type `quorum`", "rabbit"),
    ("stream_queue", "Support queues of type `stream`", "rabbit"),
    ("user_limits", "Configure connection and channel limits for a user", "rabbit"),
    ("virtual_host_metadata", "Virtual host metadata (description, tags, etc)", "rabbit"),
)


def add_routes(api: Api) -> None:
    r = api.route
    r(("overview",), GET=overview)
    r(("whoami",), GET=whoami)
    r(("nodes",), GET=nodes)
    r(("nodes", N), GET=node_show)
    r(("nodes", N, "memory"), GET=node_memory)
    r(("extensions",), GET=extensions)
    r(("feature-flags",), GET=feature_flags)
    r(("parameters",), GET=empty_list)
    r(("global-parameters",), GET=global_parameters)


async def overview(ctx: Ctx) -> web.Response:
    b = ctx.broker
    vhosts = ctx.visible_vhosts()
    conns = [c for c in visible_connections(ctx)]
    queues = [q for vn in vhosts for q in b.vhosts[vn].queues.values()]
    # RabbitMQ: the node's figures, listeners and contexts for monitoring users only;
    # another user's overview is that of its vhosts
    monitor = ctx.monitor
    message_stats = ctx.api.rates.message_stats() if monitor else ctx.api.rates.vhosts_stats([b.vhosts[vn] for vn in vhosts])
    out: dict[str, Any] = {
        "management_version": RABBIT_VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600],
                                      "detailed": [600]},
        "exchange_types": [{"name": t, "description": "", "enabled": True}
                           for t in ("direct", "fanout", "headers", "topic")],
        "product_version": b.server_properties()["version"],
        "product_name": "Leveret",
        "rabbitmq_version": RABBIT_VERSION,
        "cluster_name": b.server_properties()["cluster_name"],
        "erlang_version": "none (Python)",
        "erlang_full_version": "none (Python)",
        "disable_stats": False,
        "enable_queue_totals": True,
        "message_stats": message_stats,
        "churn_rates": {},
        "queue_totals": ctx.api.queue_totals(vhosts),
        "object_totals": {
            "channels": sum(len(c.channels) for c in conns),
            "connections": len(conns),
            "consumers": sum(len(q.consumers) for q in queues),
            "exchanges": sum(len(b.vhosts[vn].exchanges) for vn in vhosts),
            "queues": len(queues),
        },
        "statistics_db_event_queue": 0,
    }
    if monitor:
        out["node"] = ctx.api.node
        out["listeners"] = ctx.api.listeners()
        out["contexts"] = [{"node": ctx.api.node, "description": "RabbitMQ Management", "path": "/", "port": str(port)}
                           for port in (b.http_port, b.http_tls_port) if port]
    return json_ok(out)


async def whoami(ctx: Ctx) -> web.Response:
    return json_ok({"name": ctx.user.name, "tags": list(ctx.user.tags)})


def node_info(api: Api) -> dict[str, Any]:
    b = api.broker
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        rss = 0
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = 0
    fd_total = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    disk_free = 0
    if b.config.data_dir:
        try:
            st = os.statvfs(b.config.data_dir)
            disk_free = st.f_bavail * st.f_frsize
        except OSError:
            pass
    return {
        "name": api.node, "type": "disc", "running": True, "being_drained": False,
        "mem_used": rss, "mem_limit": b.config.memory_high_watermark, "mem_alarm": b.memory_alarm,
        "disk_free": disk_free, "disk_free_limit": b.config.disk_free_limit, "disk_free_alarm": b.disk_alarm,
        "fd_used": fds, "fd_total": fd_total, "sockets_used": len(b.connections), "sockets_total": fd_total,
        "proc_used": 1, "proc_total": 1, "uptime": int((time.time() - b.started_at) * 1000),
        "os_pid": str(os.getpid()), "partitions": [], "run_queue": 0, "processors": os.cpu_count() or 1,
        "rates_mode": "basic", "net_ticktime": 60, "enabled_plugins": ["rabbitmq_management"],
        "applications": [], "contexts": [], "exchange_types": [], "auth_mechanisms": [],
        "log_files": [], "config_files": [], "cluster_links": [],
    }


async def nodes(ctx: Ctx) -> web.Response:
    ctx.need_monitor()
    return json_ok(columns(ctx.request, [node_info(ctx.api)]))


async def node_show(ctx: Ctx) -> web.Response:
    ctx.need_monitor()
    if ctx.args[0] != ctx.api.node:
        raise not_found()
    return json_ok(node_info(ctx.api))


async def node_memory(ctx: Ctx) -> web.Response:
    """RabbitMQ's memory breakdown (``Broker.memory_breakdown``), with Leveret's memory
    budget under ``budget``."""
    ctx.need_monitor()
    if ctx.args[0] != ctx.api.node:
        raise not_found()
    return json_ok(ctx.broker.memory_breakdown())


async def global_parameters(ctx: Ctx) -> web.Response:
    ctx.need_admin()  # (RabbitMQ: policymaker or above; only administrators set them)
    return json_ok([{"name": k, "value": v} for k, v in ctx.broker.global_parameters.items()])


async def extensions(ctx: Ctx) -> web.Response:
    return json_ok([])


async def feature_flags(ctx: Ctx) -> web.Response:
    """RabbitMQ 3.10.8's feature flags, all enabled (clients such as NServiceBus
    look for ``quorum_queue`` and ``stream_queue``); administrators only, as RabbitMQ."""
    ctx.need_admin()
    return json_ok([{"name": n, "desc": d, "doc_url": "", "state": "enabled", "stability": "stable",
                     "provided_by": p} for n, d, p in FEATURE_FLAGS])


async def empty_list(ctx: Ctx) -> web.Response:
    if ctx.args:
        ctx.vhost(ctx.args[0])
    return json_ok([])
