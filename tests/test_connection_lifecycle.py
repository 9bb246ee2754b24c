"""Closing connections and channels as RabbitMQ 3.10 does: a client's connection.close
answered with close-ok and a clean EOF even while its frames still arrive, and a
channel.close of the broker crossing the client's own.

``LEVERET_REFERENCE_URL=amqp://guest:guest@127.0.0.1:5672/`` runs these tests against a real
RabbitMQ (see tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pamqp import commands as C

from tests.rawamqp import RawClient, method_frame, publish_frames, still_works
from tests.reference import REFERENCE

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "interop" / "clients" / "node" / "node_modules"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _close(code: int = 200, text: str = "bye") -> C.Connection.Close:
    return C.Connection.Close(reply_code=code, reply_text=text, class_id=0, method_id=0)


def _recv_until_eof(sock: socket.socket, timeout: float) -> bytes:
    """Everything up to EOF; a reset (ECONNRESET) fails the test."""
    sock.settimeout(timeout)
    got = b""
    while True:
        chunk = sock.recv(65536)  # ConnectionResetError propagates
        if not chunk:
            return got
        got += chunk


def test_client_close_while_its_frames_still_arrive_gets_close_ok_and_a_clean_eof(port: int) -> None:
    """amqplib's channel frames can follow its connection.close on the wire.  RabbitMQ
    answers close-ok and keeps reading (and dropping) until the client closes: the client
    sees its close-ok and a clean EOF.  Leveret closed the socket at once, with input
    unread, so the kernel reset the connection (EPIPE / ECONNRESET, no close-ok)."""
    with RawClient.connect(port) as c:
        c.handshake()
        c.open_channel(1)
        pub = publish_frames(1, "", "issue11-nowhere", b"x" * 1000)
        # far more than one read of frames after the close: they are still unread when
        # the broker has answered it
        c.send(pub * 20 + method_frame(0, _close()) + pub * 1500)
        for _ in range(10):
            c.send(pub)  # and it goes on writing for a moment (no EPIPE / ECONNRESET)
            time.sleep(0.01)
        c.expect(C.Connection.CloseOk, 0)
        assert c.buf == b""  # nothing after close-ok
        c.sock.shutdown(socket.SHUT_WR)
        if REFERENCE:
            # RabbitMQ closes with SO_LINGER 0 once the client has closed its side: a
            # reset then, harmless as the client is done; Leveret ends with a clean EOF
            try:
                _recv_until_eof(c.sock, 5)
            except ConnectionResetError:
                pass
        else:
            assert _recv_until_eof(c.sock, 5) == b""
    still_works(port)


def test_client_close_then_silence_the_broker_closes_after_the_heartbeat_interval(port: int) -> None:
    """After close-ok RabbitMQ waits for the client's EOF for at most the heartbeat
    interval (30 s without heartbeats), then closes the socket itself."""
    with RawClient.connect(port) as c:
        c.handshake(heartbeat=1)
        c.send_method(0, _close())
        c.expect(C.Connection.CloseOk, 0)
        t = time.monotonic()
        frames = c.expect_socket_closed(timeout=5)
        assert not [o for _, o in frames if isinstance(o, C.Connection.Close)]
        assert time.monotonic() - t >= 0.5  # not at once: it waited for the client


_CLOSE_BURST_JS = r"""
const amqp = require('amqplib/callback_api');
const [url, n] = [process.argv[2], parseInt(process.argv[3])];
amqp.connect(url, (err, conn) => {
  if (err) { console.log('CONNECT ' + err.message); process.exit(2); }
  conn.on('error', (e) => console.log('ERROR ' + (e.code || e.message)));
  conn.createChannel((err, ch) => {
    if (err) { console.log('CHANNEL ' + err.message); process.exit(2); }
    for (let i = 0; i < n; i++) ch.sendToQueue('issue11-nowhere', Buffer.alloc(1000, 'x'));
    const t = setTimeout(() => { console.log('TIMEOUT: close callback never called'); process.exit(1); }, 10000);
    conn.close((err) => {
      clearTimeout(t);
      if (err) { console.log('CLOSE ' + (err.code || err.message)); process.exit(1); }
      console.log('CLOSED'); process.exit(0);
    });
  });
});
"""


@pytest.mark.external
def test_amqplib_close_right_after_a_burst_of_sends(port: int, tmp_path: Path) -> None:
    """Node amqplib (callback API): sendToQueue a few hundred messages, then
    connection.close(cb) at once: the callback is called without error."""
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "amqplib").is_dir():
        if IN_CI:
            pytest.fail("node / amqplib missing in CI (interop/install.sh installs them)")
        pytest.skip("node or amqplib missing: run 'npm ci' in interop/clients/node")
    script = tmp_path / "close_burst.js"
    script.write_text(_CLOSE_BURST_JS)
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    for n in (50, 500):
        r = subprocess.run(
            [node, str(script), f"amqp://guest:guest@127.0.0.1:{port}/", str(n)],
            env=env, capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0 and r.stdout.strip() == "CLOSED", (n, r.stdout, r.stderr)



# ---------------------------------------------------------------------- crossing channel.close


def _crossing_close(c: RawClient) -> None:
    """Publish to a missing exchange and close the channel without waiting (amqp091-go):
    the broker's channel.close 404 and the client's channel.close cross."""
    c.send(
        publish_frames(1, "issue11-no-such-exchange", "k", b"x")
        + method_frame(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    )
    m = c.expect(C.Channel.Close, 1)
    assert (m.reply_code, m.class_id, m.method_id) == (404, 60, 40)
    assert m.reply_text == "NOT_FOUND - no exchange 'issue11-no-such-exchange' in vhost '/'"
    c.expect(C.Channel.CloseOk, 1)  # the client's close is answered


def test_crossing_channel_close_leaves_the_connection_and_other_channels_alone(client: RawClient) -> None:
    client.open_channel(2)
    q = client.declare_queue(2, exclusive=True).queue
    _crossing_close(client)
    client.send_method(1, C.Channel.CloseOk())  # for the broker's close
    client.publish(2, "", q, b"on channel 2")
    got = client.get(2, q)
    assert got is not None and got[2] == b"on channel 2"
    client.open_channel(1)  # the number is free again
    assert client.declare_queue(1, q, passive=True).message_count == 0


def test_crossing_channel_close_drops_frames_until_close_ok(client: RawClient) -> None:
    client.open_channel(2)
    q = client.declare_queue(2, exclusive=True).queue
    _crossing_close(client)
    client.send_method(1, C.Queue.Declare(queue="", exclusive=True))
    client.send(publish_frames(1, "", q, b"dropped"))
    client.send_method(1, C.Channel.CloseOk())
    assert client.declare_queue(2, q, passive=True).message_count == 0  # nothing answered on 1


def test_crossing_channel_close_then_a_second_close_ok_is_a_connection_error(client: RawClient) -> None:
    """Once the broker's close-ok came the channel is gone: RabbitMQ treats one more
    close-ok like any method on a channel that is not open."""
    _crossing_close(client)
    client.send_method(1, C.Channel.CloseOk())
    client.send_method(1, C.Channel.CloseOk())
    m = client.expect_connection_close(504, 20, 41)
    assert m.reply_text == "CHANNEL_ERROR - expected 'channel.open'"


def test_channel_open_on_a_closing_channel(client: RawClient) -> None:
    _crossing_close(client)
    client.send_method(1, C.Channel.Open())  # before the close-ok the broker waits for
    m = client.expect_connection_close(504, 20, 10)
    assert m.reply_text == "CHANNEL_ERROR - second 'channel.open' seen"

