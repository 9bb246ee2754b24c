"""RabbitMQ-format definitions (``rabbitmqctl export_definitions``, the HTTP API's
``GET /api/definitions``), applied at boot with ``load_definitions``.

:func:`read_definitions` reads and checks a file and raises :class:`DefinitionsError`
naming the file, the key and the reason; :func:`apply_definitions` applies it to a broker
in RabbitMQ's import order: users, vhosts, permissions, topic permissions, the vhost
limits (the "vhost-limits" parameters), global parameters (stored and exported back:
``cluster_name``, ``internal_cluster_id``, ...), policies (and operator policies),
exchanges, queues, bindings, and the shovels (the "shovel" parameters,
leveret.broker.shovel).  Other parameters are skipped, with one warning per section
when the definitions are applied (not when they are only checked).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from leveret.broker.core import access as A
from leveret.broker.core.errors import AMQPError
from leveret.broker.core.exchange import EXCHANGE_CLASSES
from leveret.broker.core.operations import Session
from leveret.broker.core.policy import PolicyError, make_policy, sorted_policies

if TYPE_CHECKING:
    from leveret.broker.server import Broker

log = logging.getLogger("leveret")

#: what a definitions file may hold and Leveret applies
APPLIED = ("users", "vhosts", "permissions", "topic_permissions", "global_parameters", "policies",
           "operator_policies", "exchanges", "queues", "bindings")
#: read and ignored (what RabbitMQ writes about itself)
IGNORED = ("rabbit_version", "rabbitmq_version", "product_name", "product_version")
#: not supported yet: logged and skipped
SKIPPED = ("parameters",)


class DefinitionsError(ValueError):
    """A definitions file that cannot be applied: the file, the key and the reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path, self.key, self.reason = path, key, reason
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")


_STR, _BOOL, _DICT = str, bool, dict
_FIELDS: dict[str, dict[str, tuple[type, Any]]] = {
    # section -> field -> (type, default; ... = required)
    "users": {"name": (_STR, ...), "password_hash": (_STR, None), "password": (_STR, None),
              "hashing_algorithm": (_STR, None), "tags": (object, []), "limits": (_DICT, {})},
    "vhosts": {"name": (_STR, ...), "description": (_STR, ""), "tags": (object, []),
               "default_queue_type": (_STR, None), "metadata": (_DICT, {}), "limits": (object, None)},
    "permissions": {"user": (_STR, ...), "vhost": (_STR, ...), "configure": (_STR, ...), "write": (_STR, ...), "read": (_STR, ...)},
    "topic_permissions": {"user": (_STR, ...), "vhost": (_STR, ...), "exchange": (_STR, ...), "write": (_STR, ...), "read": (_STR, ...)},
    "exchanges": {"name": (_STR, ...), "vhost": (_STR, ...), "type": (_STR, ...), "durable": (_BOOL, True),
                  "auto_delete": (_BOOL, False), "internal": (_BOOL, False), "arguments": (_DICT, {})},
    "queues": {"name": (_STR, ...), "vhost": (_STR, ...), "durable": (_BOOL, True), "auto_delete": (_BOOL, False),
               "arguments": (_DICT, {}), "type": (_STR, None), "node": (_STR, None)},
    "policies": {"vhost": (_STR, ...), "name": (_STR, ...), "pattern": (object, ...), "apply-to": (object, "all"),
                 "definition": (object, ...), "priority": (object, 0)},
    "operator_policies": {"vhost": (_STR, ...), "name": (_STR, ...), "pattern": (object, ...),
                          "apply-to": (object, "all"), "definition": (object, ...), "priority": (object, 0)},
    "bindings": {"source": (_STR, ...), "vhost": (_STR, ...), "destination": (_STR, ...),
                 "destination_type": (_STR, ...), "routing_key": (_STR, ""), "arguments": (_DICT, {})},
    "global_parameters": {"name": (_STR, ...), "value": (object, ...)},
}


