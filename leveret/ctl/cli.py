"""``leveret-ctl``: rabbitmqctl's commands, over the management HTTP API.

``leveret-ctl [options] <command> [<command options>] [<args>]``; ``leveret-ctl help``
lists the commands.  Options may come before or after the command (``--`` ends them, for
an argument starting with ``-``).  Output is rabbitmqctl's: the informational line
("Listing queues for vhost / ...") on stderr unless ``-q``, then a header row and
tab-separated rows on stdout (``--no-table-headers`` drops the header,
``--formatter json`` prints a JSON array of objects instead).

Exit codes are rabbitmqctl's (sysexits): 0 ok, 64 usage (unknown command, wrong number of
arguments, unknown info item, ``delete_queue`` of a missing queue), 65 bad data (missing
virtual host, rejected definitions or patterns), 66 input file missing, 67 no such user,
69 node unavailable (the management API cannot be reached; ``purge_queue`` of a missing
queue), 70 internal error (``add_user`` of an existing user, unexpected answers), 73 output
file cannot be created, 77 authentication refused (wrong user/password, or a user without a
management tag).
"""

from __future__ import annotations

import difflib
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from leveret import __version__
from leveret.ctl import items as I
from leveret.ctl.client import ApiError, CertificateFailure, Client, Unavailable, path

PROG = "leveret-ctl"
EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_NOUSER = 0, 64, 65, 66, 67
EX_UNAVAILABLE, EX_SOFTWARE, EX_CANTCREAT, EX_NOPERM = 69, 70, 73, 77


class CtlError(Exception):
    """An error to print (on stderr) and the exit code to return."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class UsageError(CtlError):
    def __init__(self, message: str, command: Command | None = None) -> None:
        text = f"Error (argument validation): {message}"
        if command is not None:
            text += f"\nUsage:\n  {PROG} {command.usage}"
        else:
            text += f"\nRun '{PROG} help' for the list of commands."
        super().__init__(EX_USAGE, text)


def failure(code: int, message: str) -> CtlError:
    return CtlError(code, f"Error:\n{message}")


def no_such_vhost(vhost: str) -> CtlError:
    return failure(EX_DATAERR, f"Virtual host '{vhost}' does not exist")


def no_such_user(user: str) -> CtlError:
    return failure(EX_NOUSER, f'User "{user}" does not exist')


# ---------------------------------------------------------------------- options


@dataclass
class Options:
    host: str = "localhost"
    port: int = 15672
    username: str = ""
    password: str = ""
    scheme: str = "http"
    cacert: str | None = None
    insecure: bool = False
    vhost: str = "/"
    quiet: bool = False
    silent: bool = False  # -s: quiet, and no table headers
    formatter: str = "table"
    table_headers: bool = True
    timeout: float = 60.0
    if_empty: bool = False
    if_unused: bool = False
    help: bool = False
    version: bool = False
    priority: int = 0  # set_policy / set_operator_policy
    apply_to: str = "all"


def _port(v: str) -> int:
    p = int(v)
    if not 0 < p < 65536:
        raise ValueError(v)
    return p


def _timeout(v: str) -> float:
    t = float(v)
    if t <= 0:
        raise ValueError(v)
    return t


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in allowed:
            raise ValueError(v)
        return v

    return check


# flag -> (Options attribute, converter for a flag that takes a value, or None for a switch)
FLAGS: dict[str, tuple[str, Callable[[str], Any] | None]] = {
    "-H": ("host", str), "--host": ("host", str), "--hostname": ("host", str),
    "-P": ("port", _port), "--port": ("port", _port),
    "-u": ("username", str), "--username": ("username", str), "--user": ("username", str),
    "--password": ("password", str),
    "--scheme": ("scheme", _choice("http", "https")),
    "--cacert": ("cacert", str),
    "--insecure": ("insecure", None), "-k": ("insecure", None),
    "-p": ("vhost", str), "--vhost": ("vhost", str),
    "-q": ("quiet", None), "--quiet": ("quiet", None), "-s": ("silent", None), "--silent": ("silent", None),
    "--formatter": ("formatter", _choice("table", "json")), "-f": ("formatter", _choice("table", "json")),
    "--no-table-headers": ("table_headers", None),
    "-t": ("timeout", _timeout), "--timeout": ("timeout", _timeout),
    "--if-empty": ("if_empty", None), "--if_empty": ("if_empty", None), "-e": ("if_empty", None),
    "--if-unused": ("if_unused", None), "--if_unused": ("if_unused", None),
    "-h": ("help", None), "--help": ("help", None), "-?": ("help", None),
    "--version": ("version", None),
    "--priority": ("priority", int), "--apply-to": ("apply_to", str),
}


def parse_args(argv: list[str]) -> tuple[Options, list[str]]:
    """Options anywhere on the line; the rest (command and its arguments) in order."""
    opts = Options(username=os.environ.get("LEVERET_CTL_USER", "guest"),
                   password=os.environ.get("LEVERET_CTL_PASSWORD", "guest"))
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            rest += argv[i:]
            break
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            continue
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag not in FLAGS:
            raise UsageError(f"unknown option {flag}")
        attr, convert = FLAGS[flag]
        if convert is None:
            if eq:
                raise UsageError(f"option {flag} takes no value")
            setattr(opts, attr, attr != "table_headers")
            continue
        if not eq:
            if i >= len(argv):
                raise UsageError(f"option {flag} needs a value")
            value = argv[i]
            i += 1
        try:
            setattr(opts, attr, convert(value))
        except ValueError:
            raise UsageError(f"invalid value for {flag}: {value!r}") from None
    if opts.silent:
        opts.quiet, opts.table_headers = True, False
    return opts, rest


# ---------------------------------------------------------------------- the command context


@dataclass
class Ctl:
    opts: Options
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            o = self.opts
            try:
                self._client = Client(o.host, o.port, o.username, o.password, o.scheme, o.timeout,
                                      o.cacert, o.insecure)
            except OSError as exc:  # (ssl.SSLError too) --cacert missing, unreadable or no PEM
                raise failure(EX_NOINPUT, f"cannot load the CA certificates {o.cacert!r} (--cacert): "
                                          f"{exc.strerror or exc}") from None
        return self._client

    @property
    def json(self) -> bool:
        return self.opts.formatter == "json"

    def banner(self, *lines: str) -> None:
        """rabbitmqctl's informational lines: on stderr, not with -q or --formatter json."""
        if not self.opts.quiet and not self.json:
            for line in lines:
                print(line, file=self.err)

    def say(self, text: str) -> None:
        """A command's result message (stdout); -q drops it."""
        if not self.opts.quiet:
            print(text, file=self.out)

    def table(self, columns: list[str], rows: list[list[Any]]) -> None:
        if self.json:
            json.dump([dict(zip(columns, r, strict=True)) for r in rows], self.out, ensure_ascii=False)
            self.out.write("\n")
            return
        if self.opts.table_headers:
            print("\t".join(columns), file=self.out)
        for r in rows:
            print("\t".join(I.cell(v) for v in r), file=self.out)

    # ------------------------------------------------------------------ what a 404/400 means

    def need_vhost(self, vhost: str) -> None:
        if not self.client.exists("vhosts", vhost):
            raise no_such_vhost(vhost)

    def need_user(self, user: str) -> None:
        if not self.client.exists("users", user):
            raise no_such_user(user)

    def diagnose(self, exc: ApiError, user: str | None = None, vhost: str | None = None) -> CtlError:
        """The error of a request naming a user and/or a vhost that failed with ``exc``."""
        if exc.status in (400, 404):
            if user is not None:
                self.need_user(user)
            if vhost is not None:
                self.need_vhost(vhost)
        return api_failure(exc)


