"""Dynamic shovels, as RabbitMQ's rabbitmq_shovel runs them: a runtime parameter of
component ``shovel`` (RabbitMQ's keys and validation, rabbit_shovel_parameters) starts a
worker inside the broker that consumes from a source and republishes to a destination,
each any AMQP 0-9-1 broker (RabbitMQ, another Leveret, or this one: ``amqp://`` with no
host, as RabbitMQ reads it).

Both ends are aiormq client connections (the local broker through its own listener, as
the shovel's owner, logged in with a secret only this process knows: ``local_secret``).
Acknowledgement modes:

* ``on-confirm`` (the default): the destination channel is in confirm mode; a source
  delivery is acked only when the destination confirmed its copy (nacked with requeue
  when the destination nacks it).  When either connection goes, the other is closed too,
  so every unconfirmed message is still unacked at the source and is delivered again
  (at least once: a copy the destination had taken is then doubled).
* ``on-publish``: acked once written to the destination connection.
* ``no-ack``: consumed with no_ack.

A failed shovel is ``terminated`` with a reason, then ``starting`` again after
``reconnect-delay`` seconds (0: it stays terminated, as in RabbitMQ).  ``src-delete-after``
(``queue-length``: the messages in the queue when the shovel started; a number) ends the
shovel and removes its parameter.

The parameters are saved in ``shovels.json`` in the data directory (and exported in the
``parameters`` section of the definitions), so shovels come back after a restart.

aiormq is imported only when a shovel starts: a broker without shovels never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    from leveret.broker.server import Broker

log = logging.getLogger("leveret.shovel")

DEFAULT_PREFETCH = 1000
DEFAULT_RECONNECT_DELAY = 5
ACK_MODES = ("no-ack", "on-publish", "on-confirm")
PROTOCOLS = ("amqp10", "amqp091")
PROPERTY_KEYS = {
    "content_type": "str", "content_encoding": "str", "delivery_mode": "num", "priority": "num",
    "correlation_id": "str", "reply_to": "str", "expiration": "str", "message_id": "str",
    "timestamp": "num", "type": "str", "user_id": "str", "app_id": "str", "cluster_id": "str",
}


class ShovelInvalid(ValueError):
    """A shovel definition RabbitMQ would refuse; ``str()`` is its HTTP API reason."""


# ---------------------------------------------------------------------- validation


def erl(value: Any) -> str:
    """A JSON value as Erlang prints it (~p), for RabbitMQ's validation texts."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "<<" + json.dumps(value, ensure_ascii=False) + ">>"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(erl(v) for v in value) + "]"
    if isinstance(value, dict):
        return "#{" + ",".join(f"{erl(k)} => {erl(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _binary(name: str, v: Any) -> str | None:
    return None if isinstance(v, str) else f"{name} should be binary, actually was {erl(v)}"


def _number(name: str, v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool)
    return None if ok else f"{name} should be a number, actually was {erl(v)}"


def _boolean(name: str, v: Any) -> str | None:
    return None if isinstance(v, bool) else f"{name} should be boolean, actually was {erl(v)}"


def _enum(*options: str) -> Callable[[str, Any], str | None]:
    shown = "[" + ",".join(erl(o) for o in options) + "]"

    def check(name: str, v: Any) -> str | None:
        return None if v in options else f"{name} should be one of {shown}, actually was {erl(v)}"

    return check


def _delete_after(name: str, v: Any) -> str | None:
    if v in ("never", "queue-length") or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return None
    return (
        f'{name} should be a number greater than or equal to 0, "never" or "queue-length", '
        f"actually was {erl(v)}"
    )


def _uri(name: str, v: Any) -> str | None:
    if isinstance(v, str):
        try:
            parse_uri(v)
        except ValueError as exc:
            return f'"{v}" not a valid URI: {exc}'
        return None
    if not isinstance(v, list):
        return f"{name} should be list, actually was {erl(v)}"
    for item in v:
        if not isinstance(item, str):
            return f"{name} should be list, actually was {erl(item)}"
        why = _uri(name, item)
        if why:
            return why
    return None


def _properties(name: str, v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"{name} should be a map, actually was {erl(v)}"
    errors = []
    unknown = [k for k in v if k not in PROPERTY_KEYS]
    if unknown:
        errors.append(f"Unrecognised terms [{','.join('{' + erl(k) + ',' + erl(v[k]) + '}' for k in unknown)}] in {name}")
    for key, kind in PROPERTY_KEYS.items():
        if key in v:
            why = (_binary if kind == "str" else _number)(key, v[key])
            if why:
                errors.append(why)
    return "\n".join(errors) or None


def _queue_args(name: str, v: Any) -> str | None:
    return None if isinstance(v, dict) else f"{name} should be a map, actually was {erl(v)}"


# (key, check, mandatory), in rabbit_shovel_parameters' order: shovel, source, destination
VALIDATION: list[tuple[str, Callable[[str, Any], str | None], bool]] = [
    ("reconnect-delay", _number, False),
    ("ack-mode", _enum(*ACK_MODES), False),
    ("src-protocol", _enum(*PROTOCOLS), False),
    ("dest-protocol", _enum(*PROTOCOLS), False),
    ("src-uri", _uri, True),
    ("src-exchange", _binary, False),
    ("src-exchange-key", _binary, False),
    ("src-queue", _binary, False),
    ("src-queue-args", _queue_args, False),
    ("prefetch-count", _number, False),
    ("src-prefetch-count", _number, False),
    ("delete-after", _delete_after, False),
    ("src-delete-after", _delete_after, False),
    ("dest-uri", _uri, True),
    ("dest-exchange", _binary, False),
    ("dest-exchange-key", _binary, False),
    ("dest-queue", _binary, False),
    ("dest-queue-args", _queue_args, False),
    ("add-forward-headers", _boolean, False),
    ("add-timestamp-header", _boolean, False),
    ("dest-add-forward-headers", _boolean, False),
    ("dest-add-timestamp-header", _boolean, False),
    ("publish-properties", _properties, False),
    ("dest-publish-properties", _properties, False),
]
KNOWN = {k for k, _, _ in VALIDATION}


def validate(name: str, value: Any) -> dict[str, Any]:
    """RabbitMQ's checks of a shovel definition; raises :class:`ShovelInvalid` with
    RabbitMQ's reason ("Validation failed\\n\\n..." and one line per problem)."""
    if not isinstance(value, dict):
        raise ShovelInvalid(f"Validation failed\n\n{name} should be a map, actually was {erl(value)}\n")
    errors: list[str] = []
    if value.get("src-protocol", "amqp091") == "amqp10" or value.get("dest-protocol", "amqp091") == "amqp10":
        raise ShovelInvalid("Validation failed\n\nLeveret shovels speak amqp091 only (src-protocol, dest-protocol)\n")
    has = [k in value for k in ("src-exchange", "src-queue")]
    if not any(has):
        errors.append("Must specify 'src-exchange' or 'src-queue'")
    elif all(has):
        errors.append("Cannot specify 'src-exchange' and 'src-queue'")
    delete_after = value.get("src-delete-after", value.get("delete-after"))
    if isinstance(delete_after, int) and not isinstance(delete_after, bool) and value.get("ack-mode") == "no-ack":
        errors.append("Cannot specify 'no-ack' and numerical 'delete-after'")
    if "dest-exchange" in value and "dest-queue" in value:
        errors.append("Cannot specify 'dest-exchange' and 'dest-queue'")
    unknown = [k for k in value if k not in KNOWN]
    if unknown:
        terms = ",".join("{" + erl(k) + "," + erl(value[k]) + "}" for k in unknown)
        errors.append(f"Unrecognised terms [{terms}] in {name}")
    # RabbitMQ reports the key checks last to first
    for key, check, mandatory in reversed(VALIDATION):
        if key not in value:
            if mandatory:
                errors.append(f'Key "{key}" not found in {name}')
            continue
        why = check(key, value[key])
        if why:
            errors.append(why)
    if errors:
        raise ShovelInvalid("Validation failed\n\n" + "\n".join(errors) + "\n")
    return value


# ---------------------------------------------------------------------- URIs


class Uri:
    """An AMQP URI as RabbitMQ's amqp_uri reads it: no host = the local broker; no path =
    the vhost "/", a path of "/" = the vhost "" (``%2F`` for "/")."""

    def __init__(self, raw: str, local: bool, tls: bool, host: str, port: int, user: str | None,
                 password: str | None, vhost: str) -> None:
        self.raw, self.local, self.tls, self.host, self.port = raw, local, tls, host, port
        self.user, self.password, self.vhost = user, password, vhost

    def safe(self) -> str:
        """The URI without its credentials (the status and the forward headers show it)."""
        if self.local:
            return self.raw
        parts = urlsplit(self.raw)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")

    def client_url(self, local: tuple[str, int, str, str] | None = None) -> str:
        """The URL for aiormq; ``local`` is (host, port, user, secret) of this broker."""
        if self.local:
            assert local is not None
            host, port, user, password = local
            scheme = "amqp"
        else:
            host, port = self.host, self.port
            user, password = self.user or "guest", self.password or "guest"
            scheme = "amqps" if self.tls else "amqp"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(self.vhost, safe='')}"


def parse_uri(raw: str) -> Uri:
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise ValueError(f'{{no_scheme,"{raw}"}}')
    if scheme not in ("amqp", "amqps"):
        raise ValueError(f'{{{{unexpected_uri_scheme,"{scheme}"}},"{raw}"}}')
    parts = urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f'{{invalid_port,"{raw}"}}') from None
    host = parts.hostname or ""
    path = parts.path
    vhost = "/" if path == "" else unquote(path[1:])
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    tls = scheme == "amqps"
    return Uri(raw, not host, tls, host, port or (5671 if tls else 5672), user, password, vhost)


