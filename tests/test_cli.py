"""The ``leveret`` command line: which addresses it listens on (``--host``, given once,
more than once or not at all) and the one startup line it prints.  More of the command
line is tested with its features: the config file (tests/test_config_file.py), TLS
(tests/test_tls.py), the HTTP port (tests/test_http_api.py)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from leveret.testing import free_port
from tests.helpers import leveret_command
from tests.polling import wait_until
from tests.rawamqp import RawClient
from tests.reference import leveret_only

ROOT = Path(__file__).resolve().parents[1]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _run_cli(port: int, *args: str) -> tuple[list[str], str, str]:
    """Start ``python -m leveret`` with ``args``; once it accepts AMQP handshakes on each
    listed host, SIGTERM it.  Returns (the hosts that accepted, stdout, stderr)."""
    hosts = [a for i, a in enumerate(args) if i and args[i - 1] == "--host"] or ["127.0.0.1"]
    proc = subprocess.Popen(
        leveret_command(port, "--in-memory", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    accepted = []
    try:

        def listening() -> bool:
            assert proc.poll() is None, proc.communicate()
            socket.create_connection((hosts[0], port), timeout=0.2).close()
            return True

        wait_until(listening, 20, what="the broker to start", interval=0.05, ignore=(OSError,))
        for host in ("127.0.0.1", "127.0.0.2", "::1"):
            try:
                with RawClient.connect(port, host=host, timeout=2) as c:
                    c.handshake()
                accepted.append(host)
            except OSError:
                pass
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return accepted, out, err


def _startup_lines(out: str, err: str) -> list[str]:
    return [line for line in (out + err).splitlines() if "listening on" in line]


@leveret_only
def test_startup_line_printed_once_and_the_default_hosts() -> None:
    port = free_port()
    accepted, out, err = _run_cli(port)
    lines = _startup_lines(out, err)
    assert len(lines) == 1, (out, err)
    assert lines == [ln for ln in out.splitlines() if "listening on" in ln]  # on stdout
    expected = ["127.0.0.1", "::1"] if _has_ipv6_loopback() else ["127.0.0.1"]
    assert accepted == expected
    assert f"127.0.0.1:{port}" in lines[0]
    if _has_ipv6_loopback():
        assert f"[::1]:{port}" in lines[0]


@leveret_only
def test_host_given_more_than_once_listens_on_each() -> None:
    port = free_port()
    hosts = ["127.0.0.1", "127.0.0.2"] + (["::1"] if _has_ipv6_loopback() else [])
    args = [x for h in hosts for x in ("--host", h)]
    accepted, out, err = _run_cli(port, *args)
    assert accepted == hosts
    lines = _startup_lines(out, err)
    assert len(lines) == 1
    for h in hosts:
        assert (f"[{h}]:{port}" if ":" in h else f"{h}:{port}") in lines[0]


@leveret_only
def test_a_single_host_listens_there_only() -> None:
    port = free_port()
    accepted, out, err = _run_cli(port, "--host", "127.0.0.2")
    assert accepted == ["127.0.0.2"]
    assert len(_startup_lines(out, err)) == 1