def api_failure(exc: ApiError) -> CtlError:
    if exc.status == 401:
        return failure(EX_NOPERM, f"authentication failed: {exc.reason or exc.error} "
                                  "(check --username/--password; the user needs a management tag, e.g. administrator)")
    if exc.status in (400, 404, 405, 413):
        return failure(EX_DATAERR, exc.reason or exc.error)
    return failure(EX_SOFTWARE, f"the management API answered {exc.status}: {exc.reason or exc.error}")


@contextmanager
def on_404(missing: Callable[[], CtlError]) -> Iterator[None]:
    """An API call whose 404 means something in particular (a missing vhost, user, queue,
    connection): that error instead; other API errors go on to ``main`` (``api_failure``)."""
    try:
        yield
    except ApiError as exc:
        if exc.status == 404:
            raise missing() from None
        raise


# ---------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    description: str
    section: str
    run: Callable[[Ctl, list[str]], None]
    min_args: int = 0
    max_args: int | None = 0
    items: I.Items | None = None


COMMANDS: dict[str, Command] = {}


def command(usage: str, description: str, section: str, min_args: int = 0, max_args: int | None = 0,
            items: I.Items | None = None) -> Callable[[Callable[[Ctl, list[str]], None]], Callable[[Ctl, list[str]], None]]:
    def register(fn: Callable[[Ctl, list[str]], None]) -> Callable[[Ctl, list[str]], None]:
        name = usage.split()[0]
        COMMANDS[name] = Command(name, usage, description, section, fn, min_args, max_args, items)
        return fn

    return register


