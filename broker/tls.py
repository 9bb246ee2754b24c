"""TLS for the ``amqps`` listener: the server's :class:`ssl.SSLContext` and the user
name the ``EXTERNAL`` mechanism reads from a client certificate; and the context of the
HTTPS listeners (management API, Prometheus: :func:`http_context`), built the same way.

As RabbitMQ's ``ssl_options``: ``tls_verify_peer`` asks every client for a certificate
and checks the one it gives against ``tls_ca`` (handshake refused if it is untrusted or
expired); ``tls_fail_if_no_peer_cert`` also refuses clients that give none.  Without
``tls_verify_peer`` no certificate is asked for, and ``fail_if_no_peer_cert`` has no
effect (RabbitMQ's ``verify_none``).  TLS 1.2 is the oldest version accepted.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from leveret.broker.config import Config


class TLSConfigError(ValueError):
    """The TLS settings are incomplete or a file cannot be used."""


def _base_context(cert: str, key: str | None, cert_setting: str, key_setting: str, what: str) -> ssl.SSLContext:
    """TLS 1.2+ with the server's certificate chain and key; a file that cannot be read
    is named with the setting that gave it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for kind, setting, path in (("certificate", cert_setting, cert), ("key", key_setting, key)):
        if path is not None and not os.access(path, os.R_OK):
            reason = "no such file" if not os.path.exists(path) else "not readable"
            raise TLSConfigError(f"{what}: cannot load the TLS {kind} {path!r} ({setting}): {reason}")
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"{what}: cannot load the TLS certificate {cert!r} ({cert_setting}) / key {key!r} "
                             f"({key_setting}): {exc}") from None
    return ctx


def server_context(config: Config) -> ssl.SSLContext:
    """The SSLContext of the amqps listener, from ``config.tls_*``."""
    if not config.tls_cert:
        raise TLSConfigError("TLS needs a certificate: give --tls-cert (and --tls-key)")
    ctx = _base_context(config.tls_cert, config.tls_key, "tls_cert: [tls] cert, --tls-cert", "tls_key: [tls] key, --tls-key",
                        "amqps")
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


def http_settings(config: Config) -> tuple[str | None, str | None, str, str]:
    """(certificate, key, and the setting that gave each) of the HTTPS listeners:
    ``http_tls_cert`` / ``http_tls_key``, each defaulting to the amqps listener's
    ``tls_cert`` / ``tls_key`` (with ``http_tls_cert`` given, its key is ``http_tls_key``
    or in that file)."""
    cert: str | None
    if config.http_tls_cert:
        cert, cert_setting = config.http_tls_cert, "http_tls_cert: [http] tls_cert, --http-tls-cert"
    else:
        cert, cert_setting = config.tls_cert, "tls_cert: [tls] cert, --tls-cert"
    if config.http_tls_key or config.http_tls_cert:
        key, key_setting = config.http_tls_key, "http_tls_key: [http] tls_key, --http-tls-key"
    else:
        key, key_setting = config.tls_key, "tls_key: [tls] key, --tls-key"
    return cert, key, cert_setting, key_setting


def http_context(config: Config) -> ssl.SSLContext:
    """The SSLContext of the HTTPS listeners (the management API's ``http_tls_port``,
    Prometheus' ``prometheus_tls_port``), as RabbitMQ's ``management.ssl.*``: the server
    authenticates, clients are not asked for a certificate; see :func:`http_settings`."""
    cert, key, cert_setting, key_setting = http_settings(config)
    if not cert:
        raise TLSConfigError("HTTPS needs a certificate: give --http-tls-cert (or --tls-cert) and its key")
    return _base_context(cert, key, cert_setting, key_setting, "HTTPS (management API, Prometheus)")


def external_user(transport: Any) -> tuple[str | None, str]:
    """The user of an ``EXTERNAL`` login, as RabbitMQ's ``rabbit_auth_mechanism_ssl`` takes
    it: the subject CN of the verified client certificate (several CNs joined with ",", as
    ``ssl_cert_login_from = common_name`` does), and ``""``; or None and why the login is
    refused, in RabbitMQ's words: "no peer certificate", or "no name found" for a
    certificate whose subject has no CN."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None, "no peer certificate"
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    if not names:
        return None, "no name found"
    return ",".join(names), ""


def tls_details(transport: Any) -> tuple[str, str, str, str] | None:
    """The TLS session of an amqps connection as RabbitMQ's management API names it:
    (``ssl_protocol``, ``ssl_key_exchange``, ``ssl_cipher``, ``ssl_hash``), e.g.
    ("tlsv1.3", "any", "aes_256_gcm", "aead"), in Erlang's ``ssl`` names (OpenSSL's suite
    name translated); None when the transport is not TLS."""
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if obj is None:
        return None
    version = obj.version() or ""
    cipher = obj.cipher()
    kx, name, mac = _suite(cipher[0]) if cipher else ("", "", "")
    return version.lower(), kx, name, mac


def _suite(name: str) -> tuple[str, str, str]:
    """OpenSSL's cipher suite name -> Erlang's (key exchange, cipher, mac)."""
    if name.startswith("TLS_"):  # TLS 1.3: TLS_AES_256_GCM_SHA384 (the key exchange is not in it)
        return "any", "_".join(name[4:].lower().split("_")[:-1]), "aead"
    parts = name.split("-")  # TLS 1.2: ECDHE-RSA-AES256-GCM-SHA384, AES128-SHA ...
    kx = "rsa"
    if len(parts) > 2 and parts[0] in ("ECDHE", "DHE", "ECDH", "DH"):
        kx, parts = f"{parts[0]}_{parts[1]}".lower(), parts[2:]
    aead = any(p in ("GCM", "CCM", "POLY1305") for p in parts)
    if aead:
        parts = [p for p in parts if not p.startswith("SHA")]
        mac = "aead"
    else:
        mac, parts = parts[-1].lower(), [*parts[:-1], "CBC"]
    words = []
    for p in parts:
        low = p.lower()
        if low.startswith("aes") and low[3:].isdigit():
            words += ["aes", low[3:]]
        else:
            words.append(low)
    return kx, "_".join(words), mac