def read_definitions(path: str) -> dict[str, list[dict[str, Any]]]:
    """Read and check a definitions file; the entries of each applied section with
    their defaults filled in."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DefinitionsError(path, "", f"cannot read it: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DefinitionsError(path, "", f"not valid JSON: {exc}") from None
    return check_definitions(data, path)


def check_definitions(data: Any, path: str = "definitions") -> dict[str, list[dict[str, Any]]]:
    """Check decoded definitions (as :func:`read_definitions`)."""
    if not isinstance(data, dict):
        raise DefinitionsError(path, "", "expected a JSON object at the top")
    out: dict[str, list[dict[str, Any]]] = {}
    for key, value in data.items():
        if key in IGNORED:
            continue
        if key == "parameters" and isinstance(value, list):
            # vhost limits are runtime parameters of component "vhost-limits": applied
            limits = [p for p in value if isinstance(p, dict) and p.get("component") == "vhost-limits"]
            for p in limits:
                if not isinstance(p.get("vhost"), str) or not isinstance(p.get("value"), dict):
                    raise DefinitionsError(path, f"parameters[{value.index(p)}]", "expected vhost and value")
                try:
                    A.AccessControl().set_vhost_limits(p["vhost"], p["value"])
                except ValueError as exc:
                    raise DefinitionsError(path, f"parameters[{value.index(p)}].value", str(exc)) from None
            out["vhost_limits"] = [{"vhost": p["vhost"], "value": p["value"]} for p in limits]
            value = [p for p in value if p not in limits]
            # shovels (component "shovel"): checked as RabbitMQ does, started by apply
            shovels = [p for p in value if isinstance(p, dict) and p.get("component") == "shovel"]
            out["shovels"] = [_shovel_entry(path, value.index(p), p) for p in shovels]
            value = [p for p in value if p not in shovels]
        if key in SKIPPED:
            if value:  # (warned about by apply_definitions: once, not at every check)
                out.setdefault("skipped", []).append({"key": key, "count": len(value) if isinstance(value, list) else 1})
            continue
        if key not in APPLIED:
            raise DefinitionsError(path, key, "unknown key")
        if not isinstance(value, list):
            raise DefinitionsError(path, key, "expected a list")
        out[key] = [_entry(path, key, i, e) for i, e in enumerate(value)]
    return out


def _shovel_entry(path: str, i: int, p: dict[str, Any]) -> dict[str, Any]:
    from leveret.broker.shovel import ShovelInvalid, validate

    if not isinstance(p.get("vhost"), str) or not isinstance(p.get("name"), str):
        raise DefinitionsError(path, f"parameters[{i}]", "expected vhost, name and value")
    try:
        validate(p["name"], p.get("value"))
    except ShovelInvalid as exc:
        raise DefinitionsError(path, f"parameters[{i}].value", str(exc).strip()) from None
    return {"vhost": p["vhost"], "name": p["name"], "value": p["value"]}


def _entry(path: str, section: str, i: int, e: Any) -> dict[str, Any]:
    where = f"{section}[{i}]"
    if not isinstance(e, dict):
        raise DefinitionsError(path, where, "expected an object")
    spec = _FIELDS[section]
    out: dict[str, Any] = {}
    for name, (typ, default) in spec.items():
        if name not in e:
            if default is ...:
                raise DefinitionsError(path, f"{where}.{name}", "missing")
            out[name] = default
            continue
        v = e[name]
        if typ is not object and (not isinstance(v, typ) or (typ is not bool and isinstance(v, bool))):
            raise DefinitionsError(path, f"{where}.{name}", f"expected {typ.__name__}, got {json.dumps(v)}")
        out[name] = v
    for name in e:
        if name not in spec:
            raise DefinitionsError(path, f"{where}.{name}", "unknown key")
    try:
        _check(section, out)
    except ValueError as exc:
        key, _, reason = str(exc).partition(": ")
        raise DefinitionsError(path, f"{where}.{key}", reason) from None
    return out


def _check(section: str, e: dict[str, Any]) -> None:
    """ValueError("field: reason") for a value RabbitMQ would not import."""
    if section == "global_parameters" and e["name"] == "cluster_name" and not isinstance(e["value"], str):
        raise ValueError("value: cluster_name must be a string")
    if section == "users":
        if e["password"] is not None and e["password_hash"] is not None:
            raise ValueError("password: give a password or a password_hash, not both")
        if e["password_hash"] is None and e["password"] is None:
            raise ValueError("password_hash: missing")
        try:
            A.algorithm(e["hashing_algorithm"])
        except ValueError as exc:
            raise ValueError(f"hashing_algorithm: {exc}") from None
        tags = e["tags"]
        if isinstance(tags, str):
            e["tags"] = [t.strip() for t in tags.split(",") if t.strip()]
        elif not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("tags: expected a list of strings or a comma-separated string")
        if e["password_hash"]:
            import base64

            try:
                base64.b64decode(e["password_hash"], validate=True)
            except ValueError:
                raise ValueError("password_hash: not base64") from None
    elif section in ("permissions", "topic_permissions"):
        for p in ("configure", "write", "read"):
            if p in e:
                try:
                    A.compile_regex(e[p])
                except ValueError as exc:
                    raise ValueError(f"{p}: {exc}") from None
    elif section in ("policies", "operator_policies"):
        try:
            make_policy(e["vhost"], e["name"], e, section == "operator_policies")
        except PolicyError as exc:
            raise ValueError(f"definition: {exc.reason.strip()}") from None
    elif section == "exchanges":
        if e["type"] not in EXCHANGE_CLASSES:
            raise ValueError(f"type: unknown exchange type '{e['type']}'")
    elif section == "bindings":
        if e["destination_type"] not in ("queue", "exchange"):
            raise ValueError("destination_type: expected 'queue' or 'exchange'")


def _queue_arguments(q: dict[str, Any]) -> dict[str, Any]:
    args = dict(q["arguments"])
    if q["type"] and "x-queue-type" not in args:
        args["x-queue-type"] = q["type"]
    return args


def check_applicable(broker: Broker, defs: dict[str, list[dict[str, Any]]], path: str = "definitions") -> None:
    """Refuse, before anything is applied, what :func:`apply_definitions` would refuse
    half way, with the core's own checks and texts: an exchange or queue inequivalent to the
    existing one (or an exclusive queue), a new queue's reserved name, arguments or the
    vhost's queue limit."""
    new_queues: dict[str, set[str]] = {}
    for i, x in enumerate(defs.get("exchanges", [])):
        v = broker.vhosts.get(x["vhost"])
        old = v.exchanges.get(x["name"]) if v is not None else None
        if old is None or x["name"] == "" or x["name"].startswith("amq."):
            continue  # (a new exchange: its type was checked by check_definitions)
        try:
            v.check_exchange_equivalent(  # type: ignore[union-attr]
                old, x["type"], durable=x["durable"], auto_delete=x["auto_delete"], internal=x["internal"],
                arguments=x["arguments"],
            )
        except AMQPError as exc:
            raise DefinitionsError(path, f"exchanges[{i}]", exc.reply_text) from None
    for i, q in enumerate(defs.get("queues", [])):
        v = broker.vhosts.get(q["vhost"])
        if v is None:
            continue  # (a vhost the import creates: nothing there yet)
        args = _queue_arguments(q)
        try:
            oldq = v.queues.get(q["name"])
            if oldq is not None:
                v.check_redeclare(oldq, None, durable=q["durable"], auto_delete=q["auto_delete"], arguments=args)
                continue
            seen = new_queues.setdefault(v.name, set())
            if q["name"] not in seen:
                v.check_new_queue(q["name"], durable=q["durable"], auto_delete=q["auto_delete"], arguments=args,
                                  adding=len(seen))
                seen.add(q["name"])
        except AMQPError as exc:
            raise DefinitionsError(path, f"queues[{i}]", exc.reply_text) from None


