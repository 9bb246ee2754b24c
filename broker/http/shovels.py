"""The shovel part of RabbitMQ's management API (rabbitmq_shovel_management and the
``shovel`` component of ``/api/parameters``), over :class:`leveret.broker.shovel.ShovelManager`:

* ``PUT/GET/DELETE /api/parameters/shovel/{vhost}/{name}``, ``GET /api/parameters/shovel[/{vhost}]``
  -- policymaker or administrator, with access to the vhost ("User not authorised to
  access object"); a local URI (``amqp://``, no host) needs the user's access to its vhost
* ``GET /api/shovels[/{vhost}]`` -- monitoring or administrator ("Not monitor user")
* ``DELETE /api/shovels/vhost/{vhost}/{name}/restart``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.http.api import (
    HttpError,
    N,
    V,
    bad_request,
    columns,
    json_ok,
    no_content,
    not_found,
)
from leveret.broker.shovel import ShovelInvalid, parse_uri, uris, validate

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx

NOT_AUTHORISED = "User not authorised to access object"


def add_routes(api: Api) -> None:
    h = ShovelHandlers(api)
    api.route(("parameters", "shovel"), GET=h.list_parameters)
    api.route(("parameters", "shovel", V), GET=h.list_parameters)
    api.route(("parameters", "shovel", V, N), GET=h.show, PUT=h.put, DELETE=h.delete)
    api.route(("shovels",), GET=h.status)
    api.route(("shovels", V), GET=h.status)
    api.route(("shovels", "vhost", V, N, "restart"), DELETE=h.restart)


def _escape(text: str) -> str:
    # RabbitMQ's API escapes the reason as HTML
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ShovelHandlers:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.broker = api.broker

    def _policymaker(self, ctx: Ctx, vhost: str | None) -> None:

        tags = set(ctx.user.tags)
        if not tags & {"administrator", "policymaker"}:
            raise HttpError(401, "not_authorised", NOT_AUTHORISED)
        if vhost is not None and not ctx.admin and not self.broker.access.can_open(ctx.user.name, vhost):
            raise HttpError(401, "not_authorised", NOT_AUTHORISED)

    def _vhost(self, ctx: Ctx, vhost: str) -> None:

        if vhost not in self.broker.vhosts:
            raise not_found()

    def _visible(self, ctx: Ctx) -> list[str]:
        if ctx.admin:
            return list(self.broker.vhosts)
        return [v for v in self.broker.vhosts if self.broker.access.can_open(ctx.user.name, v)]

    async def list_parameters(self, ctx: Ctx) -> web.Response:

        vhost = ctx.args[0] if ctx.args else None
        self._policymaker(ctx, vhost)
        if vhost is not None:
            self._vhost(ctx, vhost)
        names = [vhost] if vhost is not None else self._visible(ctx)
        return json_ok(self.broker.shovels.parameters(names))

    async def show(self, ctx: Ctx) -> web.Response:

        vhost, name = ctx.args
        self._policymaker(ctx, vhost)
        self._vhost(ctx, vhost)
        sh = self.broker.shovels.get(vhost, name)
        if sh is None:
            raise not_found()
        return json_ok({"value": sh.value, "vhost": vhost, "component": "shovel", "name": name})

    async def put(self, ctx: Ctx) -> web.Response:

        vhost, name = ctx.args
        self._policymaker(ctx, vhost)
        if vhost not in self.broker.vhosts:
            raise HttpError(404, "not_found", "vhost_not_found")  # (RabbitMQ's words for a PUT)
        body = await ctx.body()
        if "value" not in body:
            raise bad_request("[{key_missing,value}]")
        value = body["value"]
        try:
            self.check_user_uris(ctx.user.name, name, value)
            created = self.broker.shovels.declare(vhost, name, value, owner=ctx.user.name)
        except ShovelInvalid as exc:
            raise bad_request(_escape(str(exc))) from None
        return no_content(201 if created else 204)

    def check_user_uris(self, user: str, name: str, value: Any) -> None:
        """RabbitMQ's validate_params_user: a local URI's vhost must exist and be open to
        the user (checked after the definition itself)."""
        validate(name, value)
        access = self.broker.access
        for key in ("src-uri", "dest-uri"):
            for raw in uris(value[key]):
                u = parse_uri(raw)
                if u.local and (u.vhost not in self.broker.vhosts or not access.can_open(user, u.vhost)):
                    raise ShovelInvalid(f'Validation failed\n\nuser "{user}" may not connect to vhost "{u.vhost}"\n')

    async def delete(self, ctx: Ctx) -> web.Response:

        vhost, name = ctx.args
        self._policymaker(ctx, vhost)
        self._vhost(ctx, vhost)
        if not await self.broker.shovels.delete(vhost, name):
            raise not_found()
        return no_content()

    async def status(self, ctx: Ctx) -> web.Response:

        ctx.need_monitor()
        vhost = ctx.args[0] if ctx.args else None
        if vhost is not None:
            self._vhost(ctx, vhost)
        return json_ok(columns(ctx.request, [s.status() for s in self.broker.shovels.list_shovels(vhost)]))

    async def restart(self, ctx: Ctx) -> web.Response:

        ctx.need_monitor()
        vhost, name = ctx.args
        if not await self.broker.shovels.restart(vhost, name):
            raise not_found()
        return no_content()
