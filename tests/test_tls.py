"""TLS (amqps): the second listener, client certificates, the EXTERNAL mechanism.

Certificates are made for each test session with ``trustme`` (a throwaway CA): the
server's, a client's per user, an expired one and one from a CA the broker does not
trust.  Real clients (pika, aio-pika, Node amqplib) and raw TLS sockets talk to a real
broker listening on a real socket.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pika
import pika.exceptions
import pytest
import trustme
from pamqp import commands as C

from leveret.broker.config import Config
from leveret.testing import AsyncBroker, BrokerThread, free_port
from tests.polling import wait_until
from tests.rawamqp import PROTOCOL_HEADER, RawClient

ROOT = Path(__file__).resolve().parents[1]
# pika's login refusal (the broker's 403 connection.close)
REFUSED = (pika.exceptions.AuthenticationError, pika.exceptions.ProbableAuthenticationError)
NODE_DIR = ROOT / "interop" / "clients" / "node"


@dataclass
class PKI:
    """PEM files in a temporary directory."""

    ca: trustme.CA
    ca_file: str
    cert: str  # the server's certificate chain
    key: str
    folder: Path

    def client(self, name: str, ca: trustme.CA | None = None, expired: bool = False) -> tuple[str, str]:
        """(certificate, key) files of a client certificate with CN ``name``."""
        tag = f"{name}-{'expired' if expired else 'ok'}-{'other' if ca is not None else 'ours'}"
        cert, key = self.folder / f"{tag}.pem", self.folder / f"{tag}.key"
        if not cert.exists():
            now = datetime.datetime.now(datetime.UTC)
            when = {"not_before": now - datetime.timedelta(days=30), "not_after": now - datetime.timedelta(days=1)}
            # a subjectAltName is required by cryptography >= 51 (trustme passes an empty
            # list without one); the user is the subject's CN, the SAN is only a label
            leaf = (ca or self.ca).issue_cert(
                f"{name}.clients.leveret.test", common_name=name, **(when if expired else {})
            )
            leaf.cert_chain_pems[0].write_to_path(str(cert))
            leaf.private_key_pem.write_to_path(str(key))
        return str(cert), str(key)

    def client_context(self, client: tuple[str, str] | None = None) -> ssl.SSLContext:
        """A client context trusting our CA (hostname checked: 127.0.0.1 is in the
        server's certificate), with a client certificate if given."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if client is not None:
            ctx.load_cert_chain(*client)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    cert, key, ca_file = folder / "server.pem", folder / "server.key", folder / "ca.pem"
    server.private_key_pem.write_to_path(str(key))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(cert), append=i > 0)
    ca.cert_pem.write_to_path(str(ca_file))
    return PKI(ca, str(ca_file), str(cert), str(key), folder)