def columns_of(args: list[str], items: I.Items) -> list[str]:
    """The info items asked for (``name messages`` or ``name,messages``), else the defaults;
    an unknown one is a usage error, as in rabbitmqctl."""
    cols = [c for a in args for c in a.split(",") if c] or list(items.default)
    bad = [c for c in cols if c not in items.items]
    if bad:
        raise CtlError(EX_USAGE, f"Error (argument validation): Info key(s) {','.join(bad)} are not supported\n"
                                 f"Supported info keys: {', '.join(items.names())}")
    return cols


def list_rows(ctl: Ctl, cols: list[str], items: I.Items, objects: list[dict[str, Any]]) -> None:
    ctl.table(cols, [[items.items[c](o) for c in cols] for o in objects])


def vhost_list(ctl: Ctl, kind: str) -> list[dict[str, Any]]:
    """GET /api/<kind>/<vhost>: a 404 means the vhost is missing."""
    with on_404(lambda: no_such_vhost(ctl.opts.vhost)):
        return ctl.client.get(kind, ctl.opts.vhost)


def list_in_vhost(ctl: Ctl, args: list[str], kind: str, items: I.Items) -> None:
    """A list command over ``/api/<kind>/<vhost>``, with the info items given as ``args``
    (checked before the API is asked)."""
    cols = columns_of(args, items)
    list_rows(ctl, cols, items, vhost_list(ctl, kind))


QUEUE_ITEMS = "[-p <vhost>] [--no-table-headers] [<queueinfoitem> ...]"


@command(f"list_queues {QUEUE_ITEMS}", "Lists queues and their properties", "queues", max_args=None, items=I.QUEUES)
def list_queues(ctl: Ctl, args: list[str]) -> None:
    ctl.banner(f"Timeout: {ctl.opts.timeout} seconds ...", f"Listing queues for vhost {ctl.opts.vhost} ...")
    list_in_vhost(ctl, args, "queues", I.QUEUES)


@command("list_exchanges [-p <vhost>] [--no-table-headers] [<exchangeinfoitem> ...]", "Lists exchanges",
         "queues", max_args=None, items=I.EXCHANGES)
def list_exchanges(ctl: Ctl, args: list[str]) -> None:
    ctl.banner(f"Listing exchanges for vhost {ctl.opts.vhost} ...")
    list_in_vhost(ctl, args, "exchanges", I.EXCHANGES)


@command("list_bindings [-p <vhost>] [--no-table-headers] [<bindinginfoitem> ...]",
         "Lists all bindings on a vhost (those of the default exchange too: source_name is empty)",
         "queues", max_args=None, items=I.BINDINGS)
def list_bindings(ctl: Ctl, args: list[str]) -> None:
    ctl.banner(f"Listing bindings for vhost {ctl.opts.vhost}...")
    list_in_vhost(ctl, args, "bindings", I.BINDINGS)


@command("list_consumers [-p <vhost>] [--no-table-headers] [<consumerinfoitem> ...]",
         "Lists all consumers for a vhost", "queues", max_args=None, items=I.CONSUMERS)
def list_consumers(ctl: Ctl, args: list[str]) -> None:
    ctl.banner(f"Listing consumers in vhost {ctl.opts.vhost} ...")
    list_in_vhost(ctl, args, "consumers", I.CONSUMERS)


@command("list_connections [--no-table-headers] [<connectioninfoitem> ...]",
         "Lists AMQP 0.9.1 connections for the node (all vhosts)", "connections", max_args=None,
         items=I.CONNECTIONS)
def list_connections(ctl: Ctl, args: list[str]) -> None:
    cols = columns_of(args, I.CONNECTIONS)
    ctl.banner("Listing connections ...")
    list_rows(ctl, cols, I.CONNECTIONS, ctl.client.get("connections"))


@command("list_channels [--no-table-headers] [<channelinfoitem> ...]",
         "Lists all channels in the node (all vhosts)", "connections", max_args=None, items=I.CHANNELS)
def list_channels(ctl: Ctl, args: list[str]) -> None:
    cols = columns_of(args, I.CHANNELS)
    ctl.banner("Listing channels ...")
    list_rows(ctl, cols, I.CHANNELS, ctl.client.get("channels"))


@command("list_vhosts [--no-table-headers] [<vhostinfoitem> ...]", "Lists virtual hosts", "vhosts",
         max_args=None, items=I.VHOSTS)
def list_vhosts(ctl: Ctl, args: list[str]) -> None:
    cols = columns_of(args, I.VHOSTS)
    ctl.banner("Listing vhosts ...")
    list_rows(ctl, cols, I.VHOSTS, ctl.client.get("vhosts"))


@command("list_users [--no-table-headers]", "List user names and tags", "users", items=I.USERS)
def list_users(ctl: Ctl, args: list[str]) -> None:
    ctl.banner("Listing users ...")
    list_rows(ctl, list(I.USERS.default), I.USERS, ctl.client.get("users"))


