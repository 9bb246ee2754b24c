"""Listeners: every configured port checked before any is bound (all clashes reported at
once, naming the flags), and port 0 one free port shared by every address of a listener."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from leveret.broker import Broker, Config
from leveret.broker.listener import PortsInUse
from leveret.testing import BrokerThread, free_port

ROOT = Path(__file__).resolve().parent.parent


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")


@contextlib.contextmanager
def taken_ports(n: int) -> Iterator[list[int]]:
    """n ports of 127.0.0.1 that something (this test) listens on."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen()
            socks.append(s)
        yield [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_every_port_in_use_is_reported_at_once_naming_the_flags() -> None:
    free = free_port()
    with taken_ports(3) as (amqp, http, prometheus):
        r = subprocess.run(
            [sys.executable, "-m", "leveret", "--in-memory", "--host", "127.0.0.1", "--port", str(amqp),
             "--http-port", str(http), "--prometheus-port", str(prometheus), "--tls-port", str(free),
             "--tls-cert", "never-read.pem"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "LEVERET_CONFIG"},
        )
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().endswith(
        f"leveret: error: port {amqp} (--port) in use; port {http} (--http-port) in use; "
        f"port {prometheus} (--prometheus-port) in use"
    ), r.stderr
    assert r.stdout == ""  # listened nowhere


def test_the_broker_checks_every_listener_before_opening_any() -> None:
    async def main() -> None:
        with taken_ports(2) as (tls, https):
            amqp = free_port()
            broker = Broker(Config(host="127.0.0.1", port=amqp, tls_port=tls, tls_cert="never-read.pem",
                                   http_port=0, http_tls_port=https, http_tls_cert="never-read.pem"))
            with pytest.raises(PortsInUse) as info:
                await broker.start()
            assert info.value.clashes == [f"port {tls} (--tls-port) in use", f"port {https} (--http-tls-port) in use"]
            assert broker.server is None and broker.http is None
            # the AMQP port it probed is free again
            with socket.socket() as s:
                s.bind(("127.0.0.1", amqp))

    asyncio.run(main())


def test_one_port_given_to_two_listeners_is_a_clash() -> None:
    async def main() -> None:
        port = free_port()
        broker = Broker(Config(host="127.0.0.1", port=port, prometheus_port=port))
        with pytest.raises(PortsInUse) as info:
            await broker.start()
        assert info.value.clashes == [f"port {port} (--prometheus-port) in use by --port"]

    asyncio.run(main())


def test_different_hosts_may_share_a_port() -> None:
    port = free_port()
    cfg = Config(host="127.0.0.1", port=port, prometheus_port=port, prometheus_host="127.0.0.2")
    with BrokerThread(cfg) as b:
        assert b.broker is not None and b.broker.prometheus_port == port


@needs_ipv6
def test_port_0_is_one_port_for_both_address_families() -> None:
    cfg = Config(host=["127.0.0.1", "::1"], port=0, tls_port=None, http_port=0, prometheus_port=0)
    with BrokerThread(cfg) as b:
        broker = b.broker
        assert broker is not None
        ports = {a.rsplit(":", 1)[1] for a in broker.addresses}
        assert len(broker.addresses) == 2 and ports == {str(broker.port)}, broker.addresses
        for srv in (broker.http, broker.prometheus):
            assert srv is not None and len(srv.addresses) == 2
            assert {a.rsplit(":", 1)[1] for a in srv.addresses} == {str(srv.port)}, srv.addresses
        for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
            with socket.socket(family) as s:
                s.connect((host, broker.port))


async def _server_side_buffers(config: Config) -> tuple[int, int]:
    """SO_SNDBUF and SO_RCVBUF of the broker's end of one AMQP connection."""
    from leveret.testing import running_broker

    async with running_broker(config) as broker:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        try:
            writer.write(b"AMQP\x00\x00\x09\x01")
            await reader.readexactly(7)  # (connection.start's frame header: accepted)
            (conn,) = broker.connections
            sock = conn.transport.get_extra_info("socket")
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        finally:
            writer.close()


def test_tcp_buffers_of_accepted_connections_are_the_configured_ones() -> None:
    """``--tcp-sndbuf``/``--tcp-recbuf`` (RabbitMQ's tcp_listen_options.sndbuf/recbuf) set
    the kernel buffers of every AMQP connection (Linux reports twice the size asked)."""
    snd, rcv = asyncio.run(_server_side_buffers(Config(port=0, host="127.0.0.1", tcp_sndbuf=48 * 1024, tcp_recbuf=40 * 1024)))
    assert (snd, rcv) == (96 * 1024, 80 * 1024)
    default_snd, default_rcv = asyncio.run(_server_side_buffers(Config(port=0, host="127.0.0.1")))
    assert (default_snd, default_rcv) != (snd, rcv)  # (the kernel's own, autotuned)
    with pytest.raises(ValueError, match="tcp_recbuf: expected bytes from 1024"):
        Config(tcp_recbuf=10)
    with pytest.raises(ValueError, match="tcp_sndbuf: expected bytes from 1024"):
        Config(tcp_sndbuf="big")  # type: ignore[arg-type]
