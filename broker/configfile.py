"""The TOML config file (``--config PATH``, or ``LEVERET_CONFIG``).

Keys map onto :class:`~leveret.broker.config.Config` fields generically:

* a top-level key is the field of that name (``-`` read as ``_``): ``port = 5672``;
* a table ``[name]`` maps its keys onto the fields ``name_<key>``: ``[tls] port = 5671``
  is ``tls_port``, ``[tls] cert = "..."`` is ``tls_cert``; the tables ``[amqp]``,
  ``[limits]`` and ``[storage]`` map onto the unprefixed names (``[amqp] host``,
  ``[limits] max_connections``, ``[storage] data_dir``);
* values are checked against the field's type hint (int, float, bool, str, lists, and
  unions of these), then by :meth:`Config.validate` (the ranges; its error is reported
  with the file and the key the value came from);
* a port that may be off is turned off with ``"off"`` (``port = 0`` is a free port), an
  optional string (a path, ``http_host``) or number (``[tcp] recbuf``) is unset with ``""``;
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

from leveret.broker.config import (
    DEFAULT_USERS,
    PORT_OFF_WORDS,
    Config,
    InvalidSetting,
    SecretUnavailable,
    user_password,
)
from leveret.broker.core import access as A
from leveret.broker.definitions import DefinitionsError, read_definitions

#: tables whose keys are the unprefixed field names
PLAIN_TABLES = {"amqp", "limits", "storage"}
#: fields set only through their special tables
SPECIAL_FIELDS = {"users", "hashed_users", "permissions", "topic_permissions", "vhost_limits", "vhosts"}
#: settings of the command line, not of Config
EXTRAS = {"log_level": str, "no_uvloop": bool}
LOG_LEVELS = ("debug", "info", "warning", "error")
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


def _optional(field: str, hint: Any, value: Any) -> bool:
    """The config file's spelling of None: ``"off"`` (or ``"none"``) for a port that
    may be off, ``""`` for an optional string (a path, a host) or number (``tcp_recbuf``:
    the kernel's own)."""
    if type(None) not in typing.get_args(hint):
        return False
    if field.endswith("port") and isinstance(value, str) and value.lower() in PORT_OFF_WORDS:
        return True
    return value == "" and not field.endswith("port")


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
        self.keys: dict[str, str] = {}  # field -> the key it was given as
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
        try:
            cfg = dataclasses.replace(self.base, **self.values)
        except InvalidSetting as exc:
            raise self.error(self.keys.get(exc.field, exc.field), exc.reason) from None
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
        self.keys[field] = key
        if _optional(field, self.hints[field], value):
            self.values[field] = None
            return
        try:
            v = _coerce(value, self.hints[field])
        except _Bad as exc:
            raise self.error(key, str(exc)) from None
        if isinstance(v, str) and v and (field.endswith(_PATH_SUFFIXES) or field == "load_definitions"):
            v = os.path.join(self.dir, os.path.expanduser(v))
        self.values[field] = v

    def _users(self, users: dict[str, Any]) -> None:
        out = []
        keys = ("password_hash", "password_hash_env", "password_env", "password_file")
        for name, spec in users.items():
            where = f"users.{name}"
            if not isinstance(spec, dict):
                raise self.error(where, "expected a table (password_hash, password_env or password_file; tags)")
            unknown = set(spec) - {*keys, "hashing_algorithm", "tags", "password"}
            if unknown:
                raise self.error(f"{where}.{sorted(unknown)[0]}", "unknown key")
            if "password" in spec:
                raise self.error(
                    f"{where}.password", "a plain password is not accepted here: use password_hash, password_env or password_file"
                )
            sources = [k for k in keys if k in spec]
            if len(sources) != 1:
                raise self.error(where, "give exactly one of password_hash, password_env, password_file (or password_hash_env)")
            tags = spec.get("tags", [])
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise self.error(f"{where}.tags", "expected a list of strings")
            for k in sources + (["hashing_algorithm"] if "hashing_algorithm" in spec else []):
                if not isinstance(spec[k], str):
                    raise self.error(f"{where}.{k}", "expected a string")
            source = sources[0]
            if source in ("password_hash", "password_hash_env"):
                h = spec[source]
                if source == "password_hash_env":
                    # (a masked hash of --print-config comes back this way: a hash is the
                    # same every time, so the Config keeps the hash, not the variable)
                    h = os.environ.get(spec[source])
                    if h is None:
                        raise self.error(f"{where}.{source}", f"the environment variable {spec[source]} is not set")
                try:
                    algo = A.algorithm(spec.get("hashing_algorithm", "sha256"))
                    A.AccessControl().add_user(name, password_hash=h, hashing_algorithm=algo)
                except ValueError as exc:
                    raise self.error(f"{where}.{source}", str(exc).removeprefix(f"user '{name}': ")) from None
                out.append({"name": name, "password_hash": h, "hashing_algorithm": algo, "tags": tags})
                continue
            if "hashing_algorithm" in spec:
                raise self.error(f"{where}.hashing_algorithm", "only with password_hash")
            value = spec[source]
            if source == "password_file":
                value = os.path.join(self.dir, os.path.expanduser(value))
            user = {"name": name, source: value, "tags": tags}
            try:
                user_password(user)  # (read now: a missing secret stops the broker before it starts)
            except SecretUnavailable as exc:
                raise self.error(f"{where}.{exc.key}", exc.reason) from None
            out.append(user)
        self.values["hashed_users"] = out

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


def _toml_str(v: str) -> str:
    out = []
    for ch in v:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return _toml_str(v)
    return repr(v) if isinstance(v, float) else str(v)


def hash_env_var(user: str) -> str:
    """The environment variable a masked password hash of ``--print-config`` is read from."""
    return "LEVERET_PASSWORD_HASH_" + "".join(c if c.isalnum() else "_" for c in user).upper()


def render_config(cfg: Config, extras: dict[str, Any] | None = None) -> str:
    """The settings in force as a config file (``leveret --print-config``): loaded back
    (``--config``), it gives the same Config.  Every setting is written, None as the file's
    spelling of it (``"off"`` for a port, ``""`` otherwise).  Secrets are masked: a user
    whose password came from ``password_env`` / ``password_file`` is written with that
    reference; a user given by ``password_hash`` gets ``password_hash_env =
    "LEVERET_PASSWORD_HASH_<NAME>"`` (the hash comes back from that variable); the default
    users (``--user``, guest) are listed in comments, for ``--user`` to give again."""
    hints = typing.get_type_hints(Config)
    lines = ["# the settings in force (secrets masked: see the comments below)"]
    for k, v in sorted((extras or {}).items()):
        lines.append(f"{k} = {_toml_value(v)}")
    for f in dataclasses.fields(cfg):
        if f.name in SPECIAL_FIELDS:
            continue
        v = getattr(cfg, f.name)
        if v is None:
            v = PORT_OFF_WORDS[0] if f.name.endswith("port") else ""
        elif isinstance(v, str) and v and (f.name.endswith(_PATH_SUFFIXES) or f.name == "load_definitions"):
            v = os.path.abspath(v)  # (a relative path would be read relative to the file)
        elif hints[f.name] is float:
            v = float(v)
        lines.append(f"{f.name} = {_toml_value(v)}")
    vhosts = list(cfg.vhosts) + [v for v in cfg.vhost_limits if v not in cfg.vhosts]
    if not cfg.vhost_limits:
        lines.append(f"vhosts = {_toml_value(vhosts)}")
    else:  # (a list and tables of the same key cannot both be given)
        for vhost in vhosts:
            limits = cfg.vhost_limits.get(vhost, {})
            lines += ["", f"[vhosts.{_toml_str(vhost)}]", *(f"{k.replace('-', '_')} = {v}" for k, v in limits.items())]
    if cfg.users:
        lines += ["", "# default users (full permissions on every vhost): the built-in guest, or --user NAME:PASSWORD",
                  "# given again on the command line:"]
        lines += [f"#   {n} (password {MASK})" for n in cfg.users]
    for u in cfg.hashed_users:
        lines += ["", f"[users.{_toml_str(u['name'])}]"]
        if "password_hash" in u:
            var = hash_env_var(u["name"])
            lines += [
                f"# password_hash = {_toml_str(MASK)}  (masked: set {var} to the hash, or write it here)",
                f"password_hash_env = {_toml_str(var)}",
                f"hashing_algorithm = {_toml_str(u.get('hashing_algorithm', A.SHA256))}",
            ]
        else:
            lines += [f"{k} = {_toml_str(u[k])}" for k in ("password_env", "password_file") if k in u]
        lines.append(f"tags = {_toml_value(list(u.get('tags', [])))}")
    for name in ("permissions", "topic_permissions"):
        for p in getattr(cfg, name):
            lines += ["", f"[[{name}]]", *(f"{k} = {_toml_str(v)}" for k, v in p.items())]
    return "\n".join(lines) + "\n"
