"""What /api/connections (and /api/channels) shows of a connection: true values, read from
the wire layer's view of it (``Connection.info``): TLS and its session, the authentication
mechanism negotiated, the time of accept, the peer's and the listener's address, as
RabbitMQ 3.10's management API reports them.  Real clients over real sockets (pika,
aio-pika, a raw AMQPLAIN handshake), and TLS with tests/test_tls.py's throwaway PKI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aio_pika
import pika
import pytest
from pamqp import commands as C
from pamqp import encode as penc

from leveret.testing import BrokerThread
from tests.httpapi import Api
from tests.rawamqp import PROTOCOL_HEADER, RawClient
from tests.test_tls import PKI, tls_config
from tests.test_tls import pki as pki  # noqa: F401  (the module-scoped PKI fixture)

PLAIN_KEYS_NULL = ("ssl_protocol", "ssl_key_exchange", "ssl_cipher", "ssl_hash")


@pytest.fixture(scope="module")
def broker(pki: PKI) -> Iterator[BrokerThread]:  # noqa: F811
    cfg = tls_config(pki, verify=True, host="127.0.0.1", http_port=0, users={"guest": "guest", "carol": "x"})
    with BrokerThread(cfg) as b:
        yield b


@pytest.fixture
def api(broker: BrokerThread) -> Api:
    assert broker.broker is not None and broker.broker.http_port
    return Api("127.0.0.1", broker.broker.http_port)


def only_connection(api: Api, port: int) -> dict[str, Any]:
    """The connection whose peer port is ``port`` (the client's end of the socket)."""
    found = [c for c in api.get("/connections") if c["peer_port"] == port]
    assert len(found) == 1, found
    return found[0]


def test_plain_connection_over_pika(broker: BrokerThread, api: Api) -> None:
    before = int(time.time() * 1000)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    after = int(time.time() * 1000)
    try:
        conn.channel()
        sock = conn._impl._transport._sock  # the client's socket: its local port is the peer's
        client_host, client_port = sock.getsockname()[:2]
        c = only_connection(api, client_port)
        assert c["ssl"] is False
        assert all(c[k] is None for k in PLAIN_KEYS_NULL), c
        assert c["auth_mechanism"] == "PLAIN"
        assert before - 1000 <= c["connected_at"] <= after + 1000  # (seconds apart from "now" would fail)
        assert c["protocol"] == "AMQP 0-9-1"
        assert (c["peer_host"], c["peer_port"]) == (client_host, client_port)
        assert (c["host"], c["port"]) == ("127.0.0.1", broker.port)
        assert c["name"] == f"{client_host}:{client_port} -> 127.0.0.1:{broker.port}"
        assert c["user"] == "guest" and c["vhost"] == "/" and c["channels"] == 1
        # the same connection by name, and its channel
        shown = api.get("/connections/" + c["name"].replace(">", "%3E").replace(" ", "%20"))
        assert shown["connected_at"] == c["connected_at"]
        time.sleep(0.01)
        assert only_connection(api, client_port)["connected_at"] == c["connected_at"]  # (fixed, not "now")
        chans = [ch for ch in api.get("/channels") if ch["connection_details"]["peer_port"] == client_port]
        assert [ch["name"] for ch in chans] == [c["name"] + " (1)"]
    finally:
        conn.close()


def test_amqplain_is_reported(broker: BrokerThread, api: Api) -> None:
    with RawClient.connect(broker.port) as raw:
        raw.send(PROTOCOL_HEADER)
        raw.expect(C.Connection.Start, 0)
        response = penc.field_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:].decode()
        raw.send_method(0, C.Connection.StartOk(client_properties={}, mechanism="AMQPLAIN", response=response,
                                                locale="en_US"))
        tune = raw.expect(C.Connection.Tune, 0)
        raw.send_method(0, C.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0))
        raw.send_method(0, C.Connection.Open(virtual_host="/"))
        raw.expect(C.Connection.OpenOk, 0)
        c = only_connection(api, raw.sock.getsockname()[1])
        assert c["auth_mechanism"] == "AMQPLAIN"
        assert c["ssl"] is False


def test_tls_connection_with_plain_login_over_pika(broker: BrokerThread, api: Api, pki: PKI) -> None:  # noqa: F811
    assert broker.tls_port is not None
    params = pika.ConnectionParameters("127.0.0.1", broker.tls_port, ssl_options=pika.SSLOptions(pki.client_context(), "127.0.0.1"))
    conn = pika.BlockingConnection(params)
    try:
        sock = conn._impl._transport._sock
        client_port = sock.getsockname()[1]
        c = only_connection(api, client_port)
        assert c["ssl"] is True
        assert c["auth_mechanism"] == "PLAIN"
        assert (c["host"], c["port"]) == ("127.0.0.1", broker.tls_port)
        version, (suite, _, _) = sock.version(), sock.cipher()
        assert c["ssl_protocol"] == version.lower()  # e.g. "tlsv1.3"
        assert c["ssl_protocol"] in ("tlsv1.3", "tlsv1.2")
        if suite == "TLS_AES_256_GCM_SHA384":
            assert (c["ssl_key_exchange"], c["ssl_cipher"], c["ssl_hash"]) == ("any", "aes_256_gcm", "aead")
        else:
            assert c["ssl_cipher"] and c["ssl_hash"] and c["ssl_key_exchange"]
    finally:
        conn.close()


async def test_tls_external_login_over_aio_pika(broker: BrokerThread, api: Api, pki: PKI) -> None:  # noqa: F811
    ctx = pki.client_context(pki.client("carol"))
    url = f"amqps://127.0.0.1:{broker.tls_port}/?auth=external"
    before = int(time.time() * 1000)
    async with await aio_pika.connect(url, ssl_context=ctx, timeout=5):
        conns = await asyncio.to_thread(api.get, "/connections")
        carol = [c for c in conns if c["user"] == "carol"]
        assert len(carol) == 1, conns
        c = carol[0]
        assert c["ssl"] is True and c["auth_mechanism"] == "EXTERNAL"
        assert c["ssl_protocol"] in ("tlsv1.3", "tlsv1.2") and c["ssl_cipher"]
        assert before - 1000 <= c["connected_at"] <= int(time.time() * 1000)
        assert c["port"] == broker.tls_port and c["protocol"] == "AMQP 0-9-1"