def uris(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# ---------------------------------------------------------------------- one shovel


class Shovel:
    """One dynamic shovel: its definition, its worker task and its status."""

    def __init__(self, manager: ShovelManager, vhost: str, name: str, value: dict[str, Any], owner: str | None) -> None:
        self.manager, self.vhost, self.name, self.value, self.owner = manager, vhost, name, value, owner
        self.state = "starting"
        self.reason: str | None = None
        self.since = time.time()
        self.src_uri: Uri | None = None
        self.dest_uri: Uri | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self._wake: asyncio.Event | None = None
        # counted as they happen (the API and Prometheus read them)
        self.forwarded = 0  # published to the destination
        self.confirmed = 0  # confirmed by the destination (on-confirm)
        self.acked = 0  # acked at the source (done)
        self.pending = 0  # published, not yet confirmed
        self.sessions = 0  # connection attempts that got running

    # -------------------------------------------------------------- settings

    def get(self, key: str, default: Any = None) -> Any:
        return self.value.get(key, default)

    @property
    def ack_mode(self) -> str:
        return str(self.get("ack-mode", "on-confirm"))

    @property
    def reconnect_delay(self) -> float:
        return float(self.get("reconnect-delay", DEFAULT_RECONNECT_DELAY))

    @property
    def prefetch(self) -> int:
        return int(self.get("src-prefetch-count", self.get("prefetch-count", DEFAULT_PREFETCH)))

    @property
    def delete_after(self) -> Any:
        return self.get("src-delete-after", self.get("delete-after", "never"))

    def status(self) -> dict[str, Any]:
        """RabbitMQ's /api/shovels entry (and Leveret's counters)."""
        out: dict[str, Any] = {
            "node": self.manager.node_name,
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)),
            "name": self.name,
            "vhost": self.vhost,
            "type": "dynamic",
            "state": self.state,
        }
        if self.state == "running" and self.src_uri is not None and self.dest_uri is not None:
            out.update(src_uri=self.src_uri.safe(), src_protocol="amqp091", dest_protocol="amqp091",
                       dest_uri=self.dest_uri.safe())
            for key in ("src-queue", "src-exchange", "src-exchange-key", "dest-queue", "dest-exchange",
                        "dest-exchange-key"):
                if key in self.value:
                    out[key.replace("-", "_")] = self.value[key]
        if self.state == "terminated" and self.reason:
            out["reason"] = self.reason
        out.update(messages_forwarded=self.forwarded, messages_confirmed=self.confirmed,
                   messages_acknowledged=self.acked, messages_pending=self.pending)
        return out

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.stopping = False
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"shovel {self.vhost}/{self.name}")

    async def stop(self) -> None:
        self.stopping = True
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5)

    async def restart(self) -> None:
        await self.stop()
        self.state, self.reason, self.since = "starting", None, time.time()
        self.start()

    async def _run(self) -> None:
        src_list, dest_list = uris(self.get("src-uri")), uris(self.get("dest-uri"))
        attempt = 0
        while not self.stopping:
            self.state, self.since = "starting", time.time()
            # as RabbitMQ: one of the URIs at random each time (here: in turn)
            self.src_uri = parse_uri(src_list[attempt % len(src_list)])
            self.dest_uri = parse_uri(dest_list[attempt % len(dest_list)])
            attempt += 1
            try:
                finished = await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed session: terminated, then again after the delay
                self.state, self.reason, self.since = "terminated", _reason(exc), time.time()
                log.warning("shovel %s in vhost %s: %s", self.name, self.vhost, self.reason)
            else:
                if finished:
                    log.info("shovel %s in vhost %s: done (src-delete-after), deleted", self.name, self.vhost)
                    self.manager.finished(self)
                    return
            delay = self.reconnect_delay
            if delay <= 0:
                return  # RabbitMQ: a reconnect-delay of 0 leaves the shovel terminated
            await asyncio.sleep(delay)

    async def _connect(self, uri: Uri) -> Any:
        import aiormq

        url = uri.client_url(self.manager.local_endpoint(self.owner) if uri.local else None)
        props: dict[str, Any] = {"connection_name": f"Shovel {self.name}", "product": "Leveret shovel"}
        return await asyncio.wait_for(aiormq.connect(url, client_properties=props), 30)

    async def _session(self) -> bool:
        """One connection to each end; returns True when src-delete-after is reached,
        raises when a connection fails."""
        from pamqp import commands as spec

        assert self.src_uri is not None and self.dest_uri is not None
        src = dest = None
        outboxes: tuple[_Outbox, ...] = ()
        try:
            src = await self._connect(self.src_uri)
            dest = await self._connect(self.dest_uri)
            confirm = self.ack_mode == "on-confirm"
            dch = await dest.channel(publisher_confirms=confirm)
            sch = await src.channel(publisher_confirms=False)
            # the destination queue and the source queue exist (declared durable if not)
            if "dest-queue" in self.value:
                await _ensure_queue(dest, self.value["dest-queue"], self.get("dest-queue-args", {}))
            remaining: int | None = None
            if "src-queue" in self.value:
                count = await _ensure_queue(src, self.value["src-queue"], self.get("src-queue-args", {}))
                queue = self.value["src-queue"]
                if self.delete_after == "queue-length":
                    remaining = count
            else:
                ok = await sch.queue_declare("", exclusive=True)
                queue = ok.queue
                await sch.queue_bind(queue, self.value["src-exchange"], routing_key=self.get("src-exchange-key", ""))
            if isinstance(self.delete_after, int):
                remaining = self.delete_after
            if remaining == 0:
                return True
            await sch.basic_qos(prefetch_count=self.prefetch)
            done = asyncio.get_running_loop().create_future()
            mover = _Mover(self, sch, dch, spec, remaining, done)
            outboxes = mover.outboxes
            cancelled = asyncio.get_running_loop().create_future()

            def on_cancel(frame: Any) -> None:  # the source queue was deleted
                if not cancelled.done():
                    cancelled.set_result(None)

            sch.on_consumer_cancel_callbacks.add(on_cancel)
            await sch.basic_consume(queue, mover.on_message, no_ack=self.ack_mode == "no-ack")
            self.state, self.reason, self.since = "running", None, time.time()
            self.sessions += 1
            # the end of the session: src-delete-after reached, or either connection or
            # channel closed (a destination refusing a publish closes its channel)
            ends = (src, dest, sch, dch)
            closed = [c.closing for c in ends]  # (observers: cancelling them is harmless)
            try:
                waits: list[asyncio.Future[Any]] = [done, cancelled, *closed]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in closed:
                    f.cancel()
            if done.done() and done.result():
                # wait for the last confirms and acks to be written
                await mover.drain()
                return True
            if cancelled.done():
                raise ConnectionError(f"the source cancelled the consumer (queue '{queue}' deleted?)")
            for c in ends:
                if c.is_closed:
                    f = c.closing
                    exc = f.exception() if f.done() and not f.cancelled() else None
                    raise ConnectionError(_reason(exc) if exc else "closed")
            raise ConnectionError("closed")
        finally:
            self.pending = 0
            for box in outboxes:
                box.close()
            closing = [asyncio.ensure_future(c.close()) for c in (src, dest) if c is not None and not c.is_closed]
            if closing:
                # both at once, and not for long: a peer that does not answer close-ok is dropped
                _done, late = await asyncio.wait(closing, timeout=2)
                for f in late:
                    f.cancel()
                for f in closing:
                    if f.done() and not f.cancelled():
                        f.exception()  # (retrieved: a failed close is not logged as unhandled)