@command("list_permissions [-p <vhost>] [--no-table-headers]", "Lists user permissions in a virtual host",
         "access control", items=I.PERMISSIONS)
def list_permissions(ctl: Ctl, args: list[str]) -> None:
    vhost = ctl.opts.vhost
    ctl.banner(f'Listing permissions for vhost "{vhost}" ...')
    with on_404(lambda: no_such_vhost(vhost)):
        perms = ctl.client.get("vhosts", vhost, "permissions")
    list_rows(ctl, list(I.PERMISSIONS.default), I.PERMISSIONS, perms)


@command("list_user_permissions [--no-table-headers] <username>", "Lists permissions of a user across all vhosts",
         "access control", min_args=1, max_args=1, items=I.USER_PERMISSIONS)
def list_user_permissions(ctl: Ctl, args: list[str]) -> None:
    (user,) = args
    ctl.banner(f'Listing permissions for user "{user}" ...')
    with on_404(lambda: no_such_user(user)):
        perms = ctl.client.get("users", user, "permissions")
    list_rows(ctl, list(I.USER_PERMISSIONS.default), I.USER_PERMISSIONS, perms)


@command("list_topic_permissions [-p <vhost>] [--no-table-headers]", "Lists topic permissions in a virtual host",
         "access control", items=I.TOPIC_PERMISSIONS)
def list_topic_permissions(ctl: Ctl, args: list[str]) -> None:
    vhost = ctl.opts.vhost
    ctl.banner(f'Listing topic permissions for vhost "{vhost}" ...')
    ctl.need_vhost(vhost)
    perms = [p for p in ctl.client.get("topic-permissions") if p.get("vhost") == vhost]
    list_rows(ctl, list(I.TOPIC_PERMISSIONS.default), I.TOPIC_PERMISSIONS, perms)


# ------------------------------------------------------------------ users, vhosts, permissions


def password_from(args: list[str], ctl: Ctl) -> str:
    """The password argument, else one line of stdin (a prompt on a terminal), as rabbitmqctl."""
    if len(args) > 1:
        return args[1]
    if sys.stdin is None:
        raise failure(EX_DATAERR, "Password is not provided via argument or stdin")
    if sys.stdin.isatty():
        try:
            return getpass.getpass("Password: ")
        except EOFError:
            raise failure(EX_DATAERR, "Password is not provided via argument or stdin") from None
    line = sys.stdin.readline()
    if line == "":
        raise failure(EX_DATAERR, "Password is not provided via argument or stdin")
    return line.rstrip("\r\n")


@command("add_user <username> [<password>]",
         "Creates a new user (no permissions, no tags); without <password> it is read from stdin",
         "users", min_args=1, max_args=2)
def add_user(ctl: Ctl, args: list[str]) -> None:
    user = args[0]
    if user == "":
        raise UsageError("Bad argument. user cannot be an empty string", COMMANDS["add_user"])
    password = password_from(args, ctl)
    ctl.banner(f'Adding user "{user}" ...')
    if ctl.client.exists("users", user):
        raise failure(EX_SOFTWARE, f'User "{user}" already exists')
    ctl.client.put("users", user, body={"password": password, "tags": ""})
    ctl.say(f"Done. Don't forget to grant the user permissions to some virtual hosts! "
            f"See '{PROG} help set_permissions' to learn more.")


@command("delete_user <username>", "Removes a user (its open connections are closed)", "users",
         min_args=1, max_args=1)
def delete_user(ctl: Ctl, args: list[str]) -> None:
    (user,) = args
    ctl.banner(f'Deleting user "{user}" ...')
    with on_404(lambda: no_such_user(user)):
        ctl.client.delete("users", user)


def get_user(ctl: Ctl, user: str) -> dict[str, Any]:
    with on_404(lambda: no_such_user(user)):
        return ctl.client.get("users", user)


@command("change_password <username> [<password>]",
         "Changes a user's password; without <password> it is read from stdin", "users", min_args=1, max_args=2)
def change_password(ctl: Ctl, args: list[str]) -> None:
    user = args[0]
    password = password_from(args, ctl)
    ctl.banner(f'Changing password for user "{user}" ...')
    tags = get_user(ctl, user).get("tags", [])
    ctl.client.put("users", user, body={"password": password, "tags": tags})


@command("set_user_tags <username> [<tag> ...]", "Sets user tags (none: clears them)", "users",
         min_args=1, max_args=None)
def set_user_tags(ctl: Ctl, args: list[str]) -> None:
    user, tags = args[0], args[1:]
    ctl.banner(f'Setting tags for user "{user}" to [{", ".join(tags)}] ...')
    get_user(ctl, user)
    ctl.client.put("users", user, body={"tags": ",".join(tags)})  # no password in the body: the user keeps its password hash


