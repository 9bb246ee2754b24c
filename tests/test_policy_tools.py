"""The policy commands of the operators' tools against a Leveret subprocess: ``leveret-ctl``
(set_policy, clear_policy, list_policies and the operator-policy twins, with rabbitmqctl's
arguments, texts and exit codes) and rabbitmqadmin v1, unchanged (``declare policy``,
``list policies``, ``delete policy``, ``declare operator_policy``).  Each policy's effect
is checked with pika."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pika
import pytest

from leveret.broker import Config
from leveret.testing import SubprocessBroker, free_port
from tests.test_ctl import run
from tests.test_rabbitmqadmin import SCRIPT, _missing

pytestmark = [pytest.mark.external, pytest.mark.slow]  # rabbitmqadmin, leveret-ctl processes

Broker = tuple[SubprocessBroker, int]


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    http = free_port()
    with SubprocessBroker(Config(port=0, host="127.0.0.1", http_port=http, vhosts=["/", "tools"])) as b:
        yield b, http


def channel(broker: Broker, vhost: str = "tools") -> tuple[pika.BlockingConnection, object]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker[0].port, vhost,
                                                             pika.PlainCredentials("guest", "guest")))
    return conn, conn.channel()


def fill(ch: object, queue: str, n: int) -> int:
    for i in range(n):
        ch.basic_publish("", queue, b"%d" % i)  # type: ignore[attr-defined]
    return ch.queue_declare(queue, passive=True).method.message_count  # type: ignore[attr-defined]


def test_leveret_ctl_policy_commands(broker: Broker) -> None:
    http = broker[1]
    conn, ch = channel(broker)
    ch.queue_declare("ctl.q")  # type: ignore[attr-defined]
    r = run(http, "-p", "tools", "set_policy", "LEN", r"^ctl\.", '{"max-length":2}', "--apply-to", "queues",
            "--priority", "3")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ('Setting policy "LEN" for pattern "^ctl\\." to "{"max-length":2}" with priority "3" '
                        'for vhost "tools" ...\n')
    assert fill(ch, "ctl.q", 5) == 2
    r = run(http, "-p", "tools", "list_policies")
    assert r.returncode == 0
    assert r.stderr == 'Listing policies for vhost "tools" ...\n'
    assert r.stdout == ("vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n"
                        'tools\tLEN\t^ctl\\.\tqueues\t{"max-length":2}\t3\n')
    # a definition the broker refuses: rabbitmqctl's 69 and text, nothing changed
    r = run(http, "-p", "tools", "set_policy", "LEN", "^ctl", '{"max-length":"x"}')
    assert r.returncode == 69
    assert r.stderr.endswith('Error:\nValidation failed\n\n<<"x">> is not a valid maximum length\n\n')
    r = run(http, "-p", "tools", "set_policy", "LEN", "^ctl", '{"max-length":')
    assert (r.returncode, r.stderr.splitlines()[-1]) == (69, "JSON decoding error. Reason: badarg")
    r = run(http, "-p", "tools", "set_policy", "LEN", "^ctl", '{"max-length":1}', "--priority", "x")
    assert r.returncode == 64
    assert fill(ch, "ctl.q", 1) == 2
    # the operator twin caps it further
    r = run(http, "-p", "tools", "set_operator_policy", "CAP", "^ctl", '{"max-length":1}')
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith('Setting operator policy override "CAP" for pattern "^ctl" to "{"max-length":1}"')
    assert ch.queue_declare("ctl.q", passive=True).method.message_count == 1  # type: ignore[attr-defined]
    r = run(http, "-p", "tools", "set_operator_policy", "CAP2", "^ctl", '{"overflow":"drop-head"}')
    assert r.returncode == 69 and "are not recognised policy settings" in r.stderr
    r = run(http, "-p", "tools", "--formatter", "json", "list_operator_policies")
    assert json.loads(r.stdout) == [{"vhost": "tools", "name": "CAP", "pattern": "^ctl", "apply-to": "all",
                                     "definition": '{"max-length":1}', "priority": 0}]
    assert run(http, "-p", "tools", "clear_operator_policy", "CAP").returncode == 0
    assert run(http, "-p", "tools", "clear_policy", "LEN").returncode == 0
    assert fill(ch, "ctl.q", 3) == 4  # no limit any more
    r = run(http, "-p", "tools", "clear_policy", "LEN")
    assert (r.returncode, r.stderr.splitlines()[-1]) == (69, "Parameter does not exist")
    r = run(http, "-p", "nosuch", "list_policies")
    assert (r.returncode, r.stderr.splitlines()[-1]) == (65, "Virtual host 'nosuch' does not exist")
    r = run(http, "-q", "-p", "tools", "list_policies")
    assert (r.returncode, r.stdout, r.stderr) == (0, "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n", "")
    conn.close()


def admin(broker: Broker, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), "-H", "127.0.0.1", "-P", str(broker[1]), "-u", "guest", "-p", "guest",
           "-V", "tools"]
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30)
    if ok:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_rabbitmqadmin_declare_list_delete_policy(broker: Broker) -> None:
    if not SCRIPT:
        _missing()
    conn, ch = channel(broker)
    ch.queue_declare("ra.jobs")  # type: ignore[attr-defined]
    out = admin(broker, "declare", "policy", "name=ra-len", r"pattern=^ra\.", 'definition={"max-length":3}',
                "apply-to=queues", "priority=2").stdout
    assert "policy declared" in out
    assert fill(ch, "ra.jobs", 6) == 3
    rows = json.loads(admin(broker, "-f", "raw_json", "list", "policies").stdout)
    assert rows == [{"vhost": "tools", "name": "ra-len", "pattern": "^ra\\.", "apply-to": "queues",
                     "definition": {"max-length": 3}, "priority": 2}]
    table = admin(broker, "list", "policies").stdout
    assert "ra-len" in table and "max-length" in table
    queues = json.loads(admin(broker, "-f", "raw_json", "list", "queues", "name", "policy").stdout)
    assert {"name": "ra.jobs", "policy": "ra-len"} in queues
    r = admin(broker, "declare", "policy", "name=bad", "pattern=x", 'definition={"max-length":"x"}', ok=False)
    assert r.returncode != 0 and "is not a valid maximum length" in r.stdout + r.stderr
    out = admin(broker, "declare", "operator_policy", "name=ra-cap", r"pattern=^ra\.",
                'definition={"max-length":1}').stdout
    assert "operator_policy declared" in out
    assert ch.queue_declare("ra.jobs", passive=True).method.message_count == 1  # type: ignore[attr-defined]
    admin(broker, "delete", "operator_policy", "name=ra-cap")
    admin(broker, "delete", "policy", "name=ra-len")
    assert json.loads(admin(broker, "-f", "raw_json", "list", "policies").stdout) == []
    assert fill(ch, "ra.jobs", 5) == 6
    conn.close()
