"""Listening sockets and their accept loop.

The event loops' own accept loops misbehave once the process runs out of file
descriptors: asyncio's selector loop logs every failed ``accept`` (up to a backlog's worth
per wake-up) and schedules as many retries; uvloop (libuv) silently accepts and closes
what waits in the backlog and, should that fail, closes the listening socket for good.
:class:`Listener` accepts connections itself (``add_reader`` + ``accept``, each socket
handed to ``loop.connect_accepted_socket``), the same way on both loops:

* Out of descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM), it closes a
  spare descriptor it keeps for this, accepts and at once closes every connection waiting
  in the backlog (so those clients fail now instead of hanging), and takes the spare back.
  If it cannot take it back, it stops accepting for ``RETRY_DELAY`` and tries again.
* It logs one error when such a burst starts and one warning when it is over (nothing
  refused for ``QUIET`` seconds), with how many connections were refused; a burst that
  lasts gets a reminder every ``REMIND_EVERY`` seconds, not a line per connection.
* The connections already open are not touched, and new ones are accepted as soon as
  descriptors are free again.

A listener given an ``ssl.SSLContext`` (the amqps listener) wraps each accepted socket
with it (``connect_accepted_socket(..., ssl=...)``); a TLS handshake that does not finish
within ``handshake_timeout`` seconds, or fails (a plain-TCP client, an untrusted or
expired client certificate, TLS older than the context allows), closes the socket.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

log = logging.getLogger("leveret")

RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BATCH = 256  # connections accepted per wake-up of a listening socket
REFUSE_BATCH = 4096  # connections refused per wake-up, out of descriptors
RETRY_DELAY = 0.1  # without a spare descriptor: seconds between accept attempts
QUIET = 1.0  # a burst is over after this many seconds without a refused connection
REMIND_EVERY = 60.0  # a burst that lasts is logged again this often


def fd_limit() -> int | None:
    """The process's soft RLIMIT_NOFILE (None where unknown).  (``resource`` is imported
    up front: an import needs a descriptor, which is what is missing when this is asked.)"""
    if resource is None:  # pragma: no cover - not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _peer(sock: socket.socket) -> str:
    try:
        addr = sock.getpeername()
    except OSError:
        return "?"
    return f"[{addr[0]}]:{addr[1]}" if sock.family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}"


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


class Listener:
    """Accepts connections on ``sockets`` (bound, listening, non-blocking) and gives each
    to a new protocol from ``factory``.  Duck-types what the broker used of
    ``asyncio.Server``: ``sockets``, :meth:`close`, :meth:`wait_closed`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.Protocol],
        sockets: list[socket.socket],
        open_connections: Callable[[], int] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.loop = loop
        self.factory = factory
        self.sockets = sockets
        self.ssl_context = ssl_context  # None: plain TCP
        self.handshake_timeout = handshake_timeout  # for the TLS handshake
        self.open_connections = open_connections  # for the log line: how many are open
        self._spare = _open_spare()
        self._closed = False
        self._reading = False
        self._retry: asyncio.TimerHandle | None = None
        self._burst_timer: asyncio.TimerHandle | None = None
        self._burst_start = 0.0
        self._burst_refused = 0
        self._last_refusal = 0.0
        self._last_log = 0.0
        self._pending: set[asyncio.Task[object]] = set()

    def start(self) -> None:
        if self._closed or self._reading:
            return
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._on_readable, sock)
        self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            for sock in self.sockets:
                self.loop.remove_reader(sock.fileno())
            self._reading = False

    def close(self) -> None:
        """Stop accepting and close the listening sockets (open connections stay)."""
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        for sock in self.sockets:
            sock.close()
        for handle in (self._retry, self._burst_timer):
            if handle is not None:
                handle.cancel()
        self._retry = None
        if self._burst_timer is not None:
            self._burst_timer = None
            self._log_burst_over()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        for task in self._pending:
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait for connections accepted before :meth:`close` to be set up or dropped."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # ------------------------------------------------------------------ accepting

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRORS:
                    self._out_of_descriptors(sock, exc)
                    return
                # ECONNABORTED and the network errors Linux passes on from the new
                # connection concern that connection only
                log.debug("accept on %s: %s", sock.getsockname(), exc)
                continue
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
        except OSError:  # pragma: no cover - the peer is already gone
            conn.close()
            return
        task = self.loop.create_task(self._connect(conn))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket) -> None:
        peer = ""
        try:
            if self.ssl_context is None:
                await self.loop.connect_accepted_socket(self.factory, conn)
            else:
                peer = _peer(conn)  # (for the log: the transport closes the socket on failure)
                await self.loop.connect_accepted_socket(
                    self.factory, conn, ssl=self.ssl_context, ssl_handshake_timeout=self.handshake_timeout
                )
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as exc:  # a failed TLS handshake; out of memory for the transport
            if self.ssl_context is not None and isinstance(exc, OSError):  # (ssl.SSLError too)
                # a plain-TCP client, an untrusted/expired/missing client certificate, an
                # old TLS version, or the handshake timeout: worth a line for whoever set it up
                log.info("TLS handshake failed with %s: %s", peer, exc)
            else:
                log.debug("could not set up an accepted connection: %s", exc)
            conn.close()

    # ------------------------------------------------------------------ out of descriptors

    def _out_of_descriptors(self, sock: socket.socket, exc: OSError) -> None:
        refused = 0
        if self._spare is not None:
            # free one descriptor, refuse with it everything that waits in the backlog
            os.close(self._spare)
            self._spare = None
            refused = self._refuse_backlog(sock)
            self._spare = _open_spare()
        self._note_refused(refused, exc)
        if self._spare is None:
            # no spare (another thread took the descriptor): leave the backlog waiting
            self._stop_reading()
            if self._retry is None:
                self._retry = self.loop.call_later(RETRY_DELAY, self._retry_accept)

    def _refuse_backlog(self, sock: socket.socket) -> int:
        n = 0
        for _ in range(REFUSE_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in RESOURCE_ERRORS:
                    break
                continue
            conn.close()
            n += 1
        return n

    def _retry_accept(self) -> None:
        self._retry = None
        if self._closed:
            return
        if self._spare is None:
            self._spare = _open_spare()
        self.start()

    def _note_refused(self, n: int, exc: OSError) -> None:
        now = self.loop.time()
        self._last_refusal = now
        if self._burst_timer is None:
            self._burst_start = self._last_log = now
            self._burst_refused = n
            self._burst_timer = self.loop.call_later(QUIET, self._check_burst)
            limit = fd_limit()
            held = None if self.open_connections is None else self.open_connections()
            log.error(
                "cannot accept connections: %s (%s client connections open, file descriptor "
                "limit %s); refusing new connections until descriptors are freed",
                exc.strerror or exc,
                "?" if held is None else held,
                "unknown" if limit is None else limit,
            )
            return
        self._burst_refused += n
        if now - self._last_log >= REMIND_EVERY:
            self._last_log = now
            log.error(
                "still cannot accept connections (%s): %d refused in the last %.0f s",
                exc.strerror or exc,
                self._burst_refused,
                now - self._burst_start,
            )

    def _check_burst(self) -> None:
        now = self.loop.time()
        if now - self._last_refusal < QUIET:
            self._burst_timer = self.loop.call_later(self._last_refusal + QUIET - now, self._check_burst)
            return
        self._burst_timer = None
        self._log_burst_over()

    def _log_burst_over(self) -> None:
        log.warning(
            "accepting connections again: %d refused in %.1f s for want of file descriptors",
            self._burst_refused,
            self._last_refusal - self._burst_start,
        )


PORT_ATTEMPTS = 20  # port 0 on several addresses: tries to find one port free on all of them

Address = tuple[int, int, int, tuple]  # family, type, proto, sockaddr


async def resolve(loop: asyncio.AbstractEventLoop, host: str | list[str] | None, port: int) -> list[Address]:
    """The addresses to listen on for ``host`` (one name or a list; None: all
    interfaces), each once."""
    hosts: list[str | None] = [host] if host is None or isinstance(host, str) else list(host)
    infos: list[Address] = []
    for h in hosts:
        for family, type_, proto, _canon, addr in await loop.getaddrinfo(
            h, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            info = (family, type_, proto, addr)
            if info not in infos:
                infos.append(info)
    return infos


def with_port(addr: tuple, port: int) -> tuple:
    return (addr[0], port, *addr[2:])


def _bind(family: int, type_: int, proto: int, addr: tuple, backlog: int) -> socket.socket:
    """A listening socket as ``loop.create_server`` makes them (SO_REUSEADDR, IPv6
    sockets v6-only)."""
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class PortsInUse(OSError):
    """Ports of the configuration already taken: every clash at once, each naming the
    setting (its command-line flag) to change."""

    def __init__(self, clashes: list[str]) -> None:
        self.clashes = clashes
        super().__init__(errno.EADDRINUSE, "; ".join(clashes))


async def check_ports(loop: asyncio.AbstractEventLoop, listeners: list[tuple[str, str | list[str] | None, int]]) -> None:
    """Before any listener opens: bind every address of every listener given a port
    (``(flag, host, port)``; port 0, a free one, cannot clash) and raise
    :class:`PortsInUse` naming each port in use (``port 5672 (--port) in use``), or given
    to two listeners on the same address.  The probes are closed again; errors other than
    "in use" are left to the listeners themselves (the default ::1 may be missing)."""
    held: dict[tuple, str] = {}  # sockaddr -> the flag whose probe holds it
    probes: list[socket.socket] = []
    clashes: list[str] = []
    try:
        for flag, host, port in listeners:
            if not port:
                continue
            why = ""
            for family, type_, proto, addr in await resolve(loop, host, port):
                try:
                    probes.append(_bind(family, type_, proto, addr, 1))
                    held[addr] = flag
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        why = why or (f"in use by {held[addr]}" if addr in held else "in use")
            if why:
                clashes.append(f"port {port} ({flag}) {why}")
    finally:
        for sock in probes:
            sock.close()
    if clashes:
        raise PortsInUse(clashes)


async def open_listener(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    host: str | list[str] | None,
    port: int,
    backlog: int = 1024,
    open_connections: Callable[[], int] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float = 10.0,
    sndbuf: int | None = None,
    recbuf: int | None = None,
) -> Listener:
    """Bind and listen on every address of ``host`` (one name or a list; None: all
    interfaces) at ``port``, as ``loop.create_server`` does (SO_REUSEADDR, IPv6 sockets
    v6-only, TCP_NODELAY inherited by accepted sockets), and start accepting (with TLS
    if ``ssl_context`` is given, the handshake bounded by ``handshake_timeout``).
    ``sndbuf``/``recbuf``: the kernel's send and receive buffer of every accepted socket
    (``SO_SNDBUF``/``SO_RCVBUF``, inherited from the listening socket, as RabbitMQ's
    ``tcp_listen_options.sndbuf``/``recbuf``; None: the kernel's autotuning).  Port 0
    is one free port for every address: the first address picks it, the others bind to
    the same number (all again on another one if it is taken there)."""
    infos = await resolve(loop, host, port)
    if not infos:
        raise OSError(errno.EADDRNOTAVAIL, f"no address to listen on for {host!r}")
    for attempt in range(PORT_ATTEMPTS):
        sockets: list[socket.socket] = []
        bound = port
        try:
            for family, type_, proto, addr in infos:
                try:
                    sock = _bind(family, type_, proto, with_port(addr, bound), backlog)
                except OSError as exc:
                    if port == 0 and sockets and exc.errno == errno.EADDRINUSE and attempt + 1 < PORT_ATTEMPTS:
                        raise _Retry from None
                    raise OSError(exc.errno, f"error while attempting to bind on address {with_port(addr, bound)!r}: "
                                             f"{exc.strerror}") from None
                sockets.append(sock)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if sndbuf is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
                if recbuf is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recbuf)
                sock.setblocking(False)
                bound = bound or sock.getsockname()[1]
        except _Retry:
            for sock in sockets:
                sock.close()
            continue
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        break
    listener = Listener(loop, factory, sockets, open_connections, ssl_context, handshake_timeout)
    listener.start()
    return listener


class _Retry(Exception):
    pass
