"""A private RabbitMQ node for tests: its own node name, ports, data and log folders and
Erlang cookie (never the shared RabbitMQ on 5672), with rabbitmq_shovel,
rabbitmq_federation and rabbitmq_management enabled.

    node = RabbitNode().start()      # waits for `rabbitmqctl await_startup`
    node.url, node.api_url           # amqp://guest:guest@127.0.0.1:PORT/, http://127.0.0.1:MPORT/api
    node.kill()                      # SIGKILL of the whole node (beam and its helpers)
    node.start()                     # the same node again, same data: durable queues come back
    node.stop()                      # always safe; the fixtures call it at teardown

The fixture ``rabbit`` (registered in tests/conftest.py) is one node per test session.
``rabbitmq_node_or_skip()`` skips the test when Debian's rabbitmq-server is not installed,
except under CI=true, where that is a failure (interop/install.sh installs it there).
A first node start took 8-26 s on the 2-core machine, a restart 11-13 s: one node per
session, restarted only by the test that needs it.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from glob import glob as _glob
from typing import Any

import pytest

from leveret.testing import free_port

_BIN = "/usr/lib/rabbitmq/bin"
_COUNTER = itertools.count(1)
PLUGINS = (
    "rabbitmq_shovel",
    "rabbitmq_shovel_management",
    "rabbitmq_federation",
    "rabbitmq_federation_management",
    "rabbitmq_management",
)


def _tool(name: str) -> str | None:
    # Debian's /usr/sbin wrappers `su rabbitmq` when run as root: call the real scripts
    path = os.path.join(_BIN, name)
    if os.access(path, os.X_OK):
        return path
    return shutil.which(name)


def rabbitmq_missing() -> str | None:
    """Why a private node cannot run here, or None."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if _tool(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install rabbitmq-server, or bash interop/install.sh as root)"
    return None


def rabbitmq_node_or_skip() -> None:
    why = rabbitmq_missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {why}")
    pytest.skip(why)


class RabbitNode:
    """One private RabbitMQ node (see the module docstring)."""

    def __init__(self, name: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="leveret-rmq-")
        self.nodename = name or f"leveret-test-{os.getpid()}-{next(_COUNTER)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.mgmt_port = free_port()
        # an epmd of its own (erl starts one as a daemon, outside the node's process
        # group, and it outlives the node): stopped by cleanup(), never the shared one
        self.epmd_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log = os.path.join(self.dir, "stdout.log")
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[" + ",".join(PLUGINS) + "].\n")
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write(
                f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                f"management.tcp.port = {self.mgmt_port}\n"
                "management.tcp.ip = 127.0.0.1\n"
                "management.rates_mode = none\n"
                "log.console = false\n"
                "log.file.level = warning\n"
                "vm_memory_high_watermark.relative = 0.2\n"
                "disk_free_limit.absolute = 50MB\n"
            )
        # an empty env file: never read /etc/rabbitmq/rabbitmq-env.conf
        open(os.path.join(self.dir, "rabbitmq-env.conf"), "w").close()
        os.makedirs(os.path.join(self.dir, "home"), exist_ok=True)

    # ------------------------------------------------------------------ urls

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def url_for(self, vhost: str) -> str:
        from urllib.parse import quote

        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}/api"

    # ------------------------------------------------------------------ process

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=os.path.join(self.dir, "home"),  # a private .erlang.cookie
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=os.path.join(self.dir, "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(self.dir, "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(self.dir, "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=os.path.join(self.dir, "node.pid"),
            RABBITMQ_PLUGINS_EXPAND_DIR=os.path.join(self.dir, "plugins-expand"),
            ERL_EPMD_PORT=str(self.epmd_port),
        )
        return env

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """rabbitmqctl against this node."""
        ctl = _tool("rabbitmqctl")
        assert ctl is not None
        r = subprocess.run(
            [ctl, "-n", self.nodename, *args],
            env=self.env(),
            capture_output=True,
            timeout=timeout,
            cwd=self.dir,
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)}: exit {r.returncode}: "
                f"{r.stdout.decode(errors='replace')} {r.stderr.decode(errors='replace')}"
            )
        return r.stdout.decode(errors="replace")

    def start(self, timeout: float = 90.0) -> RabbitNode:
        if self.running():
            return self
        server = _tool("rabbitmq-server")
        assert server is not None
        t0 = time.monotonic()
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(
                [server],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,  # one process group: kill() takes beam's helpers too
            )
        try:
            self._await_startup(timeout)
        except BaseException:
            self.stop()
            raise
        self.starts += 1
        self.start_seconds = time.monotonic() - t0
        return self

    def _await_startup(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server exited with {self.proc.returncode}: {self.log_tail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"rabbitmq-server did not start in {timeout}s: {self.log_tail()}"
                )
            try:
                self.ctl("await_startup", "--timeout", str(max(1, int(left))), timeout=left + 5)
            except (RuntimeError, subprocess.TimeoutExpired):
                # the node may not be registered with epmd yet
                time.sleep(0.5)
                continue
            # the management listener comes up with the plugins, but check
            while time.monotonic() < deadline:
                try:
                    self.api("GET", "/overview")
                    return
                except (OSError, urllib.error.URLError):
                    time.sleep(0.2)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL of the node's process group (beam.smp, erl_child_setup, inet_gethost)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def stop(self) -> None:
        """Stop the node (SIGTERM, then SIGKILL after 20 s); safe to call at any time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def cleanup(self) -> None:
        self.stop()
        self._stop_epmd()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_epmd(self) -> None:
        """Stop the node's own epmd (``epmd -kill`` on its port: refused while a node is
        registered, so only once ours is down)."""
        epmd = shutil.which("epmd") or next(iter(sorted(_glob("/usr/lib/erlang/erts-*/bin/epmd"))), None)
        if epmd is None:
            return
        try:
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env(),
                           capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def log_tail(self, n: int = 3000) -> str:
        out = []
        for path in [self._log, *self._logfiles()]:
            try:
                with open(path, "rb") as f:
                    out.append(f.read()[-n:].decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    def _logfiles(self) -> list[str]:
        base = os.path.join(self.dir, "log")
        try:
            return [os.path.join(base, f) for f in os.listdir(base) if f.endswith(".log")]
        except OSError:
            return []

    # ------------------------------------------------------------------ HTTP API

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """RabbitMQ's management API as guest; the decoded JSON (None for no content)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@pytest.fixture(scope="session", name="rabbit")
def rabbit_fixture() -> Iterator[RabbitNode]:
    """One private RabbitMQ node for the test session (skipped, or failed under CI=true,
    without rabbitmq-server); stopped and its folders removed at teardown.  Registered
    for every test by tests/conftest.py; tests use names of their own on it."""
    rabbitmq_node_or_skip()
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.cleanup()
