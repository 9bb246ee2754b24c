"""``/api/aliveness-test`` and ``/api/health/checks/...``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from leveret.broker.http.api import (
    N,
    V,
    bad_request,
    encode_properties,
    json_ok,
)

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_routes(api: Api) -> None:
    r = api.route
    r(("aliveness-test", V), GET=aliveness)
    r(("health", "checks", "alarms"), GET=health_alarms)
    r(("health", "checks", "local-alarms"), GET=health_alarms)
    r(("health", "checks", "port-listener", N), GET=health_port)
    r(("health", "checks", "virtual-hosts"), GET=health_vhosts)


async def aliveness(ctx: Ctx) -> web.Response:
    vn = ctx.args[0]
    ctx.vhost(vn)
    session = ctx.session(vn)
    session.declare_queue("aliveness-test")
    session.publish("", "aliveness-test", encode_properties({}, 12), b"test_message")
    ctx.broker.flush_all()
    got = session.get_messages("aliveness-test", 1, requeue=False)
    if not got or got[0][0].body != b"test_message":
        return json_ok({"status": "failed", "reason": "the test message did not come back"}, 503)
    return json_ok({"status": "ok"})


async def health_alarms(ctx: Ctx) -> web.Response:
    b = ctx.broker
    alarms = []
    if b.memory_alarm:
        alarms.append({"node": ctx.api.node, "resource": "memory"})
    if b.disk_alarm:
        alarms.append({"node": ctx.api.node, "resource": "disk"})
    if alarms:
        return json_ok({"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                        "alarms": alarms}, 503)
    return json_ok({"status": "ok"})


async def health_vhosts(ctx: Ctx) -> web.Response:
    down = ctx.broker.vhosts_down()
    if down:
        return json_ok({"status": "failed", "reason": "Some virtual hosts are down", "virtual-hosts": down}, 503)
    return json_ok({"status": "ok"})


async def health_port(ctx: Ctx) -> web.Response:
    try:
        port = int(ctx.args[0])
    except ValueError:
        raise bad_request(f"not a port: {ctx.args[0]}") from None
    ports = sorted({lst["port"] for lst in ctx.api.listeners()})
    if port in ports:
        return json_ok({"status": "ok", "port": port})
    return json_ok({"status": "failed", "reason": "No active listener", "missing": port, "ports": ports}, 503)
