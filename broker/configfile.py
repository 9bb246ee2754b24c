"""The TOML config file (``--config PATH``, or ``LEVERET_CONFIG``).

Keys map onto :class:`~leveret.broker.config.Config` fields generically:

* a top-level key is the field of that name (``-`` read as ``_``): ``port = 5672``;
* a table ``[name]`` maps its keys onto the fields ``name_<key>``: ``[tls] port = 5671``
  is ``tls_port``, ``[tls] cert = "..."`` is ``tls_cert``; the tables ``[amqp]``,
  ``[limits]`` and ``[storage]`` map onto the unprefixed names (``[amqp] host``,
  ``[limits] max_connections``, ``[storage] data_dir``);
* values are checked against the field's type hint (int, float, bool, str, lists, and
  unions of these), with ranges for ports, sizes and timeouts;
* the special tables are ``[users.NAME]``, ``[vhosts.NAME]`` (limits), ``[[permissions]]``
  and ``[[topic_permissions]]``; ``log_level`` and ``no_uvloop`` are settings of the
  command line.

A relative path (``*_dir``, ``*_file``, ``*_cert``, ``*_key``, ``*_ca``,
``load_definitions``) is relative to the file.  Every error is a :class:`ConfigError`
naming the file, the key and the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from typing import Any

from leveret.broker.config import DEFAULT_USERS, MAX_CONSUMER_TIMEOUT, Config
from leveret.broker.core import access as A
from leveret.broker.definitions import DefinitionsError, read_definitions

#: tables whose keys are the unprefixed field names
PLAIN_TABLES = {"amqp", "limits", "storage"}
#: fields set only through their special tables
SPECIAL_FIELDS = {"users", "hashed_users", "permissions", "topic_permissions", "vhost_limits", "vhosts"}
#: settings of the command line, not of Config
EXTRAS = {"log_level": str, "no_uvloop": bool}
LOG_LEVELS = ("debug", "info", "warning", "error")
_MAX_MESSAGE_SIZE = 512 * 1024 * 1024  # RabbitMQ's ceiling
_PATH_SUFFIXES = ("_dir", "_file", "_cert", "_key", "_ca")
MASK = "********"


class ConfigError(ValueError):
    """A config file that cannot be used: the file, the key and the reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path, self.key, self.reason = path, key, reason
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")