@command("add_vhost <vhost>", "Creates a virtual host (nothing happens if it exists)", "vhosts",
         min_args=1, max_args=1)
def add_vhost(ctl: Ctl, args: list[str]) -> None:
    (vhost,) = args
    if vhost == "":
        raise UsageError("Bad argument. vhost cannot be an empty string", COMMANDS["add_vhost"])
    ctl.banner(f'Adding vhost "{vhost}" ...')
    ctl.client.put("vhosts", vhost, body={})


@command("delete_vhost <vhost>", "Deletes a virtual host and everything in it", "vhosts",
         min_args=1, max_args=1)
def delete_vhost(ctl: Ctl, args: list[str]) -> None:
    (vhost,) = args
    ctl.banner(f'Deleting vhost "{vhost}" ...')
    with on_404(lambda: no_such_vhost(vhost)):
        ctl.client.delete("vhosts", vhost)


@command("set_permissions [-p <vhost>] <username> <conf> <write> <read>",
         "Sets a user's permissions (regular expressions) in a vhost", "access control", min_args=4, max_args=4)
def set_permissions(ctl: Ctl, args: list[str]) -> None:
    user, conf, write, read = args
    vhost = ctl.opts.vhost
    ctl.banner(f'Setting permissions for user "{user}" in vhost "{vhost}" ...')
    try:
        ctl.client.put("permissions", vhost, user, body={"configure": conf, "write": write, "read": read})
    except ApiError as exc:
        raise ctl.diagnose(exc, user, vhost) from None


@command("clear_permissions [-p <vhost>] <username>", "Revokes a user's permissions in a vhost",
         "access control", min_args=1, max_args=1)
def clear_permissions(ctl: Ctl, args: list[str]) -> None:
    (user,) = args
    vhost = ctl.opts.vhost
    ctl.banner(f'Clearing permissions for user "{user}" in vhost "{vhost}" ...')
    try:
        ctl.client.delete("permissions", vhost, user)
    except ApiError as exc:
        err = ctl.diagnose(exc, user, vhost)
        if exc.status != 404:  # 404 with both existing: there was nothing to clear
            raise err from None


@command("set_topic_permissions [-p <vhost>] <username> <exchange> <write> <read>",
         "Sets a user's topic permissions on a topic exchange (patterns on routing keys)",
         "access control", min_args=4, max_args=4)
def set_topic_permissions(ctl: Ctl, args: list[str]) -> None:
    user, exchange, write, read = args
    vhost = ctl.opts.vhost
    ctl.banner(f'Setting topic permissions on "{exchange}" for user "{user}" in vhost "{vhost}" ...')
    try:
        ctl.client.put("topic-permissions", vhost, user, body={"exchange": exchange, "write": write, "read": read})
    except ApiError as exc:
        raise ctl.diagnose(exc, user, vhost) from None


@command("clear_topic_permissions [-p <vhost>] <username>",
         "Clears a user's topic permissions in a vhost (on every exchange)", "access control",
         min_args=1, max_args=1)
def clear_topic_permissions(ctl: Ctl, args: list[str]) -> None:
    (user,) = args
    vhost = ctl.opts.vhost
    ctl.banner(f'Clearing topic permissions for user "{user}" in vhost "{vhost}" ...')
    try:
        ctl.client.delete("topic-permissions", vhost, user)
    except ApiError as exc:
        err = ctl.diagnose(exc, user, vhost)
        if exc.status != 404:
            raise err from None


# ------------------------------------------------------------------ queues, connections


def queue_missing(ctl: Ctl, queue: str, code: int) -> CtlError:
    ctl.need_vhost(ctl.opts.vhost)
    return failure(code, f"Queue '{queue}' in vhost '{ctl.opts.vhost}' not found")


@command("purge_queue [-p <vhost>] <queue>", "Purges a queue (removes all messages ready in it)", "queues",
         min_args=1, max_args=1)
def purge_queue(ctl: Ctl, args: list[str]) -> None:
    (queue,) = args
    vhost = ctl.opts.vhost
    ctl.banner(f"Purging queue '{queue}' in vhost '{vhost}' ...")
    with on_404(lambda: queue_missing(ctl, queue, EX_UNAVAILABLE)):  # rabbitmqctl: {error, not_found} -> 69
        ctl.client.delete("queues", vhost, queue, "contents")


@command("delete_queue [-p <vhost>] <queue> [--if-empty|-e] [--if-unused]", "Deletes a queue", "queues",
         min_args=1, max_args=1)
