"""One check of the settings (Config.validate) behind the command line, the config file and
Config(...) in Python; the meaning of a port's 0 and off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from leveret.broker.cli import build_config, parse_args
from leveret.broker.config import (
    CHANNEL_MAX_LIMIT,
    FRAME_MAX_LIMIT,
    HEARTBEAT_LIMIT,
    MAX_MESSAGE_SIZE_LIMIT,
    PORT_MAX,
    Config,
    InvalidSetting,
)
from leveret.broker.configfile import ConfigError, load_config_file
from leveret.protocol.constants import FRAME_MIN_SIZE

ROOT = Path(__file__).resolve().parent.parent


def leveret(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEVERET_CONFIG"}
    return subprocess.run([sys.executable, "-m", "leveret", "--in-memory", *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)


# (field, a bad value, a piece of the reason); each is refused the same way by the three doors
BAD = [
    ("frame_max", 100, f"must be 0 (no limit) or {FRAME_MIN_SIZE} to {FRAME_MAX_LIMIT}, got 100"),
    ("frame_max", FRAME_MAX_LIMIT + 1, f"got {FRAME_MAX_LIMIT + 1}"),
    ("heartbeat", 70000, f"must be between 0 and {HEARTBEAT_LIMIT}, got 70000"),
    ("channel_max", -5, f"must be between 0 and {CHANNEL_MAX_LIMIT}, got -5"),
    ("channel_max", 65536, "got 65536"),
    ("port", 99999, f"not a port number: 99999 (0 to {PORT_MAX}"),
    ("port", -1, "not a port number: -1"),
    ("http_port", 65536, "not a port number: 65536"),
    ("prometheus_port", 70000, "not a port number: 70000"),
    ("tls_port", 100000, "not a port number: 100000"),
    ("max_message_size", MAX_MESSAGE_SIZE_LIMIT + 1, f"must be between 1 and {MAX_MESSAGE_SIZE_LIMIT}"),
    ("max_message_size", 0, "must be between 1 and"),
    ("max_connections", -1, "must not be negative, got -1"),
    ("fsync_interval", -0.5, "must not be negative"),
    ("handshake_timeout", 0, "must be above 0"),
    ("segment_size", 0, "must be above 0"),
]
IDS = [f"{f}={v}" for f, v, _ in BAD]

# the config file's key for a field, where it is not the top-level field name
FILE_KEY = {"http_port": ("http", "port"), "prometheus_port": ("prometheus", "port"), "tls_port": ("tls", "port"),
            "port": ("amqp", "port"), "frame_max": ("limits", "frame_max")}


@pytest.mark.parametrize(("field", "value", "reason"), BAD, ids=IDS)
def test_python_config_refuses_it_naming_the_field(field: str, value: int, reason: str) -> None:
    with pytest.raises(InvalidSetting) as info:
        Config(**{field: value})  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert info.value.field == field and reason in info.value.reason
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(("field", "value", "reason"), BAD, ids=IDS)
def test_the_config_file_refuses_it_naming_file_and_key(tmp_path: Path, field: str, value: int, reason: str) -> None:
    p = tmp_path / "bad.toml"
    table, key = FILE_KEY.get(field, ("", field))
    p.write_text(f"[{table}]\n{key} = {value}\n" if table else f"{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(str(p))
    assert (info.value.path, info.value.key) == (str(p), f"{table}.{key}" if table else key)
    assert reason in info.value.reason


@pytest.mark.parametrize(("field", "value", "reason"), BAD, ids=IDS)
def test_the_command_line_refuses_it_naming_the_flag(field: str, value: int, reason: str) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError) as info:
        build_config(parse_args(["--in-memory", flag, str(value), *(["--tls-cert", "x.pem"] if field == "tls_port" else [])]))
    assert str(info.value).startswith(f"argument {flag}: ") and reason in str(info.value)


@pytest.mark.parametrize(("args", "message"), [
    (["--frame-max", "100"], "argument --frame-max: must be 0 (no limit) or 4096 to 4294967295, got 100"),
    (["--heartbeat", "70000"], "argument --heartbeat: must be between 0 and 65535, got 70000"),
    (["--port", "99999"], "argument --port: not a port number: 99999"),
    (["--channel-max", "-5"], "argument --channel-max: must be between 0 and 65535, got -5"),
    (["--port", "off"], "argument --port: the AMQP listener cannot be off"),
    (["--http-port", "fast"], "argument --http-port: expected a port number or 'off', got 'fast'"),
])
def test_leveret_exits_2_with_argparses_error(args: list[str], message: str) -> None:
    r = leveret("--port", "0", "--http-port", "off", "--prometheus-port", "off", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("usage: leveret ")
    assert f"leveret: error: {message}" in r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr  # never listened


def test_a_bad_value_from_the_file_is_named_in_the_file_not_as_a_flag(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[limits]\nframe_max = 100\n")
    r = leveret("--config", str(p), "--print-config")
    assert r.returncode == 2
    assert r.stderr.strip() == f"leveret: error: {p}: limits.frame_max: must be 0 (no limit) or 4096 to 4294967295, got 100"


def test_the_limits_accept_their_edges() -> None:
    Config(frame_max=0, channel_max=0, heartbeat=0, port=0, max_message_size=1)
    Config(frame_max=FRAME_MIN_SIZE)
    Config(frame_max=FRAME_MAX_LIMIT, channel_max=CHANNEL_MAX_LIMIT, heartbeat=HEARTBEAT_LIMIT, port=PORT_MAX,
           max_message_size=MAX_MESSAGE_SIZE_LIMIT, http_port=PORT_MAX, prometheus_port=0)
    cfg, _ = build_config(parse_args(["--in-memory", "--frame-max", "4096", "--heartbeat", "65535", "--port", "65535"]))
    assert (cfg.frame_max, cfg.heartbeat, cfg.port) == (4096, 65535, 65535)


def test_validate_after_changing_a_field_in_place() -> None:
    cfg = Config()
    cfg.heartbeat = 1 << 20
    with pytest.raises(InvalidSetting, match="heartbeat: must be between 0 and 65535"):
        cfg.validate()


# ---------------------------------------------------------------------- 0 and off


def test_zero_is_a_free_port_and_off_is_off_on_the_command_line() -> None:
    cfg, _ = build_config(parse_args(["--in-memory", "--http-port", "0", "--prometheus-port", "0", "--port", "0"]))
    assert (cfg.port, cfg.http_port, cfg.prometheus_port) == (0, 0, 0)
    cfg, _ = build_config(parse_args(["--in-memory", "--http-port", "off", "--prometheus-port", "NONE",
                                      "--tls-port", "off", "--http-tls-port", "off", "--prometheus-tls-port", "none"]))
    assert (cfg.http_port, cfg.prometheus_port, cfg.tls_port, cfg.http_tls_port, cfg.prometheus_tls_port) == (None,) * 5


def test_zero_is_a_free_port_and_off_is_off_in_the_config_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[http]\nport = 0\n[prometheus]\nport = "off"\n[tls]\nport = "none"\n')
    cfg, _ = load_config_file(str(p), Config(http_port=15672, prometheus_port=15692, tls_port=5671, tls_cert="x"))
    assert (cfg.http_port, cfg.prometheus_port, cfg.tls_port) == (0, None, None)
    p.write_text('[amqp]\nport = "off"\n')
    with pytest.raises(ConfigError) as info:
        load_config_file(str(p))
    assert info.value.key == "amqp.port" and 'expected an integer, got "off"' in info.value.reason


def test_the_cli_with_http_port_0_serves_http_on_a_free_port() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "leveret", "--in-memory", "--host", "127.0.0.1", "--port", "0",
                             "--http-port", "0", "--prometheus-port", "off"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(10)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()
    assert "; HTTP API on 127.0.0.1:" in line and "Prometheus" not in line, line