def tls_config(pki: PKI, verify: bool = False, fail: bool = False, **kw: object) -> Config:
    return Config(
        port=0,
        tls_port=0,
        tls_cert=pki.cert,
        tls_key=pki.key,
        tls_ca=pki.ca_file,
        tls_verify_peer=verify,
        tls_fail_if_no_peer_cert=fail,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def start_broker() -> Iterator[Callable[..., BrokerThread]]:
    started: list[BrokerThread] = []

    def start(config: Config, use_uvloop: bool = False) -> BrokerThread:
        b = BrokerThread(config, use_uvloop=use_uvloop).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def pika_params(
    b: BrokerThread, ctx: ssl.SSLContext, external: bool = False, user: str = "guest", password: str = "guest"
) -> pika.ConnectionParameters:
    creds = pika.credentials.ExternalCredentials() if external else pika.PlainCredentials(user, password)
    assert b.tls_port is not None
    return pika.ConnectionParameters(
        "127.0.0.1",
        b.tls_port,
        credentials=creds,
        ssl_options=pika.SSLOptions(ctx, "127.0.0.1"),
        connection_attempts=1,
        socket_timeout=5,
        blocked_connection_timeout=5,
    )


def pika_round_trip(params: pika.ConnectionParameters, body: bytes) -> bytes:
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.confirm_delivery()
        ch.basic_publish("", q, body)
        method, _props, got = ch.basic_get(q, auto_ack=True)
        assert method is not None, "nothing in the queue after a confirmed publish"
        return got
    finally:
        if conn.is_open:
            conn.close()


def tls_socket(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


def start_mechanisms(sock: socket.socket) -> str:
    """Send the protocol header, return connection.start's mechanisms."""
    with RawClient(sock, 5.0) as c:
        c.send(PROTOCOL_HEADER)
        start = c.expect(C.Connection.Start, 0)
    mech = start.mechanisms
    return mech.decode() if isinstance(mech, bytes) else mech


# ---------------------------------------------------------------------- listener and clients


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_pika_round_trip_over_tls(pki: PKI, start_broker: Callable[..., BrokerThread], use_uvloop: bool) -> None:
    b = start_broker(tls_config(pki), use_uvloop)
    assert b.tls_port not in (None, b.port)
    assert pika_round_trip(pika_params(b, pki.client_context()), b"over tls") == b"over tls"
    # the plain listener is still there beside it
    conn = pika.BlockingConnection(pika.URLParameters(b.url))
    conn.close()
    assert f"127.0.0.1:{b.tls_port} (amqps)" in b.call(lambda: b.broker.addresses)  # type: ignore[union-attr]


def test_isolated_vhost_amqps_url(pki: PKI, start_broker: Callable[..., BrokerThread]) -> None:
    b = start_broker(tls_config(pki))
    with b.isolated_vhost("tls") as v:
        assert v.amqps_url.startswith(f"amqps://guest:guest@127.0.0.1:{b.tls_port}/tls-")
        params = pika.URLParameters(v.amqps_url)
        params.ssl_options = pika.SSLOptions(pki.client_context(), "127.0.0.1")
        conn = pika.BlockingConnection(params)
        try:
            conn.channel().queue_declare("in-the-vhost")
            assert [q.name for q in v.queues()] == ["in-the-vhost"]
        finally:
            conn.close()


def test_no_tls_listener_unless_tls_port_given(start_broker: Callable[..., BrokerThread]) -> None:
    b = start_broker(Config(port=0))
    assert b.tls_port is None
    assert b.call(lambda: b.broker.addresses) == [f"127.0.0.1:{b.port}"]  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="no TLS listener"):
        _ = b.amqps_url


async def test_aio_pika_round_trip_over_tls(pki: PKI) -> None:
    async with AsyncBroker(tls_config(pki)) as b:
        conn = await aio_pika.connect(b.amqps_url, ssl_context=pki.client_context(), timeout=5)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue(exclusive=True)
            await ch.default_exchange.publish(aio_pika.Message(b"aio over tls"), routing_key=q.name)
            msg = await q.get(timeout=5, no_ack=True)
            assert msg is not None and msg.body == b"aio over tls"
            assert [c.peer for c in b.connections()]  # it is the TLS listener's connection
        assert b.tls_port is not None


async def test_aio_pika_external_login(pki: PKI) -> None:
    async with AsyncBroker(tls_config(pki, verify=True, users={"guest": "guest", "carol": "x"})) as b:
        ctx = pki.client_context(pki.client("carol"))
        url = f"amqps://127.0.0.1:{b.tls_port}/?auth=external"
        async with await aio_pika.connect(url, ssl_context=ctx, timeout=5):
            assert [c.user for c in b.connections()] == ["carol"]


NODE_SCRIPT = r"""
const fs = require('node:fs');
const amqp = require('amqplib');
(async () => {
  const opts = { ca: [fs.readFileSync(process.env.TLS_CA)] };
  let userId;
  if (process.env.TLS_CERT) {
    opts.cert = fs.readFileSync(process.env.TLS_CERT);
    opts.key = fs.readFileSync(process.env.TLS_KEY);
    opts.credentials = amqp.credentials.external();
    userId = process.env.EXPECT_USER;  // the broker checks user_id against the login
  }
  const conn = await amqp.connect(process.env.AMQP_URL, opts);
  const ch = await conn.createConfirmChannel();
  const q = (await ch.assertQueue('', { exclusive: true })).queue;
  ch.sendToQueue(q, Buffer.from('node over tls'), { userId });
  await ch.waitForConfirms();
  const m = await ch.get(q, { noAck: true });
  if (m === false) throw new Error('no message after a confirmed publish');
  console.log(m.content.toString());
  await conn.close();
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
"""


@pytest.mark.external
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.skipif(not (NODE_DIR / "node_modules" / "amqplib").is_dir(), reason="run npm ci in interop/clients/node")
@pytest.mark.parametrize("external", [False, True], ids=["plain", "external"])
def test_node_amqplib_round_trip_over_tls(pki: PKI, start_broker: Callable[..., BrokerThread], external: bool) -> None:
    b = start_broker(tls_config(pki, verify=True, users={"guest": "guest", "dave": "secret"}))
    env = dict(os.environ, TLS_CA=pki.ca_file)
    if external:
        cert, key = pki.client("dave")
        env.update(TLS_CERT=cert, TLS_KEY=key, EXPECT_USER="dave", AMQP_URL=f"amqps://127.0.0.1:{b.tls_port}/")
    else:
        env["AMQP_URL"] = b.amqps_url
    r = subprocess.run(["node", "-e", NODE_SCRIPT], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "node over tls"


def test_cli_flags_and_startup_line(pki: PKI) -> None:
    port, tls_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "leveret", "--in-memory", "--host", "127.0.0.1", "--port", str(port),
        "--tls-port", str(tls_port), "--tls-cert", pki.cert, "--tls-key", pki.key,
        "--tls-ca", pki.ca_file, "--tls-verify-peer", "--tls-fail-if-no-peer-cert",
        "--http-port", "off", "--prometheus-port", "off",  # (not the fixed 15672/15692 of the CLI)
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:  # it exited: say why (stderr), e.g. a port taken since free_port()
            proc.wait(timeout=20)
            assert proc.stderr is not None
            pytest.fail(f"the broker exited ({proc.returncode}): {proc.stderr.read()}")
        assert f"127.0.0.1:{port}" in line and f"127.0.0.1:{tls_port} (amqps)" in line, line
        ctx = pki.client_context(pki.client("guest"))
        params = pika.ConnectionParameters(
            "127.0.0.1", tls_port, credentials=pika.credentials.ExternalCredentials(),
            ssl_options=pika.SSLOptions(ctx, "127.0.0.1"), connection_attempts=1, socket_timeout=5,
        )  # fmt: skip
        assert pika_round_trip(params, b"cli") == b"cli"
        # --tls-fail-if-no-peer-cert: no certificate, no connection
        with pytest.raises((ssl.SSLError, ConnectionError, pika.exceptions.AMQPConnectionError)):
            pika_round_trip(
                pika.ConnectionParameters(
                    "127.0.0.1", tls_port, ssl_options=pika.SSLOptions(pki.client_context(), "127.0.0.1"),
                    connection_attempts=1, socket_timeout=5,
                ),  # fmt: skip
                b"x",
            )
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--tls-port", "0"], 2, "--tls-port needs --tls-cert"),
        (["--tls-port", "0", "--tls-cert", "/nonexistent/cert.pem"], 1, "cannot load the TLS certificate"),
    ],
    ids=["no-cert", "missing-file"],
)
def test_cli_tls_errors(args: list[str], code: int, text: str) -> None:
    cmd = [sys.executable, "-m", "leveret", "--in-memory", "--host", "127.0.0.1", "--port", "0",
           "--http-port", "off", "--prometheus-port", "off", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert text in r.stderr
    assert "listening on" not in r.stdout


def test_restart_listens_on_the_same_tls_port(pki: PKI, start_broker: Callable[..., BrokerThread]) -> None:
    b = start_broker(tls_config(pki))
    tls_port = b.tls_port
    b.restart()
    assert b.call(lambda: b.broker.tls_port) == tls_port  # type: ignore[union-attr]
    assert pika_round_trip(pika_params(b, pki.client_context()), b"again") == b"again"


# ---------------------------------------------------------------------- EXTERNAL


def test_external_login_takes_the_user_from_the_certificate_cn(
    pki: PKI, start_broker: Callable[..., BrokerThread]
) -> None:
    b = start_broker(tls_config(pki, verify=True, fail=True, users={"guest": "guest", "alice": "pw"}))
    ctx = pki.client_context(pki.client("alice"))
    conn = pika.BlockingConnection(pika_params(b, ctx, external=True))
    try:
        assert [c.user for c in b.connections()] == ["alice"]
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"by certificate", pika.BasicProperties(user_id="alice"))
        method, _props, body = ch.basic_get(q, auto_ack=True)
        assert method is not None and body == b"by certificate"
    finally:
        conn.close()