class _Mover:
    """The per-session message path: deliveries from the source published to the
    destination; acks at the source per ack-mode."""

    def __init__(self, shovel: Shovel, sch: Any, dch: Any, spec: Any, remaining: int | None,
                 done: asyncio.Future[bool]) -> None:
        from pamqp.header import ContentHeader

        self.shovel, self.sch, self.dch, self.spec = shovel, sch, dch, spec
        self.remaining, self.done = remaining, done
        self.header = ContentHeader
        v = shovel.value
        if "dest-queue" in v:
            self.exchange: str | None = ""
            self.key: str | None = v["dest-queue"]
        else:
            self.exchange = v.get("dest-exchange")
            self.key = v.get("dest-exchange-key")
        self.forward = v.get("dest-add-forward-headers", v.get("add-forward-headers", False))
        self.timestamp = v.get("dest-add-timestamp-header", v.get("add-timestamp-header", False))
        self.set_props = v.get("dest-publish-properties", v.get("publish-properties", {})) or {}
        self.ack_mode = shovel.ack_mode
        self.src_out = _Outbox(sch)
        self.dest_out = _Outbox(dch)
        self.outboxes = (self.src_out, self.dest_out)
        self.settled: set[int] = set()  # source delivery tags done, above acked_upto
        self.acked_upto = 0
        self.flush_scheduled = False
        self.in_flight = 0  # deliveries taken but not counted against delete-after yet
        self.stop_taking = False
        self.last: asyncio.Future[Any] | None = None

    async def on_message(self, msg: Any) -> None:
        if self.stop_taking:
            return  # past src-delete-after: left unacked, requeued at the source on close
        if self.remaining is not None:
            if self.in_flight >= self.remaining:
                self.stop_taking = True
                return
            self.in_flight += 1
        props = msg.header.properties
        if self.set_props or self.forward or self.timestamp:
            props = self._properties(props)
        exchange = msg.delivery.exchange if self.exchange is None else self.exchange
        key = msg.delivery.routing_key if self.key is None else self.key
        tag = msg.delivery.delivery_tag
        sh = self.shovel
        dch = self.dch
        body = msg.body
        frames = [self.spec.Basic.Publish(exchange=exchange, routing_key=key),
                  self.header(properties=props, body_size=len(body)), *dch._split_body(body)]
        # aiormq's own basic_publish would add a message_id to every message: the
        # channel's publish bookkeeping is used directly, so a message goes as it came
        fut = None
        if self.ack_mode == "on-confirm":
            dch.delivery_tag += 1
            fut = dch.create_future()
            dch.confirmations[dch.delivery_tag] = fut
            sh.pending += 1
        drain = None
        if self.ack_mode == "on-publish":
            drain = dch.create_future()
        self.dest_out.send(frames, drain)
        sh.forwarded += 1
        sh.manager.forwarded += 1
        if fut is not None:
            fut.add_done_callback(lambda f, tag=tag: self._confirmed(f, tag))
            self.last = fut
        elif drain is not None:
            drain.add_done_callback(lambda f, tag=tag: self._settle(tag, not f.cancelled() and f.exception() is None))
            self.last = drain
        else:
            self._count_done()

    def _confirmed(self, fut: asyncio.Future[Any], tag: int) -> None:
        sh = self.shovel
        sh.pending = max(0, sh.pending - 1)
        if fut.cancelled() or fut.exception() is not None:
            return  # the destination went away: the source's close requeues it
        ok = isinstance(fut.result(), self.spec.Basic.Ack)
        if ok:
            sh.confirmed += 1
        self._settle(tag, ok)

    def _settle(self, tag: int, ok: bool) -> None:
        sch = self.sch
        if sch.is_closed:
            return
        if ok:
            # acks go as one ack(multiple) up to the highest tag below which every
            # delivery is settled (deliveries are settled in order but for nacks)
            self.settled.add(tag)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_acks)
        else:
            self.settled.add(tag)
            self.src_out.send([self.spec.Basic.Nack(delivery_tag=tag, requeue=True)])
        if ok:
            self.shovel.acked += 1
            self.shovel.manager.acked += 1
            self._count_done()
        elif self.remaining is not None:
            self.in_flight -= 1

    def _flush_acks(self) -> None:
        self.flush_scheduled = False
        settled, tag = self.settled, self.acked_upto
        while tag + 1 in settled:
            tag += 1
            settled.discard(tag)
        if tag > self.acked_upto and not self.sch.is_closed:
            self.acked_upto = tag
            self.src_out.send([self.spec.Basic.Ack(delivery_tag=tag, multiple=True)])

    def _count_done(self) -> None:
        if self.remaining is None:
            return
        self.remaining -= 1
        self.in_flight -= 1
        if self.remaining <= 0 and not self.done.done():
            self.done.set_result(True)

    async def drain(self) -> None:
        # the acks are queued on the source connection's writer: let it write them
        self._flush_acks()
        f = self.sch.create_future()
        self.src_out.send([], f)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(f, 10)

    def _properties(self, props: Any) -> Any:
        import copy

        p = copy.copy(props)
        for key, value in self.set_props.items():
            setattr(p, key, value)
        headers = dict(p.headers or {})
        if self.forward:
            sh = self.shovel
            assert sh.src_uri is not None and sh.dest_uri is not None
            entry: dict[str, Any] = {
                "shovelled-by": sh.manager.cluster_name,
                "shovel-type": "dynamic",
                "shovel-name": sh.name,
                "shovel-vhost": sh.vhost,
                "src-uri": sh.src_uri.safe(),
                "dest-uri": sh.dest_uri.safe(),
            }
            for key in ("src-queue", "src-exchange", "src-exchange-key", "dest-exchange", "dest-exchange-key",
                        "dest-queue"):
                if key in sh.value:
                    entry[key] = sh.value[key]
            headers["x-shovelled"] = [entry, *(headers.get("x-shovelled") or [])]
        if self.timestamp:
            import datetime

            headers["x-shovelled-timestamp"] = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        p.headers = headers
        return p


