"""The node's runtime admin API for users, permissions and vhost limits (the HTTP API and
the definitions build on it), and the access part of the config applied at boot.  Every
change is saved with the definitions and drops the decisions channels have cached.

:class:`Admin` is composed by :class:`leveret.broker.server.Broker`, which keeps the
public names (``add_user``, ``set_permissions``...) as thin delegations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from leveret.broker.config import DEFAULT_USERS, user_password
from leveret.broker.core import access as A
from leveret.broker.definitions import apply_access_definitions
from leveret.protocol.constants import CONNECTION_FORCED

if TYPE_CHECKING:
    from leveret.broker.server import Broker


class Admin:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.access = broker.access
        self.default_users: list[str] = []  # full permissions on every vhost (Config.users)

    def apply_access_config(self) -> None:
        """Apply the users, permissions and limits of the config (at boot, and again
        over what the data directory had saved)."""
        b = self.broker
        cfg, acc = b.config, self.access
        loading, b._access_loading = b._access_loading, True
        try:
            acc.loopback_users = list(cfg.loopback_users)
            if b._definitions is not None:
                apply_access_definitions(b, b._definitions, cfg.load_definitions or "")
            for u in cfg.hashed_users:
                if "password_hash" in u:
                    acc.add_user(
                        u["name"],
                        password_hash=u["password_hash"],
                        hashing_algorithm=u.get("hashing_algorithm", A.SHA256),
                        tags=u.get("tags", ()),
                    )
                else:  # password_env / password_file: read and hashed now
                    acc.add_user(u["name"], user_password(u), tags=u.get("tags", ()))
            users = dict(cfg.users)
            if users == DEFAULT_USERS and any(n not in users for n in acc.users):
                users = {}  # the default guest only while no other user exists
            self.default_users = list(users)
            for name, password in users.items():
                acc.add_user(name, password, tags=["administrator"])
                for vhost in b.vhosts:
                    acc.set_permissions(name, vhost)
            for p in cfg.permissions:
                b.add_vhost(p["vhost"])
                acc.set_permissions(p["user"], p["vhost"], p["configure"], p["write"], p["read"])
            for t in cfg.topic_permissions:
                b.add_vhost(t["vhost"])
                acc.set_topic_permissions(t["user"], t["vhost"], t["exchange"], t["write"], t["read"])
            for vhost, limits in cfg.vhost_limits.items():
                b.add_vhost(vhost)
                acc.set_vhost_limits(vhost, limits)
        finally:
            b._access_loading = loading
        self.access_changed()

    def access_changed(self) -> None:
        for c in self.broker.connections:
            for ch in c.channels.values():
                ch.forget_decisions()
        self.broker._save_definitions()

    def add_user(
        self,
        name: str,
        password: str | None = None,
        *,
        password_hash: str | None = None,
        hashing_algorithm: str = A.SHA256,
        tags: list[str] | str = (),  # type: ignore[assignment]
    ) -> A.User:
        """Create or replace a user (a password is hashed with SHA-256 here; a hash is
        taken as RabbitMQ's, with its algorithm)."""
        return self.access.add_user(
            name, password, password_hash=password_hash, hashing_algorithm=hashing_algorithm, tags=tags
        )

    def delete_user(self, name: str) -> bool:
        """Delete a user and its permissions and close its connections, as RabbitMQ
        (320 CONNECTION_FORCED - user 'x' is deleted)."""
        if not self.access.delete_user(name):
            return False
        if name in self.default_users:
            self.default_users.remove(name)
        for c in list(self.broker.connections):
            if c.user == name:
                c.close_forced(CONNECTION_FORCED, f"user '{name}' is deleted")
        return True

    def _need_vhost(self, vhost: str) -> None:
        if vhost not in self.broker.vhosts:
            raise KeyError(f"no vhost '{vhost}'")

    def set_permissions(self, user: str, vhost: str, configure: str = ".*", write: str = ".*", read: str = ".*") -> None:
        """Set a user's configure/write/read expressions on a vhost (ValueError for an
        expression that does not compile, KeyError for an unknown user or vhost)."""
        self._need_vhost(vhost)
        self.access.set_permissions(user, vhost, configure, write, read)

    def clear_permissions(self, user: str, vhost: str) -> None:
        self.access.clear_permissions(user, vhost)

    def set_topic_permissions(self, user: str, vhost: str, exchange: str, write: str = ".*", read: str = ".*") -> None:
        self._need_vhost(vhost)
        self.access.set_topic_permissions(user, vhost, exchange, write, read)

    def clear_topic_permissions(self, user: str, vhost: str, exchange: str | None = None) -> None:
        self.access.clear_topic_permissions(user, vhost, exchange)

    def set_vhost_limits(self, vhost: str, limits: dict[str, int]) -> None:
        """``{"max-connections": n, "max-queues": n}`` (negative: no limit)."""
        self._need_vhost(vhost)
        self.access.set_vhost_limits(vhost, limits)

    def authenticate(self, user: str, password: str) -> bool:
        return self.access.authenticate(user, password) is not None

    def user_exists(self, user: str) -> bool:
        """The user is known (EXTERNAL logs in by client certificate, without a password)."""
        return user in self.access.users