def test_external_unknown_user_is_refused(pki: PKI, start_broker: Callable[..., BrokerThread]) -> None:
    b = start_broker(tls_config(pki, verify=True, fail=True))
    ctx = pki.client_context(pki.client("mallory"))
    with pytest.raises(REFUSED, match="ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL"):
        pika.BlockingConnection(pika_params(b, ctx, external=True))
    wait_until(lambda: b.connections() == [], what="the broker to have no connections")


def test_external_without_a_certificate_is_refused(pki: PKI, start_broker: Callable[..., BrokerThread]) -> None:
    # verify_peer without fail_if_no_peer_cert: a client without certificate gets in,
    # with a password only
    b = start_broker(tls_config(pki, verify=True))
    with pytest.raises(REFUSED, match="ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL"):
        pika.BlockingConnection(pika_params(b, pki.client_context(), external=True))
    assert pika_round_trip(pika_params(b, pki.client_context()), b"plain") == b"plain"


def test_external_with_a_certificate_without_a_cn_is_refused(
    pki: PKI, start_broker: Callable[..., BrokerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """RabbitMQ's rabbit_auth_mechanism_ssl refuses the login when it finds no name in the
    certificate ("no name found"); Leveret logged "user 'None' - invalid credentials"."""
    b = start_broker(tls_config(pki, verify=True, fail=True, users={"guest": "guest", "None": "x"}))
    cert, key = pki.folder / "no-cn.pem", pki.folder / "no-cn.key"
    leaf = pki.ca.issue_cert("x.test")  # a subjectAltName, no common_name: a subject without CN
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ctx = pki.client_context((str(cert), str(key)))
    caplog.set_level(logging.INFO, logger="leveret")
    with pytest.raises(REFUSED, match="ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL"):
        pika.BlockingConnection(pika_params(b, ctx, external=True))
    wait_until(lambda: "EXTERNAL login refused: no name found" in caplog.text, what="the refusal in the log")
    assert "user 'None'" not in caplog.text
    wait_until(lambda: b.connections() == [], what="the broker to have no connections")
    # the same certificate with a password login is fine (the certificate only lacks a name)
    assert pika_round_trip(pika_params(b, ctx), b"by password") == b"by password"


def test_external_without_a_certificate_logs_why(
    pki: PKI, start_broker: Callable[..., BrokerThread], caplog: pytest.LogCaptureFixture
) -> None:
    b = start_broker(tls_config(pki, verify=True))
    caplog.set_level(logging.INFO, logger="leveret")
    with pytest.raises(REFUSED):
        pika.BlockingConnection(pika_params(b, pki.client_context(), external=True))
    wait_until(lambda: "EXTERNAL login refused: no peer certificate" in caplog.text, what="the refusal in the log")


def test_external_offered_only_on_tls_with_peer_verification(
    pki: PKI, start_broker: Callable[..., BrokerThread]
) -> None:
    verified = start_broker(tls_config(pki, verify=True))
    unverified = start_broker(tls_config(pki))
    assert verified.tls_port is not None and unverified.tls_port is not None
    plain = socket.create_connection(("127.0.0.1", verified.port), timeout=5)
    assert start_mechanisms(plain).split() == ["PLAIN", "AMQPLAIN"]
    assert start_mechanisms(tls_socket(unverified.tls_port, pki.client_context())).split() == ["PLAIN", "AMQPLAIN"]
    mechs = start_mechanisms(tls_socket(verified.tls_port, pki.client_context()))
    assert mechs.split() == ["PLAIN", "AMQPLAIN", "EXTERNAL"]


@pytest.mark.parametrize("where", ["plain", "tls-unverified"])
def test_external_where_not_offered_is_an_invalid_start_ok(
    pki: PKI, start_broker: Callable[..., BrokerThread], where: str
) -> None:
    b = start_broker(tls_config(pki))
    assert b.tls_port is not None
    if where == "plain":
        sock: socket.socket = socket.create_connection(("127.0.0.1", b.port), timeout=5)
    else:
        sock = tls_socket(b.tls_port, pki.client_context(pki.client("guest")))
    with RawClient(sock, 5.0) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(C.Connection.Start, 0)
        c.send_method(
            0,
            C.Connection.StartOk(
                client_properties={"capabilities": {"authentication_failure_close": True}},
                mechanism="EXTERNAL",
                response="",
                locale="en_US",
            ),
        )
        # as a mechanism it did not offer: the socket is closed, no connection.close
        assert c.expect_socket_closed() == []


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_plain_tcp_client_on_the_tls_port_gets_a_clean_close(
    pki: PKI, start_broker: Callable[..., BrokerThread], use_uvloop: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leveret")
    b = start_broker(tls_config(pki, handshake_timeout=30.0), use_uvloop)
    assert b.tls_port is not None
    with socket.create_connection(("127.0.0.1", b.tls_port), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(PROTOCOL_HEADER)
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - t0
    # closed at once (not at the 30 s handshake timeout), nothing AMQP sent back
    assert not data.startswith(b"AMQP") and b"\x01\x00\x00" not in data[:3]
    assert elapsed < 3.0
    wait_until(lambda: b.connections() == [], what="the broker to have no connections")
    wait_until(lambda: "TLS handshake failed with 127.0.0.1:" in caplog.text, what="the handshake failure in the log")
    # and the listener still serves TLS clients
    assert pika_round_trip(pika_params(b, pki.client_context()), b"still") == b"still"


def test_silent_client_on_the_tls_port_is_dropped_at_the_handshake_timeout(
    pki: PKI, start_broker: Callable[..., BrokerThread]
) -> None:
    b = start_broker(tls_config(pki, handshake_timeout=0.5))
    assert b.tls_port is not None
    with socket.create_connection(("127.0.0.1", b.tls_port), timeout=5) as s:
        t0 = time.monotonic()
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - t0
    assert data == b""
    assert 0.4 < elapsed < 3.0


def test_handshake_timeout_counts_from_accept_not_from_the_end_of_tls(
    pki: PKI, start_broker: Callable[..., BrokerThread]
) -> None:
    b = start_broker(tls_config(pki, handshake_timeout=1.5))
    assert b.tls_port is not None
    raw = socket.create_connection(("127.0.0.1", b.tls_port), timeout=5)
    t0 = time.monotonic()
    time.sleep(1.0)  # a slow TLS handshake: most of the timeout gone before it ends
    with pki.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as s:
        # no AMQP header: the broker drops us 1.5 s after accept (not 1.5 s after TLS)
        try:
            data = s.recv(4096)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        elapsed = time.monotonic() - t0
    assert data == b""
    assert 1.3 < elapsed < 2.3, elapsed


@pytest.mark.parametrize("case", ["expired", "untrusted", "none"])
def test_bad_client_certificate_is_refused(
    pki: PKI, start_broker: Callable[..., BrokerThread], case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leveret")
    b = start_broker(tls_config(pki, verify=True, fail=True))
    assert b.tls_port is not None
    client = {
        "expired": lambda: pki.client("guest", expired=True),
        "untrusted": lambda: pki.client("guest", ca=trustme.CA()),
        "none": lambda: None,
    }[case]()
    ctx = pki.client_context(client)
    # the control: a good certificate gets connection.start
    assert "EXTERNAL" in start_mechanisms(tls_socket(b.tls_port, pki.client_context(pki.client("guest"))))
    got = b""
    try:
        # with TLS 1.3 the client's handshake ends before the server has checked its
        # certificate: the refusal shows on the next read
        with tls_socket(b.tls_port, ctx) as s:
            s.sendall(PROTOCOL_HEADER)
            got = s.recv(4096)
    except (ssl.SSLError, ConnectionError):
        pass
    assert got == b"", f"the broker answered a client with a {case} certificate: {got!r}"
    wait_until(lambda: b.connections() == [], what="the broker to have no connections")
    reason = {"expired": "certificate has expired", "untrusted": "unable to get local issuer", "none": "did not return a certificate"}
    wait_until(lambda: reason[case] in caplog.text, what=f"{reason[case]!r} in the log")


def _tls11_client_context(pki: PKI) -> ssl.SSLContext | None:
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(pki.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        return None
    return ctx


def _tls11_control(pki: PKI, ctx: ssl.SSLContext) -> bool:
    """Can this OpenSSL still do a TLS 1.1 handshake (with a server that allows it)?"""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        server_ctx.load_cert_chain(pki.cert, pki.key)
    except (ValueError, ssl.SSLError):
        return False
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = lsock.accept()
            conn.settimeout(5)
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with tls_socket(port, ctx) as s:
            return s.version() == "TLSv1.1"
    except (OSError, ssl.SSLError):
        return False
    finally:
        t.join(5)
        lsock.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_client_is_refused(pki: PKI, start_broker: Callable[..., BrokerThread]) -> None:
    ctx = _tls11_client_context(pki)
    if ctx is None or not _tls11_control(pki, ctx):
        pytest.skip("this OpenSSL cannot make a TLS 1.1 handshake at all")
    b = start_broker(tls_config(pki))
    assert b.tls_port is not None
    # (asyncio's TLS drops the connection without flushing its protocol_version alert:
    # the client sees an EOF in the handshake)
    with pytest.raises(ssl.SSLError):
        tls_socket(b.tls_port, ctx).close()
    wait_until(lambda: b.connections() == [], what="the broker to have no connections")
    # TLS 1.2 is accepted
    ctx12 = pki.client_context()
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_socket(b.tls_port, ctx12) as s:
        assert s.version() == "TLSv1.2"


def test_asyncio_loop_unaffected_by_failed_handshakes(pki: PKI) -> None:
    """A failed TLS handshake is logged at debug level only: no loop exception handler
    noise, no task left behind (checked on a loop of our own)."""
    errors: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        async with AsyncBroker(tls_config(pki, verify=True, fail=True)) as b:
            assert b.tls_port is not None
            for _ in range(3):
                r, w = await asyncio.open_connection("127.0.0.1", b.tls_port)
                w.write(PROTOCOL_HEADER)
                assert await asyncio.wait_for(r.read(), 5) == b""
                w.close()

    asyncio.run(main())
    assert errors == []


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_deliveries_go_out_in_full_tls_records(
    pki: PKI, start_broker: Callable[..., BrokerThread], use_uvloop: bool
) -> None:
    """Frames written together go into one TLS record (up to 16 KiB), not a record per
    frame: the client decrypts (and its recv returns) a record at a time, so a record per
    frame cost TLS clients most of their throughput (bench.py --tls, 1 KiB bodies)."""
    b = start_broker(tls_config(pki), use_uvloop)
    assert b.tls_port is not None
    n, body = 200, b"x" * 1024
    with RawClient(tls_socket(b.tls_port, pki.client_context()), 5.0) as c:
        c.handshake()
        c.open_channel(1)
        c.declare_queue(1, "records")
        for _ in range(n):
            c.publish(1, "", "records", body)
        wait_until(lambda: b.message_count("records") >= n, what=f"{n} messages in 'records'")
        c.send_method(1, C.Basic.Consume(queue="records", consumer_tag="t", no_ack=True))
        sizes, total = [], 0
        while total < n * len(body):  # SSLSocket.recv returns one record at most
            data = c.sock.recv(1 << 20)
            assert data, "closed by the broker"
            sizes.append(len(data))
            total += len(data)
    assert total / len(sizes) > 8192, f"{len(sizes)} records for {total} bytes"


# ---------------------------------------------------------------------- HTTPS: management API, Prometheus


def https_get(port: int, path: str, ctx: ssl.SSLContext, auth: bool = True) -> tuple[int, bytes]:
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_management_api_and_prometheus_over_https(
    pki: PKI, start_broker: Callable[..., BrokerThread], use_uvloop: bool
) -> None:
    import json

    # HTTPS only (no plain HTTP listener), with the amqps listener's certificate
    b = start_broker(tls_config(pki, http_tls_port=0, prometheus_tls_port=0, host="127.0.0.1"), use_uvloop)
    broker = b.broker
    assert broker is not None and broker.http_tls_port and broker.prometheus_tls_port
    assert broker.http_port is None and broker.prometheus_port is None
    ctx = pki.client_context()  # our CA, hostname 127.0.0.1 checked
    status, body = https_get(broker.http_tls_port, "/api/overview", ctx)
    assert status == 200
    overview = json.loads(body)
    protocols = {(x["protocol"], x["port"]) for x in overview["listeners"]}
    assert ("https", broker.http_tls_port) in protocols and ("https/prometheus", broker.prometheus_tls_port) in protocols
    assert ("amqp/ssl", b.tls_port) in protocols
    assert https_get(broker.http_tls_port, "/api/overview", ctx, auth=False)[0] == 401
    status, body = https_get(broker.http_tls_port, f"/api/health/checks/port-listener/{broker.http_tls_port}", ctx)
    assert status == 200, body
    status, body = https_get(broker.prometheus_tls_port, "/metrics", ctx, auth=False)
    assert status == 200 and b"rabbitmq_identity_info" in body

    # a client that does not trust our CA is refused by its own check
    with pytest.raises(OSError):
        https_get(broker.http_tls_port, "/api/overview", ssl.create_default_context())

    # plain HTTP on the TLS port: closed at once, no HTTP answer, nothing else disturbed
    with socket.create_connection(("127.0.0.1", broker.http_tls_port), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - t0
    assert not data.startswith(b"HTTP/"), data[:100]
    assert elapsed < 3.0
    import urllib.error
    import urllib.request

    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{broker.http_tls_port}/api/overview", timeout=5)
    assert https_get(broker.http_tls_port, "/api/whoami", ctx)[0] == 200


def test_https_beside_http_with_its_own_certificate(pki: PKI, start_broker: Callable[..., BrokerThread]) -> None:
    # amqps off; the HTTPS listener's own certificate (chain and key in one file)
    both = pki.folder / "http-both.pem"
    both.write_text(Path(pki.key).read_text() + Path(pki.cert).read_text())
    b = start_broker(Config(port=0, host="127.0.0.1", http_port=0, http_tls_port=0, http_tls_cert=str(both)))
    broker = b.broker
    assert broker is not None and broker.http_port and broker.http_tls_port and b.tls_port is None
    assert https_get(broker.http_tls_port, "/api/whoami", pki.client_context())[0] == 200
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/", timeout=5) as r:
        assert r.status == 200


def test_cli_https_from_the_config_file(pki: PKI, tmp_path: Path) -> None:
    port, https_port = free_port(), free_port()
    cert, key = Path(pki.cert), Path(pki.key)
    shutil.copy(cert, tmp_path / "web.pem")
    shutil.copy(key, tmp_path / "web.key")
    conf = tmp_path / "leveret.toml"
    conf.write_text(
        f'[amqp]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[http]\nport = "off"\ntls_port = {https_port}\ntls_cert = "web.pem"\ntls_key = "web.key"\n'
        '[prometheus]\nport = "off"\n'
    )
    base = [sys.executable, "-m", "leveret", "--in-memory", "--config", str(conf)]
    r = subprocess.run([*base, "--print-config"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"http_tls_port = {https_port}" in r.stdout
    assert f'http_tls_cert = "{tmp_path / "web.pem"}"' in r.stdout  # relative to the file
    assert f'http_tls_key = "{tmp_path / "web.key"}"' in r.stdout
    proc = subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"HTTP API on 127.0.0.1:{https_port} (https)" in line, line
        assert https_get(https_port, "/api/overview", pki.client_context())[0] == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("http", "flags", "code", "text"),
    [
        ('tls_port = 0\ntls_cert = "web.pem"\ntls_key = "missing.key"\n', [], 1,
         "cannot load the TLS key '{dir}/missing.key' (http_tls_key: [http] tls_key, --http-tls-key): no such file"),
        ('tls_port = 0\ntls_cert = "missing.pem"\n', [], 1,
         "cannot load the TLS certificate '{dir}/missing.pem' (http_tls_cert: [http] tls_cert, --http-tls-cert)"),
        ("tls_port = 0\n", [], 2, "--http-tls-port ([http] tls_port) needs a certificate"),
        ("", ["--prometheus-tls-port", "0"], 2, "--prometheus-tls-port ([prometheus] tls_port) needs a certificate"),
        ('tls_port = 0\ntls_cert = "web.pem"\n', [], 1, "HTTPS (management API, Prometheus): cannot load the TLS certificate"),
    ],
    ids=["missing-key", "missing-cert", "no-cert", "prometheus-no-cert", "key-not-in-cert"],
)
def test_cli_refuses_a_bad_https_config(
    pki: PKI, tmp_path: Path, http: str, flags: list[str], code: int, text: str
) -> None:
    shutil.copy(pki.cert, tmp_path / "web.pem")
    conf = tmp_path / "leveret.toml"
    conf.write_text(f'[amqp]\nhost = "127.0.0.1"\nport = 0\n[http]\nport = 0\n{http}[prometheus]\nport = 0\n')
    cmd = [sys.executable, "-m", "leveret", "--in-memory", "--config", str(conf), *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert text.format(dir=tmp_path) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert "listening on" not in r.stdout


def test_leveret_ctl_over_https(pki: PKI, start_broker: Callable[..., BrokerThread]) -> None:
    """leveret-ctl --scheme https: with --cacert it verifies the broker's certificate;
    without it (and without --insecure) the handshake fails and it exits 69."""
    b = start_broker(tls_config(pki, http_tls_port=0, host="127.0.0.1"))
    assert b.broker is not None and b.broker.http_tls_port
    base = [sys.executable, "-m", "leveret.ctl", "-H", "127.0.0.1", "-P", str(b.broker.http_tls_port), "--scheme", "https"]
    r = subprocess.run([*base, "--cacert", pki.ca_file, "list_vhosts"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == ["/"]
    r = subprocess.run([*base, "list_vhosts"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 69, (r.stdout, r.stderr)
    r = subprocess.run([*base, "--insecure", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.splitlines() == ["name", "/"], (r.stdout, r.stderr)


def test_leveret_ctl_names_a_certificate_verification_failure(
    pki: PKI, start_broker: Callable[..., BrokerThread]
) -> None:
    """An https management API whose certificate the client does not trust: leveret-ctl
    said the host was not reachable; it names the verification failure and --cacert."""
    b = start_broker(tls_config(pki, http_tls_port=0, host="127.0.0.1"))
    assert b.broker is not None and b.broker.http_tls_port
    base = [sys.executable, "-m", "leveret.ctl", "-H", "127.0.0.1", "-P", str(b.broker.http_tls_port),
            "--scheme", "https"]
    r = subprocess.run([*base, "status"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 69, r
    assert "certificate" in r.stderr and "failed verification" in r.stderr and "--cacert" in r.stderr, r.stderr
    assert "not reachable" not in r.stderr
    r = subprocess.run([*base, "--cacert", pki.ca_file, "status"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    assert f"Management API: https://127.0.0.1:{b.broker.http_tls_port}" in r.stdout
