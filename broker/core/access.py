"""Users, password hashes, permissions and vhost limits, as RabbitMQ has them.

* Password hashes use RabbitMQ's scheme (``rabbit_password``):
  ``base64(salt4 || H(salt4 || utf8(password)))`` with H = SHA-256
  (``rabbit_password_hashing_sha256``, the default), SHA-512 or MD5.
* Permissions: configure/write/read regular expressions per user per vhost, searched
  unanchored in the resource name (an empty expression matches nothing but ""); the
  default exchange is checked as ``amq.default``.  Topic permissions: write/read
  expressions per topic exchange, searched in the routing key; none for an exchange
  means allowed.  ``{username}`` and ``{vhost}`` in a topic expression are replaced.
* A refusal is RabbitMQ 3.10's ``403 ACCESS_REFUSED - access to queue 'q' in vhost '/'
  refused for user 'bob'`` (:meth:`AccessControl.check`).

The wire layer asks :meth:`AccessControl.check` from its channel handlers and keeps the
decisions per channel; :attr:`AccessControl.on_change` tells the node that permissions
changed, so that it drops those decisions (and saves the definitions).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from leveret.broker.core.errors import AccessRefused

SHA256 = "rabbit_password_hashing_sha256"
SHA512 = "rabbit_password_hashing_sha512"
MD5 = "rabbit_password_hashing_md5"
_DIGESTS = {SHA256: hashlib.sha256, SHA512: hashlib.sha512, MD5: hashlib.md5}
#: short names accepted in the config file and by the admin API
ALGORITHM_NAMES = {"sha256": SHA256, "sha512": SHA512, "md5": MD5}

CONFIGURE, WRITE, READ = "configure", "write", "read"
PERMS = (CONFIGURE, WRITE, READ)
USER_TAGS = ("administrator", "management", "monitoring", "policymaker", "impersonator")
FULL = ".*"


def algorithm(name: str | None) -> str:
    """The RabbitMQ module name of a hashing algorithm (``sha256`` or the full name);
    RabbitMQ reads a missing one as MD5 (definitions from before 3.6)."""
    if not name:
        return MD5
    name = ALGORITHM_NAMES.get(name, name)
    if name not in _DIGESTS:
        raise ValueError(f"unknown hashing algorithm {name!r} (sha256, sha512 or md5)")
    return name


def hash_password(password: str, algo: str = SHA256, salt: bytes | None = None) -> str:
    """RabbitMQ's password hash: base64(salt4 || H(salt4 || utf8(password)))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + _DIGESTS[algorithm(algo)](salt + password.encode()).digest()).decode()


def check_password(password_hash: str, algo: str, password: str) -> bool:
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return False
    if len(raw) <= 4:
        return False  # RabbitMQ: an empty hash refuses every password
    salt = raw[:4]
    return hmac.compare_digest(raw, salt + _DIGESTS[algorithm(algo)](salt + password.encode()).digest())


def compile_regex(pattern: str) -> re.Pattern[str]:
    """A permission expression as RabbitMQ reads it ("" matches only the empty name);
    ValueError naming the expression when it does not compile."""
    try:
        return re.compile(pattern or "^$")
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


def is_loopback(address: str | None) -> bool:
    """RabbitMQ's rabbit_net:is_loopback on the connection's *local* address: 127/8,
    ::1, and IPv4-mapped 127/8."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@dataclass
class User:
    name: str
    password_hash: str
    hashing_algorithm: str = SHA256
    tags: list[str] = field(default_factory=list)

    def check_password(self, password: str) -> bool:
        return check_password(self.password_hash, self.hashing_algorithm, password)


class Permission:
    """configure/write/read expressions of one user on one vhost."""

    __slots__ = ("configure", "write", "read", "_re")

    def __init__(self, configure: str, write: str, read: str) -> None:
        self.configure, self.write, self.read = configure, write, read
        self._re = {CONFIGURE: compile_regex(configure), WRITE: compile_regex(write), READ: compile_regex(read)}

    def allows(self, perm: str, name: str) -> bool:
        return self._re[perm].search(name) is not None

    def as_dict(self) -> dict[str, str]:
        return {CONFIGURE: self.configure, WRITE: self.write, READ: self.read}


class TopicPermission:
    """write/read expressions on the routing keys of one topic exchange."""

    __slots__ = ("exchange", "write", "read")

    def __init__(self, exchange: str, write: str, read: str) -> None:
        for p in (write, read):
            compile_regex(p)  # (checked now; expanded per user and vhost when used)
        self.exchange, self.write, self.read = exchange, write, read

    def allows(self, perm: str, routing_key: str, user: str, vhost: str) -> bool:
        pattern = self.write if perm == WRITE else self.read
        if "{" in pattern:
            pattern = pattern.replace("{username}", re.escape(user)).replace("{vhost}", re.escape(vhost))
        return compile_regex(pattern).search(routing_key) is not None

    def as_dict(self) -> dict[str, str]:
        return {"exchange": self.exchange, WRITE: self.write, READ: self.read}


def refused(kind: str, name: str, vhost: str, user: str) -> AccessRefused:
    """RabbitMQ 3.10's 403 text (3.11+ put the kind of access in front)."""
    return AccessRefused(f"access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'")