class _Outbox:
    """The frames of one channel, in order, written by one task into aiormq's (bounded)
    write queue: a full queue holds the frames here instead of failing, and what piled
    up goes as one batch.  ``send(frames, drained)``: ``drained`` (a future) is set once
    those frames are written to the socket."""

    BATCH = 4096  # frames per write

    def __init__(self, ch: Any) -> None:
        from collections import deque

        from aiormq.abc import ChannelFrame

        self.ch = ch
        self.marshall = ChannelFrame.marshall
        self.items: deque[tuple[list[Any], asyncio.Future[Any] | None]] = deque()
        self.event = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def send(self, frames: list[Any], drained: asyncio.Future[Any] | None = None) -> None:
        self.items.append((frames, drained))
        self.event.set()

    async def _run(self) -> None:
        ch = self.ch
        while True:
            await self.event.wait()
            self.event.clear()
            while self.items:
                frames: list[Any] = []
                drains: list[asyncio.Future[Any]] = []
                while self.items and len(frames) < self.BATCH:
                    f, d = self.items.popleft()
                    frames += f
                    if d is not None:
                        drains.append(d)
                written = ch.create_future() if drains else None
                await ch.write_queue.put(self.marshall(frames=frames, channel_number=ch.number, drain_future=written))
                if written is not None:
                    written.add_done_callback(lambda w, ds=drains: _resolve(w, ds))

    def close(self) -> None:
        self.task.cancel()
        for _, d in self.items:
            if d is not None and not d.done():
                d.cancel()
        self.items.clear()