def apply_definitions(broker: Broker, defs: dict[str, list[dict[str, Any]]], path: str = "definitions") -> None:
    """Apply checked definitions (:func:`read_definitions`) in RabbitMQ's order, through
    the core's operations (as the node: no permission checks); what the broker would refuse
    is refused first (:func:`check_applicable`), so nothing is applied then.  Raises
    :class:`DefinitionsError`."""
    check_applicable(broker, defs, path)
    for skipped in defs.get("skipped", []):
        log.warning("%s: %s: not supported yet, skipped (%d entries)", path, skipped["key"], skipped["count"])
    apply_access_definitions(broker, defs, path)
    for gp in defs.get("global_parameters", []):
        broker.set_global_parameter(gp["name"], gp["value"])
    for section in ("policies", "operator_policies"):
        for p in defs.get(section, []):  # (checked by check_definitions)
            broker.add_vhost(p["vhost"]).set_policy(make_policy(p["vhost"], p["name"], p, section == "operator_policies"))
    for i, x in enumerate(defs.get("exchanges", [])):
        if x["name"] == "" or x["name"].startswith("amq."):
            continue  # (RabbitMQ does not export them)
        try:
            Session(broker.add_vhost(x["vhost"]), None).declare_exchange(
                x["name"], x["type"], durable=x["durable"], auto_delete=x["auto_delete"], internal=x["internal"],
                arguments=x["arguments"],
            )
        except AMQPError as exc:
            raise DefinitionsError(path, f"exchanges[{i}]", exc.reply_text) from None
    for i, q in enumerate(defs.get("queues", [])):
        args = _queue_arguments(q)
        try:
            Session(broker.add_vhost(q["vhost"]), None).declare_queue(
                q["name"], durable=q["durable"], auto_delete=q["auto_delete"], arguments=args
            )
        except AMQPError as exc:
            raise DefinitionsError(path, f"queues[{i}]", exc.reply_text) from None
    for i, b in enumerate(defs.get("bindings", [])):
        session = Session(broker.add_vhost(b["vhost"]), None)
        try:
            session.bind(b["source"], b["destination"], kind=b["destination_type"], routing_key=b["routing_key"],
                         arguments=b["arguments"])
        except AMQPError as exc:
            raise DefinitionsError(path, f"bindings[{i}]", exc.reply_text) from None
    for sh in defs.get("shovels", []):  # last, as RabbitMQ applies runtime parameters after bindings
        broker.add_vhost(sh["vhost"])
        broker.shovels.declare(sh["vhost"], sh["name"], sh["value"])


