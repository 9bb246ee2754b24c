"""TLS for the ``amqps`` listener: the server's :class:`ssl.SSLContext` and the user
name the ``EXTERNAL`` mechanism reads from a client certificate.

As RabbitMQ's ``ssl_options``: ``tls_verify_peer`` asks every client for a certificate
and checks the one it gives against ``tls_ca`` (handshake refused if it is untrusted or
expired); ``tls_fail_if_no_peer_cert`` also refuses clients that give none.  Without
``tls_verify_peer`` no certificate is asked for, and ``fail_if_no_peer_cert`` has no
effect (RabbitMQ's ``verify_none``).  TLS 1.2 is the oldest version accepted.
"""

from __future__ import annotations

import ssl
from typing import Any

from leveret.broker.config import Config


class TLSConfigError(ValueError):
    """The TLS settings are incomplete or a file cannot be used."""


def server_context(config: Config) -> ssl.SSLContext:
    """The SSLContext of the amqps listener, from ``config.tls_*``."""
    if not config.tls_cert:
        raise TLSConfigError("TLS needs a certificate: give --tls-cert (and --tls-key)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the TLS certificate {config.tls_cert!r} / key {config.tls_key!r}: {exc}") from None
    if config.tls_verify_peer:
        try:
            if config.tls_ca:
                ctx.load_verify_locations(cafile=config.tls_ca)
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"cannot load the TLS CA file {config.tls_ca!r}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if config.tls_fail_if_no_peer_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_common_name(transport: Any) -> str | None:
    """The subject CN of the verified client certificate of a TLS transport (several
    CNs joined with ",", as RabbitMQ's ``ssl_cert_login_from = common_name`` does), or
    None: no TLS, no certificate, or a certificate without a CN."""
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return ",".join(names) if names else None