def delete_queue(ctl: Ctl, args: list[str]) -> None:
    (queue,) = args
    if queue == "":
        raise UsageError("Bad argument. queue name cannot be an empty string", COMMANDS["delete_queue"])
    o = ctl.opts
    conds = [c for c, on in (("if queue is empty ", o.if_empty), ("if queue is unused ", o.if_unused)) if on]
    ctl.banner(f"Deleting queue '{queue}' on vhost '{o.vhost}' " + "and ".join(conds) + "...")
    with on_404(lambda: queue_missing(ctl, queue, EX_USAGE)):  # rabbitmqctl: "Queue not found", 64
        info = ctl.client.get("queues", o.vhost, queue)
    query = "&".join(q for q, on in (("if-empty=true", o.if_empty), ("if-unused=true", o.if_unused)) if on)
    try:
        ctl.client.request("DELETE", path("queues", o.vhost, queue) + (f"?{query}" if query else ""))
    except ApiError as exc:
        if exc.status == 404:
            raise queue_missing(ctl, queue, EX_USAGE) from None
        if exc.status == 400 and "not empty" in exc.reason:
            raise failure(EX_USAGE, "Queue is not empty") from None
        if exc.status == 400 and "in use" in exc.reason:
            raise failure(EX_USAGE, "Queue is in use") from None
        raise api_failure(exc) from None
    n = info.get("messages_ready", 0)
    if ctl.json:
        json.dump({"result": "ok", "messages_ready": n}, ctl.out)
        ctl.out.write("\n")
    else:
        print(f"Queue was successfully deleted with {n} ready messages", file=ctl.out)


@command("close_connection <connection_name> <explanation>",
         "Closes a connection (AMQP connection.close 320 CONNECTION_FORCED with <explanation>); "
         "the name is list_connections' name column", "connections", min_args=2, max_args=2)
def close_connection(ctl: Ctl, args: list[str]) -> None:
    name, explanation = args
    if not name:
        raise UsageError("Bad argument. connection name cannot be an empty string (use the name column of "
                         "list_connections)",
                         COMMANDS["close_connection"])
    if "\r" in explanation or "\n" in explanation:
        raise failure(EX_DATAERR, "the explanation must be one line")
    try:
        explanation.encode("latin-1")
    except UnicodeEncodeError:
        raise failure(EX_DATAERR, "the explanation must be Latin-1 text (it travels in an HTTP header)") from None
    ctl.banner(f"Closing connection {name}, reason: {explanation}...")
    with on_404(lambda: failure(EX_DATAERR, f"Connection '{name}' not found")):
        ctl.client.delete("connections", name, headers={"X-Reason": explanation})


# ------------------------------------------------------------------ definitions


@command("export_definitions <path>", "Exports definitions in JSON to a file ('-': standard output)",
         "definitions", min_args=1, max_args=1)
def export_definitions(ctl: Ctl, args: list[str]) -> None:
    (target,) = args
    where = "standard output" if target == "-" else f'a file at "{target}"'
    ctl.banner(f"Exporting definitions in JSON to {where} ...")
    data = ctl.client.get("definitions")
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if target == "-":
        ctl.out.write(text)
        return
    try:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise failure(EX_CANTCREAT, f"cannot write {target}: {exc.strerror or exc}") from None


@command("import_definitions <path>", "Imports definitions in JSON from a file ('-': standard input)",
         "definitions", min_args=1, max_args=1)