def _resolve(written: asyncio.Future[Any], drains: list[asyncio.Future[Any]]) -> None:
    failed = written.cancelled() or written.exception() is not None
    for d in drains:
        if not d.done():
            if failed:
                d.cancel()
            else:
                d.set_result(None)


async def _ensure_queue(conn: Any, queue: str, args: dict[str, Any]) -> int:
    """RabbitMQ's ensure_queue: a passive declare, and a durable declare when the queue
    is missing; the queue's message count."""
    import aiormq

    ch = await conn.channel(publisher_confirms=False)
    try:
        ok = await ch.queue_declare(queue, passive=True)
        return int(ok.message_count)
    except aiormq.exceptions.ChannelNotFoundEntity:
        ch = await conn.channel(publisher_confirms=False)
        ok = await ch.queue_declare(queue, durable=True, arguments=args or None)
        return int(ok.message_count)
    finally:
        with contextlib.suppress(Exception):
            await ch.close()


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, ConnectionError) else text


# ---------------------------------------------------------------------- the node's shovels


class ShovelManager:
    """The broker's dynamic shovels: the parameters, their workers, their file."""

    FILE = "shovels.json"

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.shovels: dict[tuple[str, str], Shovel] = {}
        self.local_secret = secrets.token_urlsafe(32)
        self.running = False
        self.node_name = f"leveret@{socket.gethostname()}"
        self.forwarded = 0  # every shovel's, deleted ones included (Prometheus)
        self.acked = 0
        self.deleted = 0

    @property
    def cluster_name(self) -> str:
        return str(self.broker.server_properties()["cluster_name"])

    # -------------------------------------------------------------- the local broker

    def local_endpoint(self, owner: str | None) -> tuple[str, int, str, str]:
        """(host, port, user, secret) for a connection to this broker as ``owner`` (the user
        who declared the shovel; without one, the first administrator)."""
        b = self.broker
        if b.server is None or not b.server.sockets:
            raise ConnectionError("the local broker has no AMQP listener")
        host = b.server.sockets[0].getsockname()[0]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        user = owner if owner and b.user_exists(owner) else self._admin()
        return host, b.port, user, self.local_secret

    def _admin(self) -> str:
        users = self.broker.access.users
        for name, u in users.items():
            if "administrator" in u.tags:
                return name
        return next(iter(users), "guest")

    def trusted_login(self, user: str, password: str) -> bool:
        """A shovel's own connection to this broker (the secret never leaves the process)."""
        return (
            bool(password)
            and secrets.compare_digest(password.encode("utf-8", "surrogatepass"), self.local_secret.encode())
            and self.broker.user_exists(user)
        )

    # -------------------------------------------------------------- parameters

    def declare(self, vhost: str, name: str, value: Any, owner: str | None = None) -> bool:
        """Validate and set the parameter; (re)start its shovel.  True if it is new."""
        value = validate(name, value)
        old = self.shovels.get((vhost, name))
        sh = Shovel(self, vhost, name, value, owner or (old.owner if old else None))
        self.shovels[(vhost, name)] = sh
        if old is not None:
            asyncio.get_running_loop().create_task(self._replace(old, sh))
        elif self.running:
            sh.start()
        self.save()
        return old is None

    async def _replace(self, old: Shovel, new: Shovel) -> None:
        await old.stop()
        if self.running and self.shovels.get((new.vhost, new.name)) is new:
            new.start()

    async def delete(self, vhost: str, name: str) -> bool:
        sh = self.shovels.pop((vhost, name), None)
        if sh is None:
            return False
        self.deleted += 1
        await sh.stop()
        self.save()
        return True

    def finished(self, sh: Shovel) -> None:
        """src-delete-after reached: the parameter goes (as RabbitMQ deletes it)."""
        if self.shovels.get((sh.vhost, sh.name)) is sh:
            del self.shovels[(sh.vhost, sh.name)]
            self.deleted += 1
            self.save()

    async def restart(self, vhost: str, name: str) -> bool:
        sh = self.shovels.get((vhost, name))
        if sh is None:
            return False
        await sh.restart()
        return True

    def get(self, vhost: str, name: str) -> Shovel | None:
        return self.shovels.get((vhost, name))

    def list_shovels(self, vhost: str | None = None) -> list[Shovel]:
        return [s for (vn, _), s in sorted(self.shovels.items()) if vhost is None or vn == vhost]

    def parameters(self, vhosts: list[str] | None = None) -> list[dict[str, Any]]:
        """The shovels as RabbitMQ exports its runtime parameters."""
        return [{"value": s.value, "vhost": s.vhost, "component": "shovel", "name": s.name}
                for s in self.list_shovels() if vhosts is None or s.vhost in vhosts]

    def vhost_deleted(self, vhost: str) -> None:
        for sh in self.list_shovels(vhost):
            self.shovels.pop((sh.vhost, sh.name), None)
            sh.stopping = True
            if sh.task is not None:
                sh.task.cancel()
        self.save()

    # -------------------------------------------------------------- lifecycle and file

    def _path(self) -> str | None:
        d = self.broker.config.data_dir
        return os.path.join(d, self.FILE) if d else None

    def load(self) -> None:
        """The shovels saved in the data directory (before :meth:`start`)."""
        path = self._path()
        if path is None or not os.path.exists(path):
            return
        with open(path) as f:
            data = json.load(f)
        for p in data.get("shovels", []):
            try:
                sh = Shovel(self, p["vhost"], p["name"], validate(p["name"], p["value"]), p.get("owner"))
            except (KeyError, ShovelInvalid) as exc:
                log.error("%s: skipped a shovel: %s", path, exc)
                continue
            self.shovels[(sh.vhost, sh.name)] = sh

    def save(self) -> None:
        path = self._path()
        if path is None:
            return
        data = {"shovels": [{"vhost": s.vhost, "name": s.name, "value": s.value, "owner": s.owner}
                            for s in self.list_shovels()]}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def start(self) -> None:
        self.running = True
        for sh in self.list_shovels():
            sh.start()

    async def stop(self) -> None:
        self.running = False
        await asyncio.gather(*(sh.stop() for sh in self.list_shovels()), return_exceptions=True)
