"""The connection's state machine without I/O (``broker/wire/machine.py``): client bytes in,
server bytes out, as h11 is tested.  The node is a real :class:`Broker` (its users,
vhosts and settings), never started: no socket, no event loop, no timer.  What the
asyncio adapter adds (the socket, timers, flow control) is tested over real sockets
elsewhere (test_protocol_errors, test_issue11_regressions, test_tls, test_flow ...).
"""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import commands as C
from pamqp import encode as penc
from pamqp import frame as pframe
from pamqp import heartbeat as pheartbeat

from leveret.broker.config import Config
from leveret.broker.server import Broker
from leveret.broker.wire.machine import (
    HB_DEAD,
    HB_OK,
    HB_SEND,
    S_CLOSING,
    S_OPEN,
    S_OPENED,
    ConnectionMachine,
)
from leveret.protocol.constants import FRAME_HEARTBEAT, PROTOCOL_HEADER
from tests.rawamqp import build_frame, method_frame

CAPS = {"capabilities": {"authentication_failure_close": True}}


def frames_of(data: bytes) -> list[tuple[int, Any]]:
    """The server's bytes as (channel, pamqp object)."""
    out = []
    while data:
        used, channel, obj = pframe.unmarshal(data)
        out.append((channel, obj))
        data = data[used:]
    return out


@pytest.fixture
def node() -> Broker:
    return Broker(Config(port=0, users={"guest": "guest", "bob": "secret"}, vhosts=["/"], heartbeat=10))


def machine(node: Broker) -> ConnectionMachine:
    m = ConnectionMachine(node)
    m.peer = "127.0.0.1:40000"
    m.local_host = "127.0.0.1"  # (guest may log in only on a loopback address)
    return m


def start_ok(user: str = "guest", password: str = "guest", props: dict[str, Any] | None = None) -> bytes:
    return method_frame(0, C.Connection.StartOk(client_properties=props if props is not None else CAPS,
                                                mechanism="PLAIN", response=f"\0{user}\0{password}", locale="en_US"))


def tune_ok(frame_max: int = 131072, channel_max: int = 2047, heartbeat: int = 10) -> bytes:
    return method_frame(0, C.Connection.TuneOk(channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat))


def opened(node: Broker) -> ConnectionMachine:
    m = machine(node)
    m.receive_data(PROTOCOL_HEADER + start_ok() + tune_ok() + method_frame(0, C.Connection.Open(virtual_host="/")))
    m.take_output()
    assert m.state == S_OPENED
    return m


