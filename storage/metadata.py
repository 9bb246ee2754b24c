"""MetadataStore: durable definitions (exchanges, queues, bindings...) as one JSON file.

save() is atomic: write ``path.tmp`` and fsync it, keep the current file as ``path.bak``,
rename the tmp file over ``path`` and fsync the directory. load() falls back to the .bak
copy when ``path`` is corrupt (the corrupt file is moved aside to ``path.corrupt`` so the
next save() cannot rotate it into .bak) or missing after a crash between the two renames.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .log import _fsync_dir

log = logging.getLogger(__name__)


class MetadataStore:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self.bak = self.path + ".bak"

    @staticmethod
    def _read(path: str) -> dict[str, Any]:
        with open(path, "rb") as f:
            data = json.loads(f.read())
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return data

    def load(self) -> dict[str, Any]:
        """The saved dict; {} if nothing was ever saved. Never raises for bad content."""
        try:
            return self._read(self.path)
        except FileNotFoundError:
            if not os.path.exists(self.bak):
                return {}
            log.warning("%s missing, using %s", self.path, self.bak)
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeError are ValueErrors
            log.error("%s is corrupt (%s); moved to .corrupt, trying %s", self.path, e, self.bak)
            try:
                os.replace(self.path, self.path + ".corrupt")
            except OSError:
                pass
        try:
            return self._read(self.bak)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("%s is corrupt too (%s); starting with no definitions", self.bak, e)
            return {}

    def save(self, data: dict[str, Any]) -> None:
        """Atomically and durably replace the stored dict (must be JSON-serialisable)."""
        blob = json.dumps(data, separators=(",", ":")).encode()
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(self.path):
            os.replace(self.path, self.bak)
        os.replace(tmp, self.path)
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
