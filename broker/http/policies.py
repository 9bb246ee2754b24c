"""``/api/policies`` and ``/api/operator-policies``: RabbitMQ 3.10's policy endpoints,
and what the queue and exchange objects show of the policies that apply to them.

Permissions as RabbitMQ 3.10 checks them (measured against it): any management user lists
the policies and operator policies of the vhosts it may access; reading, setting or
deleting one policy needs the ``policymaker`` (or ``administrator``) tag and access to the
vhost (no configure permission is checked); an operator policy needs ``administrator``.
A policy is checked by the core (``core/policy.py``); RabbitMQ escapes ``<``/``>``/``&`` in
a policy's error text, not in an operator policy's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.core.policy import PolicyError, html_escaped, make_policy, sorted_policies
from leveret.broker.http import api as http
from leveret.broker.http.api import N, V

if TYPE_CHECKING:
    from leveret.broker.http.api import Api, Ctx


def add_policy_routes(api: Api) -> None:
    """Hook the endpoints into the API's route table (``Api.__init__`` calls it; this
    module imports ``api``, so ``api`` imports it only there)."""
    r = api.route
    r(("policies",), GET=list_policies)
    r(("policies", V), GET=list_policies)
    r(("policies", V, N), GET=show_policy, PUT=put_policy, DELETE=delete_policy)
    r(("operator-policies",), GET=list_operator_policies)
    r(("operator-policies", V), GET=list_operator_policies)
    r(("operator-policies", V, N), GET=show_operator_policy, PUT=put_operator_policy,
      DELETE=delete_operator_policy)


def policy_info(vhost: Any, obj: Any) -> dict[str, Any]:
    """A queue's ``policy``, ``operator_policy`` and ``effective_policy_definition``
    (null, null and {} when none applies, as RabbitMQ 3.10)."""
    a = vhost.applied_to(obj)
    return {"policy": a.policy.name if a.policy is not None else None,
            "operator_policy": a.operator_policy.name if a.operator_policy is not None else None,
            "effective_policy_definition": a.definition}


def exchange_policy_info(vhost: Any, obj: Any) -> dict[str, Any]:
    """An exchange's ``policy``: RabbitMQ 3.10 shows the key only when one applies."""
    a = vhost.applied_to(obj)
    return {"policy": a.policy.name} if a.policy is not None else {}


def _vhost(ctx: Ctx, name: str) -> Any:
    v = ctx.broker.vhosts.get(name)
    if v is None:
        raise http.not_found()
    if not ctx.monitor and not ctx.broker.access.can_open(ctx.user.name, name):
        raise http.HttpError(401, "not_authorised", "User not authorised to access virtual host")
    return v


def _table(v: Any, operator: bool) -> dict[str, Any]:
    return v.operator_policies if operator else v.policies


async def _list(ctx: Ctx, operator: bool) -> web.Response:
    names = [ctx.args[0]] if ctx.args else ctx.visible_vhosts()
    out = []
    for vn in names:
        v = _vhost(ctx, vn)
        out += [p.to_json() for p in sorted_policies(list(_table(v, operator).values()))]
    return http.json_ok(http.columns(ctx.request, out))


def _may_edit(ctx: Ctx, vn: str, operator: bool, put: bool = False) -> Any:
    if operator:
        ctx.need_admin()
    v = ctx.broker.vhosts.get(vn)
    if v is None:
        # (RabbitMQ 3.10: a PUT into a missing vhost has its own 404)
        raise http.HttpError(404, "not_found", "vhost_not_found") if put else http.not_found()
    tags = set(ctx.user.tags)
    if not operator and (not tags & {"policymaker", "administrator"} or
                         (not ctx.admin and not ctx.broker.access.can_open(ctx.user.name, vn))):
        raise http.HttpError(401, "not_authorised", "User not authorised to access object")
    return v


async def _show(ctx: Ctx, operator: bool) -> web.Response:
    vn, name = ctx.args
    v = _may_edit(ctx, vn, operator)
    p = _table(v, operator).get(name)
    if p is None:
        raise http.not_found()
    return http.json_ok(p.to_json())


async def _put(ctx: Ctx, operator: bool) -> web.Response:
    vn, name = ctx.args
    v = _may_edit(ctx, vn, operator, put=True)
    body = await ctx.body()
    try:
        policy = make_policy(vn, name, body, operator)
    except PolicyError as exc:
        raise http.bad_request(exc.reason if operator else html_escaped(exc.reason)) from None
    new = v.set_policy(policy)
    ctx.broker.flush_all()
    return http.no_content(201 if new else 204)


async def _delete(ctx: Ctx, operator: bool) -> web.Response:
    vn, name = ctx.args
    v = _may_edit(ctx, vn, operator)
    if not v.delete_policy(name, operator):
        raise http.not_found()
    ctx.broker.flush_all()
    return http.no_content()


async def list_policies(ctx: Ctx) -> web.Response:
    return await _list(ctx, False)


async def show_policy(ctx: Ctx) -> web.Response:
    return await _show(ctx, False)


async def put_policy(ctx: Ctx) -> web.Response:
    return await _put(ctx, False)


async def delete_policy(ctx: Ctx) -> web.Response:
    return await _delete(ctx, False)


async def list_operator_policies(ctx: Ctx) -> web.Response:
    return await _list(ctx, True)


async def show_operator_policy(ctx: Ctx) -> web.Response:
    return await _show(ctx, True)


async def put_operator_policy(ctx: Ctx) -> web.Response:
    return await _put(ctx, True)


async def delete_operator_policy(ctx: Ctx) -> web.Response:
    return await _delete(ctx, True)
