"""A minimal client of the management HTTP API (``/api``), on the standard library.

Each request is one ``urllib`` call with HTTP Basic auth; a JSON answer is decoded, an
error answer (4xx/5xx) becomes an :class:`ApiError` carrying RabbitMQ's ``{"error",
"reason"}``, and a node that cannot be reached (refused, timed out, name not resolved, TLS
failure) an :class:`Unavailable`.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote


class ApiError(Exception):
    """An HTTP error answer: ``status``, and RabbitMQ's ``error`` and ``reason``."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"{status} {error}: {reason}")
        self.status, self.error, self.reason = status, error, reason


class Unavailable(Exception):
    """The management API could not be reached."""


class CertificateFailure(Unavailable):
    """The https API's certificate could not be verified (``str``: the URL and why)."""


def path(*segments: str) -> str:
    """``/api/seg/seg...``, each segment percent-encoded on its own (vhost ``/`` is ``%2F``)."""
    return "/api/" + "/".join(quote(s, safe="") for s in segments)


class Client:
    def __init__(
        self,
        host: str = "localhost",
        port: int = 15672,
        username: str = "guest",
        password: str = "guest",
        scheme: str = "http",
        timeout: float = 60.0,
        cacert: str | None = None,
        insecure: bool = False,
    ) -> None:
        netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self.base = f"{scheme}://{netloc}:{port}"
        self.username = username
        self.timeout = timeout
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self.auth = f"Basic {token}"
        self.context: ssl.SSLContext | None = None
        if scheme == "https":
            self.context = ssl.create_default_context(cafile=cacert)
            if insecure:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    def request(
        self,
        method: str,
        url_path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw_body: bytes | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer, or None for an empty one."""
        data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + url_path, data=data, method=method)
        req.add_header("Authorization", self.auth)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            error, reason = exc.reason or "", ""
            try:
                doc = json.loads(raw)
                if isinstance(doc, dict):
                    error = str(doc.get("error", error))
                    reason = str(doc.get("reason", ""))
            except ValueError:
                reason = raw.decode("utf-8", "replace").strip()
            raise ApiError(exc.code, str(error), reason) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise CertificateFailure(f"{self.base}: {exc.reason.verify_message or exc.reason}") from None
            raise Unavailable(f"{self.base}: {exc.reason}") from None
        except ssl.SSLCertVerificationError as exc:
            raise CertificateFailure(f"{self.base}: {exc.verify_message or exc}") from None
        except (TimeoutError, socket.timeout) as exc:  # noqa: UP041 - socket.timeout is the 3.11 alias
            raise Unavailable(f"{self.base}: timed out ({exc})") from None
        except (ConnectionError, OSError) as exc:
            raise Unavailable(f"{self.base}: {exc}") from None
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise Unavailable(f"{self.base}{url_path}: the answer is not JSON (is this a management API?)") from None

    def get(self, *segments: str, query: str = "") -> Any:
        return self.request("GET", path(*segments) + (f"?{query}" if query else ""))

    def put(self, *segments: str, body: Any) -> Any:
        return self.request("PUT", path(*segments), body)

    def delete(self, *segments: str, headers: dict[str, str] | None = None) -> Any:
        return self.request("DELETE", path(*segments), headers=headers)

    def exists(self, *segments: str) -> bool:
        """Whether GET finds the object (False on 404; other errors are raised)."""
        try:
            self.get(*segments)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