def import_definitions(ctl: Ctl, args: list[str]) -> None:
    (source,) = args
    where = "standard input" if source == "-" else f'a file at "{source}"'
    ctl.banner(f"Importing definitions in JSON from {where} ...")
    if source == "-":
        raw = sys.stdin.buffer.read()
    else:
        try:
            with open(source, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise failure(EX_NOINPUT, f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise failure(EX_DATAERR, f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise failure(EX_DATAERR, f"{where}: expected a JSON object (RabbitMQ's definitions)")
    ctl.client.request("POST", "/api/definitions", raw_body=json.dumps(data).encode())


# ------------------------------------------------------------------ version


@command("version", "Displays this tool's version and, if the node answers, the node's", "node")
def version(ctl: Ctl, args: list[str]) -> None:
    """rabbitmqctl prints its own (the CLI tools') version alone, without asking the node:
    the first line is that.  The node's product and RabbitMQ versions (``/api/overview``)
    follow on a second line when the node answers; a node that does not is no error."""
    try:
        overview = ctl.client.get("overview")
    except (ApiError, Unavailable, CtlError):
        overview = None
    node = None
    if isinstance(overview, dict):
        node = {"name": overview.get("node"), "product_name": overview.get("product_name", "RabbitMQ"),
                "product_version": overview.get("product_version", overview.get("rabbitmq_version")),
                "rabbitmq_version": overview.get("rabbitmq_version")}
    if ctl.json:
        json.dump({"version": __version__, "node": node}, ctl.out, ensure_ascii=False)
        ctl.out.write("\n")
        return
    print(__version__, file=ctl.out)
    if node is not None:
        line = f"node {node['name']}: {node['product_name']} {node['product_version']}"
        if node["product_version"] != node["rabbitmq_version"]:
            line += f" (RabbitMQ {node['rabbitmq_version']})"
        print(line, file=ctl.out)


# ------------------------------------------------------------------ status


PURPOSES = {"amqp": "AMQP 0-9-1", "amqp/ssl": "AMQP 0-9-1 over TLS", "http": "HTTP API",
            "http/prometheus": "Prometheus exporter API over HTTP"}


def _gb(n: Any) -> str:
    """rabbitmqctl's "gb": 10^9 bytes, rounded to 4 decimals (0.05 gb, 81.5753 gb, 0.0 gb)."""
    return f"{round((n or 0) / 10 ** 9, 4)} gb"


@command("status", "Displays the node's status: version, uptime, listeners, totals, memory, alarms", "node")
def status(ctl: Ctl, args: list[str]) -> None:
    c = ctl.client
    overview = c.get("overview")
    node_name = overview.get("node", "")
    product = f"{overview.get('product_name', 'RabbitMQ')} {overview.get('product_version', '')}".strip()
    # which node and product answered: beside a RabbitMQ on 15672, the default port is its
    ctl.banner(f"Status of node {node_name} ({product}, management API at {c.base}) ...")
    nodes = c.get("nodes")
    node = next((n for n in nodes if n.get("name") == node_name), nodes[0] if nodes else {})
    vhosts = c.get("vhosts")
    totals = overview.get("object_totals", {})
    info = {
        "node_name": node_name,
        "management_api": c.base,
        "product_name": overview.get("product_name", "RabbitMQ"),
        "product_version": overview.get("product_version", overview.get("rabbitmq_version")),
        "rabbitmq_version": overview.get("rabbitmq_version"),
        "os_pid": node.get("os_pid"),
        "uptime": int(node.get("uptime", 0)) // 1000,
        "alarms": [a for a, on in (("memory", node.get("mem_alarm")), ("disk", node.get("disk_free_alarm"))) if on],
        "memory": {"used": node.get("mem_used"), "limit": node.get("mem_limit")},
        "file_descriptors": {"used": node.get("fd_used"), "total": node.get("fd_total")},
        "disk_free": {"free": node.get("disk_free"), "limit": node.get("disk_free_limit")},
        "totals": {
            "virtual_host_count": len(vhosts),
            "connection_count": totals.get("connections", 0),
            "channel_count": totals.get("channels", 0),
            "queue_count": totals.get("queues", 0),
            "exchange_count": totals.get("exchanges", 0),
            "consumer_count": totals.get("consumers", 0),
            "messages": overview.get("queue_totals", {}).get("messages", 0),
        },
        "listeners": [{"interface": lst.get("ip_address"), "port": lst.get("port"), "protocol": lst.get("protocol"),
                       "purpose": PURPOSES.get(lst.get("protocol", ""), lst.get("protocol", ""))}
                      for lst in overview.get("listeners", [])],
    }
    if ctl.json:
        json.dump(info, ctl.out, ensure_ascii=False)
        ctl.out.write("\n")
        return
    t = info["totals"]
    lines = [
        "Runtime", "",
        f"OS PID: {info['os_pid']}",
        f"Uptime (seconds): {info['uptime']}",
        f"RabbitMQ version: {info['rabbitmq_version']}",
        f"Product name: {info['product_name']}",
        f"Product version: {info['product_version']}",
        f"Node name: {node_name}",
        f"Management API: {c.base}",
        "", "Alarms", "",
        *([f"Resource alarm: {a}" for a in info["alarms"]] or ["(none)"]),
        "", "Memory", "",
        f"Total memory used: {_gb(node.get('mem_used'))}",
        f"Memory high watermark: {_gb(node.get('mem_limit'))}",
        "", "File Descriptors", "",
        f"Total: {node.get('fd_used')}, limit: {node.get('fd_total')}",
        "", "Free Disk Space", "",
        f"Low free disk space watermark: {_gb(node.get('disk_free_limit'))}",
        f"Free disk space: {_gb(node.get('disk_free'))}",
        "", "Totals", "",
        f"Virtual host count: {t['virtual_host_count']}",
        f"Connection count: {t['connection_count']}",
        f"Channel count: {t['channel_count']}",
        f"Queue count: {t['queue_count']}",
        f"Consumer count: {t['consumer_count']}",
        f"Message count: {t['messages']}",
        "", "Listeners", "",
        *[f"Interface: {lst['interface']}, port: {lst['port']}, protocol: {lst['protocol']}, purpose: {lst['purpose']}"
          for lst in info["listeners"]],
    ]
    print("\n".join(lines), file=ctl.out)


# ------------------------------------------------------------------ help

SECTIONS = ("node", "users", "access control", "vhosts", "queues", "policies", "connections", "definitions", "shovels")

GLOBAL_HELP = f"""Usage:
  {PROG} [options] <command> [<command options>] [<args>]

Talks to Leveret's (or RabbitMQ's) management HTTP API.

Options:
  -H, --host <host>           API host (default localhost)
  -P, --port <port>           API port (default 15672)
  -u, --username <user>       (default $LEVERET_CTL_USER, else guest)
      --password <password>   (default $LEVERET_CTL_PASSWORD, else guest)
      --scheme http|https     (default http); --cacert <file>, --insecure (-k) for https
  -p, --vhost <vhost>         the vhost of vhost-scoped commands (default /)
  -q, --quiet                 no informational lines
  -s, --silent                -q and --no-table-headers
      --formatter table|json  table: a header and tab-separated rows (default); json: an array of objects
      --no-table-headers      no header row
  -t, --timeout <seconds>     HTTP timeout (default 60)

Exit codes: 0 ok, 64 usage, 65 data error (e.g. no such vhost), 66 input file missing,
67 no such user, 69 node unreachable, 70 internal error, 73 output file not writable,
77 authentication failed.

Commands:"""


def print_help(out: TextIO, name: str | None = None) -> None:
    if name is not None:
        cmd = COMMANDS[name]
        print(f"Usage:\n  {PROG} {cmd.usage}\n\n{cmd.description}.", file=out)
        if cmd.items is not None:
            print(f"\nInfo items: {', '.join(cmd.items.names())}\nDefault: {' '.join(cmd.items.default)}", file=out)
        return
    print(GLOBAL_HELP, file=out)
    for section in SECTIONS:
        print(f"\n  {section.capitalize()}:", file=out)
        for cmd in COMMANDS.values():
            if cmd.section == section:
                print(f"    {cmd.name:<26}{cmd.description}", file=out)
    print(f"\n  Help:\n    {'help [<command>]':<26}Displays usage of a command, or this list", file=out)


# ---------------------------------------------------------------------- main


def run(argv: list[str], out: TextIO, err: TextIO) -> int:
    opts, rest = parse_args(argv)
    if opts.version:
        print(f"{PROG} {__version__}", file=out)
        return EX_OK
    if not rest:
        if opts.help:
            print_help(out)
            return EX_OK
        print_help(err)
        return EX_USAGE
    name, args = rest[0], rest[1:]
    if name == "help" or (opts.help and name in COMMANDS):
        topic = args[0] if name == "help" and args else (name if name != "help" else None)
        if topic is not None and topic not in COMMANDS:
            raise unknown_command(topic)
        print_help(out, topic)
        return EX_OK
    cmd = COMMANDS.get(name)
    if cmd is None:
        raise unknown_command(name)
    if len(args) < cmd.min_args:
        raise UsageError("not enough arguments.", cmd)
    if cmd.max_args is not None and len(args) > cmd.max_args:
        raise UsageError("too many arguments.", cmd)
    cmd.run(Ctl(opts, out, err), args)
    return EX_OK


def unknown_command(name: str) -> CtlError:
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    hint = f"\nDid you mean:\n  {close[0]}" if close else ""
    return CtlError(EX_USAGE, f"Command '{name}' not found.{hint}\nRun '{PROG} help' for the list of commands.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out, err = sys.stdout, sys.stderr
    try:
        return run(argv, out, err)
    except CtlError as exc:
        print(exc.message, file=err)
        return exc.code
    except ApiError as exc:
        print(api_failure(exc).message, file=err)
        return api_failure(exc).code
    except CertificateFailure as exc:
        print(f"Error: the TLS certificate of the management API at {exc} failed verification.\n"
              "Give the CA certificate that signed it with --cacert FILE (or skip verification "
              "with --insecure).", file=err)
        return EX_UNAVAILABLE
    except Unavailable as exc:
        print(f"Error: unable to perform an operation on the node: the management API at {exc} "
              "is not reachable.\nIs the broker running, with its HTTP API on that host and port "
              "(--host, --port)?", file=err)
        return EX_UNAVAILABLE
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK
    except KeyboardInterrupt:
        return 130


from leveret.ctl import policies as _policies  # noqa: E402,F401  (registers the policy commands)
from leveret.ctl import shovels as _shovels  # noqa: E402, F401  (registers the shovel commands)

if __name__ == "__main__":
    sys.exit(main())
