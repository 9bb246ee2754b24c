"""The TOML config file, --print-config, and load_definitions (RabbitMQ definitions)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from leveret.broker import Config
from leveret.broker.cli import build_config, parse_args
from leveret.broker.config import user_password
from leveret.broker.configfile import ConfigError, hash_env_var, load_config_file, render_config
from leveret.broker.core import access as A
from leveret.broker.definitions import DefinitionsError, read_definitions
from leveret.testing import BrokerThread

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "leveret.example.toml"
VECTOR_HASH = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"  # "test12", RabbitMQ's test vector


def leveret(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k not in ("LEVERET_CONFIG", "LEVERET_ADMIN_PASSWORD")}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "leveret", *args], capture_output=True, text=True, env=e, timeout=60, cwd=ROOT
    )


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The documented example, with its secret file and data dir in tmp_path."""
    (tmp_path / "orders-app.pw").write_text("orders-pw\n")
    text = EXAMPLE.read_text().replace("/run/secrets/orders-app", "orders-app.pw").replace("/var/lib/leveret", "data")
    p = tmp_path / "leveret.toml"
    p.write_text(text)
    return p


def test_example_config_loads(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEVERET_ADMIN_PASSWORD", "admin-pw")
    cfg, extras = load_config_file(str(example))
    assert extras == {"log_level": "info"}
    assert cfg.users == {}  # users are configured: no guest
    users = {u["name"]: u for u in cfg.hashed_users}
    # the Config keeps where a password is (read and hashed when the broker starts)
    assert users["admin"]["password_env"] == "LEVERET_ADMIN_PASSWORD" and user_password(users["admin"]) == "admin-pw"
    assert users["orders-app"]["password_file"] == str(example.parent / "orders-app.pw")
    assert user_password(users["orders-app"]) == "orders-pw"  # newline stripped
    assert users["reporting"]["password_hash"] == VECTOR_HASH
    assert users["admin"]["tags"] == ["administrator"]
    assert cfg.vhosts == ["/", "orders"]
    assert cfg.vhost_limits == {"orders": {"max-connections": 100, "max-queues": 50}}
    assert cfg.data_dir == str(example.parent / "data")  # relative to the file
    assert cfg.max_message_size == 134217728 and cfg.handshake_timeout == 10.0
    assert cfg.permissions[1] == {
        "user": "orders-app", "vhost": "orders", "configure": r"^orders\.", "write": r"^(orders\.|amq\.topic$)", "read": r"^orders\.",
    }
    assert cfg.topic_permissions[0]["write"] == r"^orders\."


def test_print_config_masks_secrets(example: Path) -> None:
    r = leveret("--config", str(example), "--print-config", env={"LEVERET_ADMIN_PASSWORD": "admin-pw-secret"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "admin-pw-secret" not in out and "orders-pw" not in out and VECTOR_HASH not in out
    assert 'password_env = "LEVERET_ADMIN_PASSWORD"' in out  # (where the secret is: not a secret)
    assert '# password_hash = "********"' in out and 'password_hash_env = "LEVERET_PASSWORD_HASH_REPORTING"' in out
    assert "port = 5672" in out and '[users."orders-app"]' in out and "[[topic_permissions]]" in out
    assert "max_queues = 50" in out


def test_print_config_round_trips(example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # vhosts with limits, users by env/file/hash, permissions, topic permissions, limits,
    # ports on and off, flags over the file: the printed config loads back to an equal Config
    monkeypatch.setenv("LEVERET_ADMIN_PASSWORD", "admin-pw")
    monkeypatch.delenv("LEVERET_CONFIG", raising=False)
    flags = ["--config", str(example), "--frame-max", "8192", "--vhost", "extra", "--prometheus-port", "off",
             "--http-port", "0", "--data-dir", str(tmp_path / "d"), "--max-message-size", "1000", "--flow-cpu", "1"]
    cfg, extras = build_config(parse_args(flags))
    assert cfg.vhost_limits and cfg.permissions and cfg.topic_permissions and len(cfg.hashed_users) == 3
    r = leveret("--print-config", *flags, env={"LEVERET_ADMIN_PASSWORD": "admin-pw"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == render_config(cfg, extras)
    printed = tmp_path / "printed.toml"
    printed.write_text(r.stdout)
    # the masked hash comes back from the variable the printed file names
    monkeypatch.setenv(hash_env_var("reporting"), VECTOR_HASH)
    again, extras_again = build_config(parse_args(["--config", str(printed)]))
    assert again == cfg and extras_again == extras
    assert load_config_file(str(printed))[0] == cfg  # whatever the base: every setting is written
    assert render_config(again, extras_again) == r.stdout
    # a Config from Python, with None where the file has no null
    py = Config(host="127.0.0.1", port=0, vhosts=["/", 'we"ird\\v'], vhost_limits={"/": {"max-queues": 3}},
                data_dir=None, tls_port=None, http_port=0, http_host=None)
    printed.write_text(render_config(py))
    assert load_config_file(str(printed), Config(http_port=15672, data_dir="/x"))[0] == py


def test_print_config_masks_command_line_users() -> None:
    r = leveret("--user", "app:argv-secret", "--in-memory", "--print-config")
    assert r.returncode == 0, r.stderr
    assert "argv-secret" not in r.stdout and "app (password ********)" in r.stdout
    assert "guest (password" not in r.stdout  # another user given: no guest
    assert "visible to other local users" in r.stderr  # the warning about argv


@pytest.mark.slow
def test_flags_override_the_file_and_LEVERET_CONFIG_is_the_fallback(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("port = 5999\nmax_message_size = 4096\n[limits]\nchannel_max = 9\n")
    r = leveret("--print-config", "--port", "6000", env={"LEVERET_CONFIG": str(p)})
    assert r.returncode == 0, r.stderr
    assert "port = 6000" in r.stdout and "max_message_size = 4096" in r.stdout and "channel_max = 9" in r.stdout
    r = leveret("--print-config", "--config", str(p), "--channel-max", "3")
    assert "port = 5999" in r.stdout and "channel_max = 3" in r.stdout


def test_the_tls_table_maps_onto_tls_fields(tmp_path: Path) -> None:
    # [tls] port = ... is Config.tls_port; until TLS exists, it is an unknown key
    p = tmp_path / "c.toml"
    p.write_text("[tls]\nport = 5671\n")
    if "tls_port" in Config.__dataclass_fields__:
        assert load_config_file(str(p))[0].tls_port == 5671  # type: ignore[attr-defined]
    else:
        with pytest.raises(ConfigError, match=r"tls\.port: unknown key"):
            load_config_file(str(p))


BAD = [
    ("prot = 5672\n", "prot", "unknown key"),
    ("[amqp]\nport = \"fast\"\n", "amqp.port", 'expected an integer, got "fast"'),
    ("port = 70000\n", "port", "not a port number: 70000"),
    ("max_message_size = 1073741824\n", "max_message_size", "must be between 1 and 536870912"),
    ("log_level = \"loud\"\n", "log_level", "expected one of debug, info, warning, error"),
    ("heartbeat = true\n", "heartbeat", "expected an integer, got true"),
    ("[users.a]\npassword = \"x\"\n", "users.a.password", "a plain password is not accepted here"),
    ("[users.a]\npassword_env = \"LEVERET_TEST_UNSET_VAR\"\n", "users.a.password_env",
     "the environment variable LEVERET_TEST_UNSET_VAR is not set"),
    ("[users.a]\npassword_hash = \"not base64!\"\n", "users.a.password_hash", "password_hash is not base64"),
    ("[users.a]\npassword_hash = \"AAAA\"\nhashing_algorithm = \"sha1\"\n", "users.a.password_hash", "unknown hashing algorithm"),
    ("[users.a]\npassword_hash = \"AAAAAAAA\"\n[[permissions]]\nuser = \"a\"\nvhost = \"/\"\nconfigure = \"(\"\nwrite = \"\"\nread = \"\"\n",
     "permissions[0].configure", "invalid regular expression '('"),
    ("[[permissions]]\nuser = \"nobody\"\nvhost = \"/\"\nconfigure = \"\"\nwrite = \"\"\nread = \"\"\n",
     "permissions[0].user", "no user 'nobody'"),
    ("[users.a]\npassword_hash = \"AAAAAAAA\"\n[[permissions]]\nuser = \"a\"\nvhost = \"nope\"\nconfigure = \"\"\nwrite = \"\"\nread = \"\"\n",
     "permissions[0].vhost", "no vhost 'nope'"),
    ("[vhosts.v]\nmax_queues = \"many\"\n", "vhosts.v", "vhost limit 'max-queues' must be an integer"),
    ("[vhosts.v]\nmax_consumers = 3\n", "vhosts.v", "unknown vhost limit 'max-consumers'"),
    ("port = [\n", "", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD, ids=[b[1] or "toml" for b in BAD])
def test_bad_config_is_refused_naming_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config_file(str(p))
    assert (info.value.path, info.value.key) == (str(p), key)
    assert reason in info.value.reason


def test_the_broker_refuses_to_start_with_a_bad_config(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[[permissions]]\nuser = "guest"\nvhost = "/"\nconfigure = "[a-"\nwrite = ""\nread = ""\n')
    r = leveret("--config", str(p), "--port", "0", "--in-memory")
    assert r.returncode == 2
    assert r.stderr.startswith(f"leveret: error: {p}: permissions[0].configure: invalid regular expression '[a-'")
    assert r.stdout == ""  # never listened


def _start(args: list[str], env: dict[str, str]) -> Iterator[int]:
    e = {**os.environ, **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "leveret", "--http-port", "off", "--prometheus-port", "off", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            proc.wait(10)
            raise AssertionError((line, proc.stderr.read() if proc.stderr else ""))
        yield int(m.group(1))
    finally:
        proc.terminate()
        proc.wait(10)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


def test_a_broker_configured_by_file(tmp_path: Path) -> None:
    (tmp_path / "app.pw").write_text("app-pw\n")
    p = tmp_path / "c.toml"
    p.write_text(
        'vhosts = ["/", "shop"]\n'
        '[amqp]\nhost = "127.0.0.1"\nport = 0\n'
        "[limits]\nchannel_max = 7\nmax_message_size = 1000\n"
        '[users.app]\npassword_file = "app.pw"\n'
        '[users.ops]\npassword_env = "LV_TEST_OPS_PW"\ntags = ["administrator"]\n'
        '[[permissions]]\nuser = "app"\nvhost = "shop"\nconfigure = "^app\\\\."\nwrite = ".*"\nread = ".*"\n'
    )
    for port in _start(["--config", str(p), "--in-memory"], {"LV_TEST_OPS_PW": "ops-pw"}):
        params = pika.ConnectionParameters("127.0.0.1", port, "shop", pika.PlainCredentials("app", "app-pw"))
        conn = pika.BlockingConnection(params)
        assert conn._impl.params.channel_max == 7  # tuned down to the configured channel_max
        ch = conn.channel()
        ch.queue_declare("app.q")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("other")
        assert info.value.reply_text == "ACCESS_REFUSED - access to queue 'other' in vhost 'shop' refused for user 'app'"
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("", "app.q", b"x" * 1001)
        assert (info.value.reply_code, info.value.reply_text) == (
            406, "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000"
        )
        conn.close()
        # ops has no permissions anywhere: cannot open a vhost; guest does not exist
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
            pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, "/", pika.PlainCredentials("ops", "ops-pw")))
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, "/", pika.PlainCredentials("guest", "guest")))


# ---------------------------------------------------------------------- load_definitions

DEFINITIONS = {
    "rabbit_version": "3.10.8",
    "rabbitmq_version": "3.10.8",
    "product_name": "RabbitMQ",
    "product_version": "3.10.8",
    "users": [
        {"name": "vec", "password_hash": VECTOR_HASH, "hashing_algorithm": "rabbit_password_hashing_sha256",
         "tags": ["administrator"], "limits": {}},
        {"name": "old", "password_hash": A.hash_password("old-pw", A.MD5), "tags": "monitoring,management"},
    ],
    "vhosts": [{"name": "/"}, {"name": "imported", "description": "", "tags": [], "metadata": {}}],
    "permissions": [
        {"user": "vec", "vhost": "imported", "configure": ".*", "write": ".*", "read": ".*"},
        {"user": "old", "vhost": "imported", "configure": "", "write": "", "read": ".*"},
    ],
    "topic_permissions": [{"user": "vec", "vhost": "imported", "exchange": "ev", "write": "^ok", "read": ".*"}],
    "parameters": [{"component": "vhost-limits", "name": "limits", "value": {"max-queues": 5}, "vhost": "imported"}],
    "global_parameters": [{"name": "cluster_name", "value": "rabbit@x"}],
    "policies": [{"vhost": "imported", "name": "ttl", "pattern": ".*", "apply-to": "queues",
                  "definition": {"message-ttl": 1000}, "priority": 0}],
    "queues": [{"name": "iq", "vhost": "imported", "durable": True, "auto_delete": False,
                "arguments": {"x-queue-type": "classic", "x-max-length": 10}}],
    "exchanges": [{"name": "ev", "vhost": "imported", "type": "topic", "durable": True, "auto_delete": False,
                   "internal": False, "arguments": {}}],
    "bindings": [{"source": "ev", "vhost": "imported", "destination": "iq", "destination_type": "queue",
                  "routing_key": "ok.#", "arguments": {}}],
}


def test_load_definitions_at_boot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "defs.json"
    p.write_text(json.dumps(DEFINITIONS))
    caplog.set_level(logging.WARNING, logger="leveret")
    with BrokerThread(Config(port=0, load_definitions=str(p), data_dir=str(tmp_path / "data"))) as b:
        acc = b.broker.access
        assert sorted(acc.users) == ["old", "vec"]  # imported users: no guest
        assert acc.users["old"].tags == ["monitoring", "management"]
        conn = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", b.port, "imported", pika.PlainCredentials("vec", "test12"))
        )
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("ev", "ok.1", b"routed")  # exchange, binding, queue imported
        assert ch.basic_get("iq", auto_ack=True)[2] == b"routed"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("ev", "no.1", b"x")  # the imported topic permission
        assert info.value.reply_code == 403
        conn.close()
        pika.BlockingConnection(  # an MD5 hash, as RabbitMQ before 3.6 wrote them
            pika.ConnectionParameters("127.0.0.1", b.port, "imported", pika.PlainCredentials("old", "old-pw"))
        ).close()
        assert b.broker.vhosts["imported"].queues["iq"].arguments["x-max-length"] == 10
        assert acc.vhost_limits == {"imported": {"max-queues": 5}}
        iq = b.broker.vhosts["imported"].queues["iq"]
        assert iq.ttl == 1.0  # the imported policy applies
    assert "policies" not in caplog.text
    # applied again at the next boot over what was saved: nothing doubles, nothing fails
    with BrokerThread(Config(port=0, load_definitions=str(p), data_dir=str(tmp_path / "data"))) as b:
        assert sorted(b.broker.access.users) == ["old", "vec"]
        assert len(b.broker.vhosts["imported"].exchanges["ev"].bindings) == 1


BAD_DEFINITIONS = [
    ("{", "", "not valid JSON"),
    ("[]", "", "expected a JSON object at the top"),
    ('{"users": [{"name": "u"}]}', "users[0].password_hash", "missing"),
    ('{"users": [{"name": "u", "password_hash": "AAAA", "hashing_algorithm": "rabbit_password_hashing_sha1"}]}',
     "users[0].hashing_algorithm", "unknown hashing algorithm"),
    ('{"users": [{"name": "u", "password_hash": "AAAA", "password": "x"}]}', "users[0].password", "not both"),
    ('{"permissions": [{"user": "u", "vhost": "/", "configure": "(", "write": "", "read": ""}]}',
     "permissions[0].configure", "invalid regular expression"),
    ('{"exchanges": [{"name": "e", "vhost": "/", "type": "x-delayed"}]}', "exchanges[0].type", "unknown exchange type"),
    ('{"queues": [{"name": "q", "vhost": "/", "durable": "yes"}]}', "queues[0].durable", 'expected bool, got "yes"'),
    ('{"bindings": [{"source": "e", "vhost": "/", "destination": "q", "destination_type": "topic"}]}',
     "bindings[0].destination_type", "expected 'queue' or 'exchange'"),
    ('{"shovels": []}', "shovels", "unknown key"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD_DEFINITIONS, ids=[b[1] or b[2] for b in BAD_DEFINITIONS])
def test_broken_definitions_are_refused(tmp_path: Path, text: str, key: str, reason: str) -> None:
    p = tmp_path / "defs.json"
    p.write_text(text)
    with pytest.raises(DefinitionsError) as info:
        read_definitions(str(p))
    assert (info.value.path, info.value.key) == (str(p), key)
    assert reason in info.value.reason


def test_broken_definitions_stop_the_broker(tmp_path: Path) -> None:
    d = tmp_path / "defs.json"
    d.write_text('{"queues": [{"name": "q", "vhost": "/", "arguments": {"x-max-length": "ten"}}]}')
    # (checked when applied: RabbitMQ's argument validation)
    r = leveret("--load-definitions", str(d), "--port", "0", "--in-memory", "--http-port", "off", "--prometheus-port", "off")
    assert r.returncode == 1, r.stderr
    assert f"leveret: error: {d}: queues[0]: PRECONDITION_FAILED - invalid arg 'x-max-length'" in r.stderr
    c = tmp_path / "c.toml"
    c.write_text(f'load_definitions = "{d.name}"\n')
    d.write_text('{"users": [{"name": "u"}]}')
    r = leveret("--config", str(c), "--port", "0", "--in-memory")
    assert r.returncode == 2
    assert f"{c}: load_definitions: {d}: users[0].password_hash: missing" in r.stderr
