"""A small client of the management HTTP API for the tests (urllib, JSON, Basic auth)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any


class Api:
    def __init__(self, host: str, port: int, user: str = "guest", password: str = "guest") -> None:
        self.base = f"http://{host}:{port}/api"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             auth: str | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth != "":
            req.add_header("Authorization", auth or self.auth)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        return status, json.loads(text) if text else None

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body