class _Bad(ValueError):
    pass


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for h in typing.get_args(hint):
            if h is type(None):
                continue
            try:
                return _coerce(value, h)
            except _Bad:
                pass
        raise _Bad(f"expected {_describe(hint)}, got {json.dumps(value, default=str)}")
    if origin is list:
        if not isinstance(value, list):
            raise _Bad(f"expected {_describe(hint)}, got {json.dumps(value, default=str)}")
        return [_coerce(v, typing.get_args(hint)[0]) for v in value]
    ok = (
        (hint is bool and isinstance(value, bool))
        or (hint is int and isinstance(value, int) and not isinstance(value, bool))
        or (hint is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (hint is str and isinstance(value, str))
    )
    if not ok:
        raise _Bad(f"expected {_describe(hint)}, got {json.dumps(value, default=str)}")
    return float(value) if hint is float else value


def _check_range(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if value < 0:
        raise _Bad(f"must not be negative, got {value}")
    if field.endswith("port") and value > 65535:
        raise _Bad(f"not a port number: {value}")
    if field == "max_message_size" and not 0 < value <= _MAX_MESSAGE_SIZE:
        raise _Bad(f"must be between 1 and {_MAX_MESSAGE_SIZE} (512 MiB, RabbitMQ's ceiling), got {value}")
    if field == "consumer_timeout" and value > MAX_CONSUMER_TIMEOUT:
        raise _Bad(f"must be between 0 (off) and {MAX_CONSUMER_TIMEOUT} ms, got {value}")
    if field == "frame_max" and 0 < value < 4096:
        raise _Bad(f"must be 0 or at least 4096, got {value}")
    if field in ("channel_max", "heartbeat") and value > 65535:
        raise _Bad(f"must be at most 65535, got {value}")
    if field in ("handshake_timeout", "fsync_interval", "segment_size", "memory_high_watermark") and value == 0:
        raise _Bad("must be above 0")


def load_config_file(path: str, base: Config | None = None) -> tuple[Config, dict[str, Any]]:
    """``base`` (default: ``Config()``) with the file's settings applied, and the
    command-line settings the file gives (``log_level``, ``no_uvloop``)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not valid UTF-8: {exc}") from None
    return _Loader(path, base or Config()).load(data)


class _Loader:
    def __init__(self, path: str, base: Config) -> None:
        self.path = path
        self.dir = os.path.dirname(os.path.abspath(path))
        self.values: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}
        self.base = base
        self.hints = typing.get_type_hints(Config)

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.path, key, reason)

    def load(self, data: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
        users: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name == "users":
                users = self._table(key, value)
            elif name == "vhosts":
                self._vhosts(key, value)
            elif name in ("permissions", "topic_permissions"):
                self._permissions(key, name, value)
            elif isinstance(value, dict):
                prefix = "" if name in PLAIN_TABLES else name + "_"
                for k, v in value.items():
                    self._set(f"{key}.{k}", prefix + k.replace("-", "_"), v)
            else:
                self._set(key, name, value)
        if users:
            self._users(users)
        cfg = dataclasses.replace(self.base, **self.values)
        if users and cfg.users == DEFAULT_USERS:
            cfg.users = {}  # guest/guest only while no other user is configured
        self._check_references(cfg)
        if cfg.load_definitions:
            try:
                read_definitions(cfg.load_definitions)
            except DefinitionsError as exc:
                raise self.error("load_definitions", str(exc)) from None
        return cfg, self.extras

    def _table(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, "expected a table")
        return value

    def _set(self, key: str, field: str, value: Any) -> None:
        if field in EXTRAS:
            if not isinstance(value, EXTRAS[field]):
                raise self.error(key, f"expected {_describe(EXTRAS[field])}, got {json.dumps(value, default=str)}")
            if field == "log_level" and value not in LOG_LEVELS:
                raise self.error(key, f"expected one of {', '.join(LOG_LEVELS)}, got {json.dumps(value)}")
            self.extras[field] = value
            return
        if field not in self.hints or field in SPECIAL_FIELDS:
            raise self.error(key, "unknown key")
        try:
            v = _coerce(value, self.hints[field])
            for item in v if isinstance(v, list) else [v]:
                _check_range(field, item)
        except _Bad as exc:
            raise self.error(key, str(exc)) from None
        if isinstance(v, str) and v and (field.endswith(_PATH_SUFFIXES) or field == "load_definitions"):
            v = os.path.join(self.dir, os.path.expanduser(v))
        self.values[field] = v

    def _users(self, users: dict[str, Any]) -> None:
        out = []
        for name, spec in users.items():
            where = f"users.{name}"
            if not isinstance(spec, dict):
                raise self.error(where, "expected a table (password_hash, password_env or password_file; tags)")
            unknown = set(spec) - {"password_hash", "hashing_algorithm", "password_env", "password_file", "tags", "password"}
            if unknown:
                raise self.error(f"{where}.{sorted(unknown)[0]}", "unknown key")
            if "password" in spec:
                raise self.error(
                    f"{where}.password", "a plain password is not accepted here: use password_hash, password_env or password_file"
                )
            sources = [k for k in ("password_hash", "password_env", "password_file") if k in spec]
            if len(sources) != 1:
                raise self.error(where, "give exactly one of password_hash, password_env, password_file")
            tags = spec.get("tags", [])
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise self.error(f"{where}.tags", "expected a list of strings")
            for k in sources + (["hashing_algorithm"] if "hashing_algorithm" in spec else []):
                if not isinstance(spec[k], str):
                    raise self.error(f"{where}.{k}", "expected a string")
            if "password_hash" in spec:
                try:
                    algo = A.algorithm(spec.get("hashing_algorithm", "sha256"))
                    A.AccessControl().add_user(name, password_hash=spec["password_hash"], hashing_algorithm=algo)
                except ValueError as exc:
                    raise self.error(f"{where}.password_hash", str(exc).removeprefix(f"user '{name}': ")) from None
                h = spec["password_hash"]
            else:
                if "hashing_algorithm" in spec:
                    raise self.error(f"{where}.hashing_algorithm", "only with password_hash")
                algo = A.SHA256
                h = A.hash_password(self._secret(where, spec), algo)
            out.append({"name": name, "password_hash": h, "hashing_algorithm": algo, "tags": tags})
        self.values["hashed_users"] = out

    def _secret(self, where: str, spec: dict[str, Any]) -> str:
        if "password_env" in spec:
            var = spec["password_env"]
            value = os.environ.get(var)
            if value is None:
                raise self.error(f"{where}.password_env", f"the environment variable {var} is not set")
            return value
        p = os.path.join(self.dir, os.path.expanduser(spec["password_file"]))
        try:
            with open(p, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(f"{where}.password_file", f"cannot read {p}: {getattr(exc, 'strerror', None) or exc}") from None

    def _vhosts(self, key: str, value: Any) -> None:
        names = list(self.base.vhosts)
        limits: dict[str, dict[str, int]] = {}
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise self.error(key, "expected a list of vhost names or a table of vhosts")
            extra = value
        elif isinstance(value, dict):
            extra = list(value)
            for name, spec in value.items():
                if not isinstance(spec, dict):
                    raise self.error(f"{key}.{name}", "expected a table (max_connections, max_queues)")
                try:
                    A.AccessControl().set_vhost_limits(name, spec)
                except ValueError as exc:
                    raise self.error(f"{key}.{name}", str(exc)) from None
                if spec:
                    limits[name] = {k.replace("_", "-"): v for k, v in spec.items()}
        else:
            raise self.error(key, "expected a list of vhost names or a table of vhosts")
        self.values["vhosts"] = names + [n for n in extra if n not in names]
        self.values["vhost_limits"] = limits

    def _permissions(self, key: str, name: str, value: Any) -> None:
        fields = ("user", "vhost", "configure", "write", "read") if name == "permissions" else ("user", "vhost", "exchange", "write", "read")
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of tables ([[{name}]]) with {', '.join(fields)}")
        out = []
        for i, p in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(p, dict):
                raise self.error(where, f"expected a table with {', '.join(fields)}")
            for k in p:
                if k not in fields:
                    raise self.error(f"{where}.{k}", "unknown key")
            for k in fields:
                if k not in p:
                    raise self.error(f"{where}.{k}", "missing")
                if not isinstance(p[k], str):
                    raise self.error(f"{where}.{k}", "expected a string")
                if k in ("configure", "write", "read"):
                    try:
                        A.compile_regex(p[k])
                    except ValueError as exc:
                        raise self.error(f"{where}.{k}", str(exc)) from None
            out.append(dict(p))
        self.values[name] = out

    def _check_references(self, cfg: Config) -> None:
        users = set(cfg.users) | {u["name"] for u in cfg.hashed_users}
        for name in ("permissions", "topic_permissions"):
            for i, p in enumerate(getattr(cfg, name)):
                if p["user"] not in users:
                    raise self.error(f"{name}[{i}].user", f"no user '{p['user']}' (define it in [users.{p['user']}])")
                if p["vhost"] not in cfg.vhosts:
                    raise self.error(f"{name}[{i}].vhost", f"no vhost '{p['vhost']}' (list it in vhosts)")


# ---------------------------------------------------------------------- --print-config


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)


def _is_secret(name: str) -> bool:
    return any(w in name for w in ("password", "secret", "passphrase"))


def render_config(cfg: Config, extras: dict[str, Any] | None = None) -> str:
    """The settings in force as TOML, secrets masked (``leveret --print-config``)."""
    lines = ["# the settings in force (secrets masked)"]
    for k, v in sorted((extras or {}).items()):
        lines.append(f"{k} = {_toml_value(v)}")
    tables = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in SPECIAL_FIELDS:
            continue
        if _is_secret(f.name) and v:
            v = MASK
        if v is None:
            lines.append(f"# {f.name} = (not set)")
        elif isinstance(v, dict):
            tables.append((f.name, v))
        else:
            lines.append(f"{f.name} = {_toml_value(v)}")
    lines.append(f"vhosts = {_toml_value(cfg.vhosts)}")
    for vhost, limits in cfg.vhost_limits.items():
        lines += ["", f"[vhosts.{json.dumps(vhost)}]", *(f"{k.replace('-', '_')} = {v}" for k, v in limits.items())]
    if cfg.users:
        lines += ["", "# default users (full permissions on every vhost; --user or the built-in guest):"]
        lines += [f"#   {n} (password {MASK})" for n in cfg.users]
    for u in cfg.hashed_users:
        lines += [
            "",
            f"[users.{json.dumps(u['name'])}]",
            f"password_hash = {json.dumps(MASK)}",
            f"hashing_algorithm = {json.dumps(u.get('hashing_algorithm', A.SHA256))}",
            f"tags = {_toml_value(list(u.get('tags', [])))}",
        ]
    for name in ("permissions", "topic_permissions"):
        for p in getattr(cfg, name):
            lines += ["", f"[[{name}]]", *(f"{k} = {json.dumps(v)}" for k, v in p.items())]
    for name, v in tables:
        lines += ["", f"[{name}]", *(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items())]
    return "\n".join(lines) + "\n"