def apply_access_definitions(broker: Broker, defs: dict[str, list[dict[str, Any]]], path: str = "definitions") -> None:
    """The users, vhosts, permissions and topic permissions of the definitions."""
    acc = broker.access
    known = set(acc.users) | {u["name"] for u in defs.get("users", [])}
    for section in ("permissions", "topic_permissions"):
        for i, p in enumerate(defs.get(section, [])):
            if p["user"] not in known:
                raise DefinitionsError(path, f"{section}[{i}].user", f"no user '{p['user']}'")
    for u in defs.get("users", []):
        if u["password_hash"] is not None:
            acc.add_user(u["name"], password_hash=u["password_hash"], hashing_algorithm=u["hashing_algorithm"], tags=u["tags"])
        else:
            acc.add_user(u["name"], u["password"], tags=u["tags"])
    for v in defs.get("vhosts", []):
        broker.add_vhost(v["name"])
    for p in defs.get("permissions", []):
        broker.add_vhost(p["vhost"])
        acc.set_permissions(p["user"], p["vhost"], p["configure"], p["write"], p["read"])
    for t in defs.get("topic_permissions", []):
        broker.add_vhost(t["vhost"])
        acc.set_topic_permissions(t["user"], t["vhost"], t["exchange"], t["write"], t["read"])
    for lim in defs.get("vhost_limits", []):
        broker.add_vhost(lim["vhost"])
        acc.set_vhost_limits(lim["vhost"], lim["value"])


def export_definitions(broker: Broker, vhost: str | None = None) -> dict[str, Any]:
    """The node's definitions as RabbitMQ exports them (``GET /api/definitions``): not
    the exclusive queues, the default and ``amq.*`` exchanges or the default
    exchange's bindings.  With ``vhost``: that vhost's queues, exchanges and bindings,
    without a "vhost" field (``GET /api/definitions/{vhost}``)."""
    from leveret.broker.core.queue import Queue

    acc = broker.access.to_json()
    names = [vhost] if vhost is not None else list(broker.vhosts)
    queues: list[dict[str, Any]] = []
    exchanges: list[dict[str, Any]] = []
    bindings: list[dict[str, Any]] = []
    for vn in names:
        v = broker.vhosts[vn]
        for q in v.queues.values():
            if q.exclusive:
                continue
            queues.append({"name": q.name, "vhost": vn, "durable": q.durable, "auto_delete": q.auto_delete,
                           "arguments": _jsonable(q.arguments)})
        for x in v.exchanges.values():
            if x.name == "" or x.name.startswith("amq."):
                continue
            exchanges.append({"name": x.name, "vhost": vn, "type": x.type, "durable": x.durable,
                              "auto_delete": x.auto_delete, "internal": x.internal, "arguments": _jsonable(x.arguments)})
        for x in v.exchanges.values():
            if x.name == "":
                continue
            for (dest, rk, _), args in x.bindings.items():
                if isinstance(dest, Queue) and dest.exclusive:
                    continue
                bindings.append({"source": x.name, "vhost": vn, "destination": dest.name,
                                 "destination_type": "queue" if isinstance(dest, Queue) else "exchange",
                                 "routing_key": rk, "arguments": _jsonable(args or {})})
    policies = [p.to_json() for vn in names for p in sorted_policies(list(broker.vhosts[vn].policies.values()))]
    head = {"rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8", "product_name": "Leveret", "product_version": broker.server_properties()["version"]}
    limits = [{"vhost": vn, "component": "vhost-limits", "name": "limits", "value": lim}
              for vn, lim in acc["vhost_limits"].items() if vn in names]
    limits += broker.shovels.parameters(names)  # the shovels, as RabbitMQ exports them
    if vhost is not None:
        for e in (*queues, *exchanges, *bindings):
            del e["vhost"]
        return {**head, "parameters": limits, "policies": policies, "queues": queues, "exchanges": exchanges, "bindings": bindings}
    return {
        **head,
        "users": [{**u, "limits": {}} for u in acc["users"]],
        "vhosts": [{"name": vn, "description": "", "tags": [], "metadata": {"description": "", "tags": []}} for vn in names],
        "permissions": acc["permissions"],
        "topic_permissions": acc["topic_permissions"],
        "parameters": limits,
        "global_parameters": [{"name": k, "value": v} for k, v in broker.global_parameters.items()],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }


def _jsonable(v: Any) -> Any:
    """AMQP field values as JSON (bytes as text, as RabbitMQ shows longstr arguments)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)
