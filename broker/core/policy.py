"""Policies and operator policies (RabbitMQ 3.10's runtime parameters ``policy`` and
``operator_policy``): what they are, how they are checked, which one applies to a queue or
an exchange, and **the one place** where a queue's or an exchange's effective arguments
are computed from its x-arguments, its policy and its operator policy
(:func:`effective_arguments`).

A :class:`~leveret.broker.core.vhost.VHost` holds its policies and applies them: at
declare and after every change of a policy (whatever made the change: the HTTP API,
``leveret-ctl``, a definitions import, recovery), it calls :func:`effective_arguments`
and hands the result to the queue (``Queue.policy_changed`` / ``Queue.configure``) or sets
the exchange's ``alternate``.  Queues read plain attributes on the hot path: nothing here
runs per message.

How keys combine (RabbitMQ's ``rabbit_policy:get``, ``rabbit_amqqueue_process``,
``rabbit_quorum_queue``):

* policy + operator policy: for the operator keys (:data:`OPERATOR_KEYS`) the lower value
  wins; any other key comes from the policy;
* that + x-argument: for :data:`MIN_KEYS` the lower value wins; for every other key the
  x-argument wins, except ``overflow`` of a quorum queue, where the policy wins.

The result is keyed by x-argument name (``x-message-ttl``, ``x-delivery-limit``,
``x-dead-letter-strategy``, ...; ``alternate-exchange`` for an exchange): a queue type
reads its settings from it exactly as from its declared arguments.  **Hook for queue
types** (quorum, streams): ``Queue.configure(effective)`` is called at declare and after
every policy change with this dict; a queue type overrides it (calling the base) to read
its own keys (``x-delivery-limit``, ``x-dead-letter-strategy``, ``x-max-age``, ...).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

APPLY_TO = ("queues", "exchanges", "all")

#: keys an operator policy may hold (RabbitMQ 3.10: ``operator_policy_validator``)
OPERATOR_KEYS = (
    "expires", "message-ttl", "max-length", "max-length-bytes",
    "max-in-memory-length", "max-in-memory-bytes", "delivery-limit",
)
#: keys where the lower of the x-argument and the policy wins
MIN_KEYS = (
    "expires", "message-ttl", "max-length", "max-length-bytes",
    "max-in-memory-length", "max-in-memory-bytes", "delivery-limit",
    "stream-max-segment-size-bytes",
)
#: policy keys that concern exchanges; every other key concerns queues
EXCHANGE_KEYS = ("alternate-exchange",)


class PolicyError(ValueError):
    """A policy RabbitMQ would refuse; ``reason`` is RabbitMQ's text (unescaped)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validation_failed(text: str) -> PolicyError:
    return PolicyError(f"Validation failed\n\n{text}\n")


