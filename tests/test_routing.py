"""Exchanges and routing, as RabbitMQ 3.10 does them: when an alternate exchange is used,
topic keys with empty words, and the validation of a headers binding's x-match."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest
from aio_pika import ExchangeType, Message
from pamqp import commands as C

from tests.helpers import ready_count
from tests.rawamqp import RawClient


async def test_alternate_exchange_not_used_when_exchange_routes_to_an_exchange(url: str) -> None:
    # RabbitMQ uses an exchange's AE only when the exchange itself matched no binding at
    # all; a match to an exchange that then routes nowhere leaves the message unroutable
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        ae = await ch.declare_exchange("r2.ae", ExchangeType.FANOUT, auto_delete=True)
        aeq = await ch.declare_queue("r2.aeq", exclusive=True)
        await aeq.bind(ae)
        x = await ch.declare_exchange("r2.x", auto_delete=True, arguments={"alternate-exchange": "r2.ae"})
        y = await ch.declare_exchange("r2.y", auto_delete=True)
        await y.bind(x, "k")
        await x.publish(Message(b"1"), "k")
        await asyncio.sleep(0.1)
        assert await ready_count(ch, "r2.aeq") == 0
        await x.publish(Message(b"2"), "other")  # no binding at all: the AE takes it
        await asyncio.sleep(0.1)
        assert await ready_count(ch, "r2.aeq") == 1
        await y.unbind(x, "k")


async def test_topic_empty_routing_key_has_no_words(url: str) -> None:
    # RabbitMQ splits "" into zero words: "*" and "#.*" do not match it, "" and "#" do
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        x = await ch.declare_exchange("r2.t", ExchangeType.TOPIC, auto_delete=True)
        names = {"star": "*", "hashstar": "#.*", "empty": "", "hash": "#", "emptyword": "*.a"}
        for n, key in names.items():
            q = await ch.declare_queue(f"r2.t.{n}", exclusive=True)
            await q.bind(x, key)
        await x.publish(Message(b"1"), "")
        await x.publish(Message(b"2"), ".a")  # an empty first word is a word
        await asyncio.sleep(0.1)
        counts = {n: await ready_count(ch, f"r2.t.{n}") for n in names}
        assert counts == {"star": 0, "hashstar": 1, "empty": 1, "hash": 2, "emptyword": 1}


@pytest.mark.parametrize(
    "x_match,text",
    [
        ("bogus", 'Invalid x-match field value <<"bogus">>; expected all, any, all-with-x, or any-with-x'),
        ("ALL", 'Invalid x-match field value <<"ALL">>; expected all, any, all-with-x, or any-with-x'),
        ("", "Invalid x-match field value <<>>; expected all, any, all-with-x, or any-with-x"),
        ("\x01x", "Invalid x-match field value <<1,120>>; expected all, any, all-with-x, or any-with-x"),
        (1, "Invalid x-match field type byte (value 1); expected longstr"),
        (70000, "Invalid x-match field type signedint (value 70000); expected longstr"),
        (True, "Invalid x-match field type bool (value true); expected longstr"),
    ],
    ids=["bogus", "uppercase", "empty", "unprintable", "byte", "signedint", "bool"],
)
def test_headers_binding_with_an_invalid_x_match_is_refused(client: RawClient, x_match: Any, text: str) -> None:
    q = client.declare_queue(1, exclusive=True).queue
    client.send_method(1, C.Queue.Bind(queue=q, exchange="amq.headers", routing_key="", arguments={"x-match": x_match, "a": "b"}))
    m = client.expect_channel_close(1, 406, 50, 20)
    assert m.reply_text == f"PRECONDITION_FAILED - {text}"
    client.open_channel(1)
    for mode in ("all", "any", "all-with-x", "any-with-x"):  # the four valid ones
        client.rpc(1, C.Queue.Bind(queue=q, exchange="amq.headers", routing_key="", arguments={"x-match": mode}), C.Queue.BindOk)
    client.rpc(1, C.Queue.Bind(queue=q, exchange="amq.headers", routing_key="", arguments={"a": "b"}), C.Queue.BindOk)
    # not checked for other exchange types
    client.rpc(1, C.Queue.Bind(queue=q, exchange="amq.direct", routing_key="", arguments={"x-match": "bogus"}), C.Queue.BindOk)


def test_exchange_to_exchange_headers_binding_with_an_invalid_x_match(client: RawClient) -> None:
    client.rpc(1, C.Exchange.Declare(exchange="issue11.hx", exchange_type="fanout", auto_delete=True), C.Exchange.DeclareOk)
    client.send_method(1, C.Exchange.Bind(destination="issue11.hx", source="amq.headers", arguments={"x-match": "bogus"}))
    m = client.expect_channel_close(1, 406, 40, 30)
    assert m.reply_text.startswith('PRECONDITION_FAILED - Invalid x-match field value <<"bogus">>')
    client.open_channel(1)
    client.rpc(1, C.Exchange.Delete(exchange="issue11.hx"), C.Exchange.DeleteOk)