def test_protocol_header_gets_connection_start(node: Broker) -> None:
    m = machine(node)
    m.receive_data(PROTOCOL_HEADER[:3])
    assert m.take_output() == b""
    m.receive_data(PROTOCOL_HEADER[3:])
    [(ch, start)] = frames_of(m.take_output())
    assert ch == 0 and isinstance(start, C.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms == "PLAIN AMQPLAIN"  # EXTERNAL only where peers are verified
    assert start.server_properties["product"] == "Leveret"


def test_external_offered_where_peers_are_verified(node: Broker) -> None:
    m = ConnectionMachine(node, tls=True, external=True)
    m.receive_data(PROTOCOL_HEADER)
    [(_, start)] = frames_of(m.take_output())
    assert start.mechanisms == "PLAIN AMQPLAIN EXTERNAL"


def test_bad_protocol_header_is_answered_with_ours_and_closed(node: Broker) -> None:
    m = machine(node)
    m.receive_data(b"AMQP\x00\x00\x08\x00")
    assert m.take_output() == PROTOCOL_HEADER
    assert m.transport_closed


def test_handshake_bytes_in_bytes_out(node: Broker) -> None:
    m = machine(node)
    m.receive_data(PROTOCOL_HEADER)
    m.take_output()
    m.receive_data(start_ok())
    [(_, tune)] = frames_of(m.take_output())
    assert isinstance(tune, C.Connection.Tune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 10)
    assert m.mechanism == "PLAIN" and m.user == "guest"
    m.receive_data(tune_ok(frame_max=8192, channel_max=16, heartbeat=5))
    assert m.take_output() == b"" and m.state == S_OPEN
    assert (m.frame_max, m.parser.frame_max, m.channel_max, m.heartbeat) == (8192, 8192, 16, 5)
    m.receive_data(method_frame(0, C.Connection.Open(virtual_host="/")))
    [(_, ok)] = frames_of(m.take_output())
    assert isinstance(ok, C.Connection.OpenOk) and m.state == S_OPENED and m.vhost.name == "/"


def test_any_split_of_the_input_gives_the_same_output(node: Broker) -> None:
    data = PROTOCOL_HEADER + start_ok() + tune_ok() + method_frame(0, C.Connection.Open(virtual_host="/"))
    whole = machine(node)
    whole.receive_data(data)
    expected = whole.take_output()
    m = machine(node)
    out = b""
    for i in range(len(data)):
        m.receive_data(data[i : i + 1])
        out += m.take_output()
    assert out == expected and m.state == S_OPENED


def test_amqplain_login(node: Broker) -> None:
    m = machine(node)
    response = penc.field_table({"LOGIN": "bob", "PASSWORD": "secret"})[4:].decode()
    m.receive_data(PROTOCOL_HEADER + method_frame(0, C.Connection.StartOk(client_properties={}, mechanism="AMQPLAIN",
                                                                        response=response, locale="en_US")))
    assert isinstance(frames_of(m.take_output())[-1][1], C.Connection.Tune)
    assert (m.user, m.mechanism) == ("bob", "AMQPLAIN")


def test_wrong_password_with_authentication_failure_close(node: Broker) -> None:
    m = machine(node)
    m.receive_data(PROTOCOL_HEADER + start_ok(password="nope"))
    _, close = frames_of(m.take_output())[-1]
    assert isinstance(close, C.Connection.Close)
    assert close.reply_code == 403
    assert close.reply_text == ("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                                "For details see the broker logfile.")
    assert m.transport_closed and m.state == S_CLOSING
    assert node.totals.stats_auth["amqp091"] == [1, 1]


def test_wrong_password_without_the_capability_just_closes(node: Broker) -> None:
    m = machine(node)
    m.receive_data(PROTOCOL_HEADER + start_ok(password="nope", props={}))
    assert [type(o) for _, o in frames_of(m.take_output())] == [C.Connection.Start]
    assert m.transport_closed


def test_guest_refused_off_loopback(node: Broker) -> None:
    m = machine(node)
    m.local_host = "192.0.2.7"
    m.receive_data(PROTOCOL_HEADER + start_ok())
    _, close = frames_of(m.take_output())[-1]
    assert isinstance(close, C.Connection.Close) and close.reply_code == 403


def test_tune_ok_frame_max_below_minimum_closes_the_socket(node: Broker) -> None:
    m = machine(node)
    m.receive_data(PROTOCOL_HEADER + start_ok())
    m.take_output()
    m.receive_data(tune_ok(frame_max=1024))
    assert m.take_output() == b""  # (before open RabbitMQ sends no connection.close)
    assert m.transport_closed


def test_open_of_a_missing_vhost_then_close_ok(node: Broker) -> None:
    m = machine(node)
    m.receive_data(PROTOCOL_HEADER + start_ok() + tune_ok() + method_frame(0, C.Connection.Open(virtual_host="nope")))
    _, close = frames_of(m.take_output())[-1]
    assert isinstance(close, C.Connection.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        530, "NOT_ALLOWED - vhost nope not found", 10, 40)
    assert m.state == S_CLOSING and not m.transport_closed
    m.receive_data(method_frame(1, C.Channel.Open()))  # ignored while closing
    assert m.take_output() == b""
    m.receive_data(method_frame(0, C.Connection.CloseOk()))
    assert m.transport_closed


def test_client_close_gets_close_ok_then_input_is_dropped(node: Broker) -> None:
    m = opened(node)
    m.receive_data(method_frame(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)))
    assert [type(o) for _, o in frames_of(m.take_output())] == [C.Connection.CloseOk]
    assert m.draining and m.state == S_CLOSING
    m.receive_data(method_frame(1, C.Channel.Open()))
    assert m.take_output() == b""


def test_channel_open_close_and_channel_max(node: Broker) -> None:
    m = machine(node)
    m.receive_data(PROTOCOL_HEADER + start_ok() + tune_ok(channel_max=1) + method_frame(0, C.Connection.Open()))
    m.take_output()
    m.receive_data(method_frame(1, C.Channel.Open()))
    assert [(ch, type(o)) for ch, o in frames_of(m.take_output())] == [(1, C.Channel.OpenOk)]
    assert list(m.channels) == [1]
    m.receive_data(method_frame(1, C.Channel.Close(reply_code=200, reply_text="ok", class_id=0, method_id=0)))
    assert [(ch, type(o)) for ch, o in frames_of(m.take_output())] == [(1, C.Channel.CloseOk)]
    assert m.channels == {}
    m.receive_data(method_frame(1, C.Channel.Open()) + method_frame(2, C.Channel.Open()))
    out = frames_of(m.take_output())
    assert [(ch, type(o)) for ch, o in out] == [(1, C.Channel.OpenOk), (0, C.Connection.Close)]
    assert out[1][1].reply_code == 530
    assert out[1][1].reply_text == "NOT_ALLOWED - number of channels opened (1) has reached the negotiated channel_max (1)"


def test_a_channel_error_closes_the_channel_only(node: Broker) -> None:
    m = opened(node)
    m.receive_data(method_frame(1, C.Channel.Open()) + method_frame(1, C.Queue.Declare(queue="missing", passive=True)))
    out = frames_of(m.take_output())
    assert [(ch, type(o)) for ch, o in out] == [(1, C.Channel.OpenOk), (1, C.Channel.Close)]
    assert out[1][1].reply_code == 404 and m.state == S_OPENED
    m.receive_data(method_frame(1, C.Channel.CloseOk()))
    m.receive_data(method_frame(1, C.Channel.Open()))
    assert [(ch, type(o)) for ch, o in frames_of(m.take_output())] == [(1, C.Channel.OpenOk)]


def test_method_on_a_channel_before_open(node: Broker) -> None:
    m = machine(node)
    m.receive_data(PROTOCOL_HEADER + start_ok() + tune_ok())
    m.take_output()
    m.receive_data(method_frame(1, C.Channel.Open()))
    _, close = frames_of(m.take_output())[-1]
    assert isinstance(close, C.Connection.Close) and close.reply_code == 505


def test_heartbeat_frames_are_accepted_on_channel_0_only(node: Broker) -> None:
    m = opened(node)
    m.receive_data(pframe.marshal(pheartbeat.Heartbeat(), 0))
    assert m.take_output() == b"" and m.state == S_OPENED
    m.receive_data(build_frame(FRAME_HEARTBEAT, 3, b""))
    _, close = frames_of(m.take_output())[-1]
    assert (close.reply_code, close.reply_text) == (505, "UNEXPECTED_FRAME - heartbeat frame on channel 3")


def test_heartbeat_accounting(node: Broker) -> None:
    m = opened(node)  # heartbeat 10 s
    m.receive_data(b"", now=100.0)
    m.last_send = 100.0
    assert m.heartbeat_check(104.0) == HB_OK
    assert m.heartbeat_check(105.0) == HB_SEND  # half an interval without output
    assert m.heartbeat_check(106.0) == HB_OK  # (counted as sent)
    assert m.heartbeat_check(120.0) == HB_SEND
    assert m.heartbeat_check(120.5) == HB_DEAD  # silent for more than two intervals
    assert m.heartbeat_check(130.0, reading=False) != HB_DEAD  # not read: its silence is ours