def erl(v: Any) -> str:
    """A JSON value as Erlang's ``~p`` prints it (how RabbitMQ quotes values in its texts)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        if "e" in r:
            mant, _, exp = r.partition("e")
            if "." not in mant:
                mant += ".0"
            return f"{mant}e{int(exp)}"
        if r.endswith(".0") and abs(v) >= 1000:  # Erlang: 1000.0 is 1.0e3
            digits = r[:-2].lstrip("-").rstrip("0")
            power = len(r[:-2].lstrip("-")) - 1
            mant = digits[0] + "." + (digits[1:] or "0")
            return f"{'-' if v < 0 else ''}{mant}e{power}"
        return r
    if isinstance(v, str):
        return '<<"' + v.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(v, list):
        return "[" + ",".join(erl(x) for x in v) + "]"
    if isinstance(v, dict):
        return "#{" + ",".join(f"{erl(k)} => {erl(x)}" for k, x in sorted(v.items())) + "}"
    return str(v)


def html_escaped(text: str) -> str:
    """RabbitMQ's management API escapes ``<``, ``>`` and ``&`` in a policy's error text."""
    return html.escape(text, quote=False)


# ---------------------------------------------------------------------- definition keys


def _int(lo: int, what: str) -> Any:
    def check(v: Any) -> str | None:
        if isinstance(v, int) and not isinstance(v, bool) and v >= lo:
            return None
        return f"{erl(v)} {what}"

    return check


def _one_of(values: tuple[str, ...], what: str) -> Any:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in values else f"{erl(v)} {what}"

    return check


def _binary(what: str) -> Any:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) else f"{erl(v)} {what}"

    return check


_MAX_AGE = re.compile(r"([0-9]+)([YMDhms])")


def _max_age(v: Any) -> str | None:
    m = _MAX_AGE.fullmatch(v) if isinstance(v, str) else None
    if m is None or int(m.group(1)) <= 0:
        return f"{erl(v)} is not a valid max age"
    return None


#: key -> check (None, or the text after "Validation failed"), as rabbit_policies and the
#: other validators of RabbitMQ 3.10 (core, no plugins)
VALIDATORS: dict[str, Any] = {
    "alternate-exchange": _binary("is not a valid alternate exchange name"),
    "dead-letter-exchange": _binary("is not a valid dead letter exchange name"),
    "dead-letter-routing-key": _binary("is not a valid dead letter routing key"),
    "message-ttl": _int(0, "is not a valid message TTL"),
    "expires": _int(1, "is not a valid queue expiry"),
    "max-length": _int(0, "is not a valid maximum length"),
    "max-length-bytes": _int(0, "is not a valid maximum length in bytes"),
    "max-in-memory-length": _int(0, "is not a valid maximum memory in bytes"),
    "max-in-memory-bytes": _int(0, "is not a valid maximum memory in bytes"),
    "queue-mode": _one_of(("default", "lazy"), "is not a valid queue-mode value"),
    "queue-version": lambda v: None if v in (1, 2) and not isinstance(v, bool) else f"{erl(v)} is not a valid queue-version value",
    "overflow": _one_of(("drop-head", "reject-publish", "reject-publish-dlx"), "is not a valid overflow value"),
    "delivery-limit": _int(0, "is not a valid delivery limit"),
    "dead-letter-strategy": _one_of(("at-most-once", "at-least-once"), "is not a valid dead letter strategy"),
    "max-age": _max_age,
    "stream-max-segment-size-bytes": _int(0, "is not a valid segment size"),
    "queue-leader-locator": _one_of(("client-local", "balanced", "random", "least-leaders"),
                                    "is not a valid queue leader locator value"),
    "initial-cluster-size": _int(0, "is not a valid cluster size"),
    "queue-master-locator": _one_of(("min-masters", "client-local", "random"), "invalid queue-master-locator value"),
}
HA_KEYS = ("ha-mode", "ha-params", "ha-sync-mode", "ha-sync-batch-size", "ha-promote-on-shutdown",
           "ha-promote-on-failure")


def _check_ha(d: dict[str, Any]) -> str | None:
    """Classic mirroring's keys (``rabbit_mirror_queue_misc``): accepted and checked as
    RabbitMQ 3.10 does, without effect on a single node."""
    if not any(k in d for k in HA_KEYS):
        return None
    mode = d.get("ha-mode")
    if mode is None:
        return "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"
    if mode not in ("all", "exactly", "nodes"):
        return f"{erl(mode)} is not a valid ha-mode value"
    params = d.get("ha-params")
    if mode == "all" and "ha-params" in d:
        return 'ha-mode="all" does not take parameters'
    if mode == "exactly" and not (isinstance(params, int) and not isinstance(params, bool) and params > 0):
        return f'ha-mode="exactly" takes an integer, {"none" if params is None else erl(params)} given'
    if mode == "nodes":
        if not isinstance(params, list):
            return f'ha-mode="nodes" takes a list, {"none" if params is None else erl(params)} given'
        if not params:
            return 'ha-mode="nodes" list must be non-empty'
        bad = [p for p in params if not isinstance(p, str)]
        if bad:
            return f'ha-mode="nodes" takes a list of strings, {erl(bad)} was not a string'
    sync = d.get("ha-sync-mode")
    if sync is not None and sync not in ("manual", "automatic"):
        return f'ha-sync-mode must be "manual" or "automatic", got {erl(sync)}'
    batch = d.get("ha-sync-batch-size")
    if batch is not None and not (isinstance(batch, int) and not isinstance(batch, bool) and batch > 0):
        return f"ha-sync-batch-size takes an integer greater than 0, {erl(batch)} given"
    for k in ("ha-promote-on-shutdown", "ha-promote-on-failure"):
        v = d.get(k)
        if v is not None and v not in ("always", "when-synced"):
            return f'{k} must be "always" or "when-synced", got {erl(v)}'
    return None


def check_definition(definition: Any, operator: bool = False) -> None:
    """RabbitMQ's validation of a policy's (or an operator policy's) definition:
    :class:`PolicyError` with its text."""
    if not isinstance(definition, dict):
        raise validation_failed(f"definition must be a dictionary: {erl(definition)}")
    if not definition:
        raise validation_failed("no policy provided")
    allowed = OPERATOR_KEYS if operator else (*VALIDATORS, *HA_KEYS)
    for key in sorted(definition):
        if key in allowed and key in VALIDATORS:
            bad = VALIDATORS[key](definition[key])
            if bad is not None:
                raise validation_failed(bad)
    if not operator:
        bad = _check_ha(definition)
        if bad is not None:
            raise validation_failed(bad)
    unknown = [(k, definition[k]) for k in sorted(definition) if k not in allowed]
    if unknown:
        items = ",".join(f"{{{erl(k)},{erl(v)}}}" for k, v in unknown)
        raise validation_failed(f"[{items}] are not recognised policy settings")


def compile_pattern(pattern: Any) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise validation_failed(f"pattern should be a binary but was {erl(pattern)}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        msg, pos = exc.msg, exc.pos or 0
        if msg.startswith("missing )"):
            msg, pos = "missing )", len(pattern)  # (PCRE's text; it points after the pattern)
        raise validation_failed(f'pattern should be regular expression but is invalid: {{"{msg}",{pos}}}') from None


# ---------------------------------------------------------------------- policies


@dataclass(frozen=True, eq=False)
class Policy:
    """One policy (or operator policy) of a vhost.  Immutable: an update replaces it, so
    an object compared by identity tells whether what applies to a queue changed."""

    vhost: str
    name: str
    pattern: str
    apply_to: str
    definition: dict[str, Any]
    priority: int | float = 0
    operator: bool = False
    regex: re.Pattern[str] = field(default=re.compile(""), repr=False)

    def applies_to(self, kind: str, name: str) -> bool:
        """``kind``: "queue" or "exchange"; the pattern is searched in the name, as
        RabbitMQ's ``re:run``."""
        if self.apply_to != "all" and self.apply_to != kind + "s":
            return False
        return self.regex.search(name) is not None

    def to_json(self) -> dict[str, Any]:
        """As the HTTP API and the definitions show it."""
        return {"vhost": self.vhost, "name": self.name, "pattern": self.pattern, "apply-to": self.apply_to,
                "definition": self.definition, "priority": self.priority}


def make_policy(vhost: str, name: str, body: Any, operator: bool = False) -> Policy:
    """A policy from the HTTP API's / the definitions' JSON (``pattern``, ``definition``,
    optional ``priority`` (0) and ``apply-to`` ("all")), checked as RabbitMQ checks it
    (priority, pattern, apply-to, then definition): :class:`PolicyError`."""
    if not isinstance(body, dict):
        raise PolicyError("expected a JSON object")
    for key in ("pattern", "definition"):
        if key not in body:
            raise PolicyError(f"[{{key_missing,{key}}}]")
    priority = body.get("priority", 0)
    if priority is None:
        priority = 0
    if isinstance(priority, bool) or not isinstance(priority, int | float):
        raise validation_failed(f"priority should be a number, actually was {erl(priority)}")
    regex = compile_pattern(body["pattern"])
    apply_to = body.get("apply-to", "all")
    if apply_to is None:
        apply_to = "all"
    if apply_to not in APPLY_TO:
        shown = apply_to if isinstance(apply_to, str) else erl(apply_to)
        raise validation_failed(f"apply-to '{shown}' unrecognised; should be 'queues', 'exchanges' or 'all'")
    definition = body["definition"]
    check_definition(definition, operator)
    return Policy(vhost, name, body["pattern"], apply_to, dict(definition), priority, operator, regex)


def best_match(policies: dict[str, Policy], kind: str, name: str) -> Policy | None:
    """The matching policy with the highest priority (equal priorities: the first name)."""
    best: Policy | None = None
    for p in policies.values():
        if p.applies_to(kind, name) and (
            best is None or p.priority > best.priority or (p.priority == best.priority and p.name < best.name)
        ):
            best = p
    return best


def sorted_policies(policies: list[Policy]) -> list[Policy]:
    """In the HTTP API's order: ascending priority, then name."""
    return sorted(policies, key=lambda p: (p.priority, p.name))


def merged_definition(policy: Policy | None, op: Policy | None) -> dict[str, Any]:
    """The ``effective_policy_definition``: the policy's definition with the operator
    policy's over it, the lower value winning for the operator keys."""
    out = dict(policy.definition) if policy is not None else {}
    if op is not None:
        for k, v in op.definition.items():
            cur = out.get(k)
            out[k] = v if cur is None else min(cur, v)
    return dict(sorted(out.items()))


def effective_arguments(kind: str, arguments: dict[str, Any], definition: dict[str, Any]) -> dict[str, Any]:
    """The one home of how x-arguments and policies combine: a queue's (``kind``
    "queue") or an exchange's ("exchange") ``arguments`` with the merged policy
    ``definition`` (:func:`merged_definition`) applied, keyed as x-arguments
    (``x-message-ttl`` ..., and ``alternate-exchange`` for an exchange)."""
    if not definition:
        return arguments
    out = dict(arguments)
    if kind == "exchange":
        if "alternate-exchange" in definition and "alternate-exchange" not in arguments:
            out["alternate-exchange"] = definition["alternate-exchange"]
        return out
    qtype = arguments.get("x-queue-type")
    if isinstance(qtype, bytes):
        qtype = qtype.decode("utf-8", "replace")
    for key, value in definition.items():
        if key in EXCHANGE_KEYS or key in HA_KEYS:
            continue
        arg = "x-" + key
        cur = arguments.get(arg)
        if cur is None:
            out[arg] = value
        elif key in MIN_KEYS:
            if isinstance(cur, int) and not isinstance(cur, bool) and value < cur:
                out[arg] = value
        elif key == "overflow" and qtype == "quorum":
            out[arg] = value  # rabbit_quorum_queue: the policy has precedence
        elif key == "max-age" and isinstance(cur, str | bytes):
            if _age_seconds(value) < _age_seconds(cur):
                out[arg] = value
        # else: the x-argument wins
    return out


_AGE_UNITS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}


def _age_seconds(v: Any) -> float:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    m = _MAX_AGE.fullmatch(v) if isinstance(v, str) else None
    return int(m.group(1)) * _AGE_UNITS[m.group(2)] if m else float("inf")


@dataclass(frozen=True)
class Applied:
    """What applies to a queue or an exchange: its policy, its operator policy and the
    merged definition (``effective_policy_definition``)."""

    policy: Policy | None
    operator_policy: Policy | None
    definition: dict[str, Any]


NONE = Applied(None, None, {})