class AccessControl:
    """The users, their permissions and the vhost limits of one node."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.permissions: dict[tuple[str, str], Permission] = {}  # (user, vhost)
        self.topic_permissions: dict[tuple[str, str], dict[str, TopicPermission]] = {}
        #: vhost -> {"max-connections": n, "max-queues": n} (RabbitMQ's names)
        self.vhost_limits: dict[str, dict[str, int]] = {}
        self.loopback_users: list[str] = ["guest"]
        #: called after every change (the node clears the channels' cached decisions
        #: and saves the definitions)
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ users

    def add_user(
        self,
        name: str,
        password: str | None = None,
        *,
        password_hash: str | None = None,
        hashing_algorithm: str | None = SHA256,
        tags: Iterable[str] = (),
    ) -> User:
        """Create or replace a user, from a password (hashed here with SHA-256) or from
        a RabbitMQ hash; tags as a list or RabbitMQ's comma-separated string."""
        if not name:
            raise ValueError("a user needs a name")
        if password is not None and password_hash is not None:
            raise ValueError(f"user '{name}': give a password or a password_hash, not both")
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        if password_hash is None:
            algo = SHA256
            password_hash = hash_password(password, algo) if password is not None else ""
        else:
            algo = algorithm(hashing_algorithm)
            if password_hash:
                try:
                    base64.b64decode(password_hash, validate=True)
                except ValueError:
                    raise ValueError(f"user '{name}': password_hash is not base64") from None
        user = self.users[name] = User(name, password_hash, algo, list(tags))
        self._changed()
        return user

    def delete_user(self, name: str) -> bool:
        """Remove a user and its permissions; False if there was none."""
        if self.users.pop(name, None) is None:
            return False
        for key in [k for k in self.permissions if k[0] == name]:
            del self.permissions[key]
        for key in [k for k in self.topic_permissions if k[0] == name]:
            del self.topic_permissions[key]
        self._changed()
        return True

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        if user is None or not user.check_password(password):
            return None
        return user

    def loopback_allowed(self, name: str, local_address: str | None) -> bool:
        """A loopback-only user (``loopback_users``) may log in only over loopback."""
        return name not in self.loopback_users or is_loopback(local_address)

    # ------------------------------------------------------------------ permissions

    def set_permissions(self, user: str, vhost: str, configure: str = FULL, write: str = FULL, read: str = FULL) -> None:
        if user not in self.users:
            raise KeyError(f"no user '{user}'")
        self.permissions[(user, vhost)] = Permission(configure, write, read)
        self._changed()

    def clear_permissions(self, user: str, vhost: str) -> None:
        if self.permissions.pop((user, vhost), None) is not None:
            self._changed()

    def set_topic_permissions(self, user: str, vhost: str, exchange: str, write: str = FULL, read: str = FULL) -> None:
        if user not in self.users:
            raise KeyError(f"no user '{user}'")
        self.topic_permissions.setdefault((user, vhost), {})[exchange] = TopicPermission(exchange, write, read)
        self._changed()

    def clear_topic_permissions(self, user: str, vhost: str, exchange: str | None = None) -> None:
        rules = self.topic_permissions.get((user, vhost))
        if not rules:
            return
        if exchange is None:
            del self.topic_permissions[(user, vhost)]
        else:
            rules.pop(exchange, None)
        self._changed()

    def forget_vhost(self, vhost: str) -> None:
        """A vhost was deleted: its permissions and limits go with it (as RabbitMQ)."""
        for d in (self.permissions, self.topic_permissions):
            for key in [k for k in d if k[1] == vhost]:
                del d[key]
        self.vhost_limits.pop(vhost, None)
        self._changed()

    def set_vhost_limits(self, vhost: str, limits: dict[str, int]) -> None:
        """``{"max-connections": n, "max-queues": n}``; a negative value or a missing
        key is no limit, as RabbitMQ's ``set_vhost_limits``."""
        clean = {}
        for k, v in limits.items():
            k = k.replace("_", "-")
            if k not in ("max-connections", "max-queues"):
                raise ValueError(f"unknown vhost limit {k!r} (max-connections, max-queues)")
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"vhost limit {k!r} must be an integer, not {v!r}")
            if v >= 0:
                clean[k] = v
        if clean:
            self.vhost_limits[vhost] = clean
        else:
            self.vhost_limits.pop(vhost, None)
        self._changed()

    def limit(self, vhost: str, name: str) -> int | None:
        limits = self.vhost_limits.get(vhost)
        return None if limits is None else limits.get(name)

    # ------------------------------------------------------------------ checks

    def can_open(self, user: str, vhost: str) -> bool:
        """A user with no permissions on a vhost cannot open it."""
        return (user, vhost) in self.permissions

    def allowed(self, user: str, vhost: str, perm: str, name: str) -> bool:
        p = self.permissions.get((user, vhost))
        return p is not None and p.allows(perm, name or "amq.default")

    def check(self, user: str, vhost: str, perm: str, kind: str, name: str) -> None:
        """403 unless ``user`` has ``perm`` on the ``kind`` ('queue' or 'exchange')
        named ``name`` ("" is the default exchange, checked as amq.default)."""
        if kind == "exchange" and name == "":
            name = "amq.default"
        p = self.permissions.get((user, vhost))
        if p is None or not p.allows(perm, name):
            raise refused(kind, name, vhost, user)

    def topic_rule(self, user: str, vhost: str, exchange: str) -> TopicPermission | None:
        rules = self.topic_permissions.get((user, vhost))
        return None if not rules else rules.get(exchange)

    def check_topic(self, user: str, vhost: str, perm: str, exchange: str, routing_key: str) -> None:
        """403 unless the routing key is allowed on this topic exchange (no topic
        permission for it: allowed)."""
        rule = self.topic_rule(user, vhost, exchange)
        if rule is not None and not rule.allows(perm, routing_key, user, vhost):
            raise AccessRefused(
                f"access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'",
            )

    # ------------------------------------------------------------------ definitions

    def to_json(self) -> dict[str, Any]:
        """Users, permissions, topic permissions and limits in RabbitMQ's definitions
        shapes (what ``persistence`` saves and the HTTP API can export)."""
        return {
            "users": [
                {"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": u.hashing_algorithm, "tags": u.tags}
                for u in self.users.values()
            ],
            "permissions": [{"user": u, "vhost": v, **p.as_dict()} for (u, v), p in self.permissions.items()],
            "topic_permissions": [
                {"user": u, "vhost": v, **t.as_dict()} for (u, v), rules in self.topic_permissions.items() for t in rules.values()
            ],
            "vhost_limits": {v: dict(lim) for v, lim in self.vhost_limits.items()},
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace everything with what :meth:`to_json` saved."""
        on_change, self.on_change = self.on_change, None
        try:
            self.users.clear()
            self.permissions.clear()
            self.topic_permissions.clear()
            self.vhost_limits.clear()
            for u in data.get("users", []):
                self.add_user(u["name"], password_hash=u["password_hash"], hashing_algorithm=u["hashing_algorithm"], tags=u["tags"])
            for p in data.get("permissions", []):
                self.set_permissions(p["user"], p["vhost"], p[CONFIGURE], p[WRITE], p[READ])
            for t in data.get("topic_permissions", []):
                self.set_topic_permissions(t["user"], t["vhost"], t["exchange"], t[WRITE], t[READ])
            for v, lim in data.get("vhost_limits", {}).items():
                self.set_vhost_limits(v, lim)
        finally:
            self.on_change = on_change
