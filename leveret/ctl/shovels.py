"""rabbitmqctl's shovel commands (rabbitmq_shovel's CLI): ``shovel_status``,
``delete_shovel``, ``restart_shovel``, over the management API's ``/api/shovels`` and
``/api/parameters/shovel``.  Registered in ``leveret.ctl.cli.COMMANDS`` on import (cli
imports this module)."""

from __future__ import annotations

from typing import Any

from leveret.ctl.cli import EX_UNAVAILABLE, Ctl, command, failure
from leveret.ctl.client import ApiError

STATUS_COLUMNS = ["name", "vhost", "type", "state", "source", "destination", "termination_reason",
                  "destination_protocol", "source_protocol", "last_changed", "source_address",
                  "destination_address"]


def _row(s: dict[str, Any]) -> dict[str, Any]:
    source = s.get("src_queue") or s.get("src_exchange") or ""
    dest = s.get("dest_queue") or s.get("dest_exchange") or ""
    return {
        "name": s["name"], "vhost": s["vhost"], "type": s.get("type", "dynamic"), "state": s["state"],
        "source": source, "destination": dest, "termination_reason": s.get("reason", ""),
        "destination_protocol": s.get("dest_protocol", ""), "source_protocol": s.get("src_protocol", ""),
        "last_changed": s.get("timestamp", ""), "source_address": s.get("src_uri", ""),
        "destination_address": s.get("dest_uri", ""),
    }


def _node(ctl: Ctl) -> str:
    return str(ctl.client.get("overview").get("node", ""))


def _not_found(ctl: Ctl, node: str) -> Any:
    return failure(EX_UNAVAILABLE, "Error:\nShovel with the given name was not found on the target node "
                                   f"'{node}' and / or virtual host '{ctl.opts.vhost}'")


@command("shovel_status", "Displays the status of the node's shovels", "shovels")
def shovel_status(ctl: Ctl, args: list[str]) -> None:
    ctl.banner(f"Shovel status on node {_node(ctl)}")
    rows = [_row(s) for s in ctl.client.get("shovels")]
    ctl.table(STATUS_COLUMNS, [[r[c] for c in STATUS_COLUMNS] for r in rows])


@command("delete_shovel [-p <vhost>] <name>", "Deletes a shovel", "shovels", min_args=1, max_args=1)
def delete_shovel(ctl: Ctl, args: list[str]) -> None:
    (name,) = args
    vhost = ctl.opts.vhost
    ctl.banner(f"Deleting shovel {name} in vhost {vhost}")
    try:
        ctl.client.delete("parameters", "shovel", vhost, name)
    except ApiError as exc:
        if exc.status == 404:
            raise _not_found(ctl, _node(ctl)) from None
        raise


@command("restart_shovel [-p <vhost>] <name>", "Restarts a dynamic shovel", "shovels", min_args=1, max_args=1)
def restart_shovel(ctl: Ctl, args: list[str]) -> None:
    (name,) = args
    vhost = ctl.opts.vhost
    node = _node(ctl)
    ctl.banner(f"Restarting dynamic Shovel {name} in virtual host {vhost} on node {node}")
    try:
        ctl.client.delete("shovels", "vhost", vhost, name, "restart")
    except ApiError as exc:
        if exc.status == 404:
            raise _not_found(ctl, node) from None
        raise
