"""``leveret-ctl`` policy commands, with rabbitmqctl's arguments, texts and exit codes
(measured against RabbitMQ 3.10.8): ``set_policy [-p <vhost>] [--priority <n>]
[--apply-to <queues|exchanges|all>] <name> <pattern> <definition>``, ``clear_policy``,
``list_policies``, and the operator-policy twins (``set_operator_policy``,
``clear_operator_policy``, ``list_operator_policies``).

A definition the broker refuses exits 69 with its text (``Error:\\nValidation failed ...``,
as rabbitmqctl); clearing a policy that does not exist exits 69 ("Parameter does not
exist"); a missing vhost exits 65.  Registered in ``cli.COMMANDS`` on import (``cli``
imports this module at its end).
"""

from __future__ import annotations

import html
import json
from typing import Any

from leveret.ctl.cli import (
    EX_UNAVAILABLE,
    Ctl,
    CtlError,
    api_failure,
    command,
    failure,
    no_such_vhost,
    vhost_list,
)
from leveret.ctl.client import ApiError

COLUMNS = ["vhost", "name", "pattern", "apply-to", "definition", "priority"]


def _kind(operator: bool) -> str:
    return "operator-policies" if operator else "policies"


def _refused(ctl: Ctl, exc: ApiError) -> CtlError:
    """rabbitmqctl's answer to a refused policy: 65 for a missing vhost, else 69 with the
    broker's text (RabbitMQ's API escapes it for HTML: shown as rabbitmqctl shows it)."""
    if exc.status == 404:
        ctl.need_vhost(ctl.opts.vhost)
    if exc.status in (400, 404):
        return failure(EX_UNAVAILABLE, html.unescape(exc.reason or exc.error))
    return api_failure(exc)


def _set(ctl: Ctl, args: list[str], operator: bool) -> None:
    name, pattern, definition = args
    vhost, priority = ctl.opts.vhost, ctl.opts.priority
    what = 'operator policy override' if operator else 'policy'
    ctl.banner(f'Setting {what} "{name}" for pattern "{pattern}" to "{definition}" with priority "{priority}" '
               f'for vhost "{vhost}" ...')
    try:
        doc = json.loads(definition)
    except ValueError:
        raise failure(EX_UNAVAILABLE, "JSON decoding error. Reason: badarg") from None
    body: dict[str, Any] = {"pattern": pattern, "definition": doc, "priority": priority, "apply-to": ctl.opts.apply_to}
    try:
        ctl.client.put(_kind(operator), vhost, name, body=body)
    except ApiError as exc:
        raise _refused(ctl, exc) from None


def _clear(ctl: Ctl, args: list[str], operator: bool) -> None:
    (name,) = args
    vhost = ctl.opts.vhost
    ctl.banner(f'Clearing {"operator policy" if operator else "policy"} "{name}" on vhost "{vhost}" ...')
    try:
        ctl.client.delete(_kind(operator), vhost, name)
    except ApiError as exc:
        if exc.status == 404:
            if not ctl.client.exists("vhosts", vhost):
                raise no_such_vhost(vhost) from None
            raise failure(EX_UNAVAILABLE, "Parameter does not exist") from None
        raise _refused(ctl, exc) from None


def _list(ctl: Ctl, operator: bool) -> None:
    vhost = ctl.opts.vhost
    ctl.banner(f'Listing {"operator policy overrides" if operator else "policies"} for vhost "{vhost}" ...')
    rows = []
    for p in vhost_list(ctl, _kind(operator)):
        defn = json.dumps(p.get("definition", {}), separators=(",", ":"), ensure_ascii=False)
        rows.append([p.get("vhost"), p.get("name"), p.get("pattern"), p.get("apply-to"), defn, p.get("priority")])
    ctl.table(COLUMNS, rows)


SET_ARGS = "[-p <vhost>] [--priority <priority>] [--apply-to <queues|exchanges|all>] <name> <pattern> <definition>"


@command(f"set_policy {SET_ARGS}", "Sets or updates a policy", "policies", min_args=3, max_args=3)
def set_policy(ctl: Ctl, args: list[str]) -> None:
    _set(ctl, args, False)


@command("clear_policy [-p <vhost>] <name>", "Clears (removes) a policy", "policies", min_args=1, max_args=1)
def clear_policy(ctl: Ctl, args: list[str]) -> None:
    _clear(ctl, args, False)


@command("list_policies [-p <vhost>] [--no-table-headers]", "Lists all policies in a virtual host", "policies")
def list_policies(ctl: Ctl, args: list[str]) -> None:
    _list(ctl, False)


@command(f"set_operator_policy {SET_ARGS}", "Sets an operator policy that overrides a subset of arguments in user "
         "policies", "policies", min_args=3, max_args=3)
def set_operator_policy(ctl: Ctl, args: list[str]) -> None:
    _set(ctl, args, True)


@command("clear_operator_policy [-p <vhost>] <name>", "Clears an operator policy", "policies",
         min_args=1, max_args=1)
def clear_operator_policy(ctl: Ctl, args: list[str]) -> None:
    _clear(ctl, args, True)


@command("list_operator_policies [-p <vhost>] [--no-table-headers]", "Lists operator policy overrides for a "
         "virtual host", "policies")
def list_operator_policies(ctl: Ctl, args: list[str]) -> None:
    _list(ctl, True)
