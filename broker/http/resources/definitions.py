"""``/api/definitions``: export and import (the rules live in ``broker/definitions.py``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

from leveret.broker.definitions import (
    DefinitionsError,
    apply_definitions,
    check_definitions,
    export_definitions,
)
from leveret.broker.http.api import (
    V,
    bad_request,
    json_ok,
    no_content,
)

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_routes(api: Api) -> None:
    r = api.route
    r(("definitions",), GET=definitions_get, POST=definitions_post)
    r(("definitions", V), GET=definitions_get, POST=definitions_post)


async def definitions_get(ctx: Ctx) -> web.Response:
    if ctx.args:
        ctx.vhost(ctx.args[0])
        if not ctx.admin:
            ctx.need_admin()
        data = export_definitions(ctx.broker, ctx.args[0])
    else:
        ctx.need_admin()
        data = export_definitions(ctx.broker)
    resp = json_ok(data)
    if ctx.request.query.get("download"):
        resp.headers["Content-Disposition"] = f'attachment; filename="{ctx.request.query["download"]}"'
    return resp


async def definitions_post(ctx: Ctx) -> web.Response:
    ctx.need_admin()
    raw = await ctx.request.read()
    ctype = ctx.request.headers.get("Content-Type", "")
    if ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
        raise bad_request("send the definitions as a JSON body")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"not valid JSON: {exc}") from None
    if ctx.args:
        vn = ctx.args[0]
        ctx.vhost(vn)
        if not isinstance(data, dict):
            raise bad_request("expected a JSON object")
        data = {k: v for k, v in data.items() if k not in ("users", "vhosts", "permissions", "topic_permissions")}
        for section in ("queues", "exchanges", "bindings", "policies", "parameters"):
            if isinstance(data.get(section), list):
                data[section] = [{**e, "vhost": vn} if isinstance(e, dict) else e for e in data[section]]
    try:
        defs = check_definitions(data, "definitions")
        apply_definitions(ctx.broker, defs, "definitions")  # (checked whole before applied)
    except DefinitionsError as exc:
        key = f"{exc.key}: " if exc.key else ""
        raise bad_request(f"{key}{exc.reason}") from None
    ctx.broker.flush_all()
    return no_content()
