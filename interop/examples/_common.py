"""Shared by the example programs: a broker URL, starting a Leveret when none is given.

    python interop/examples/work_queue.py                  # starts its own Leveret
    python interop/examples/work_queue.py --url amqp://guest:guest@127.0.0.1:5672/
    AMQP_URL=amqp://... python interop/examples/work_queue.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--url", default=os.environ.get("AMQP_URL"),
                   help="broker URL (default: start a Leveret subprocess on a free port)")
    return p


@contextlib.contextmanager
def broker(url: str | None) -> Iterator[str]:
    """Yield ``url``, or start ``python -m leveret`` on a free port and yield its URL."""
    if url:
        yield url
        return
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from leveret.testing import BrokerProcess

    with tempfile.TemporaryDirectory(prefix="leveret-example-") as data:
        help_text = subprocess.run([sys.executable, "-m", "leveret", "--help"], cwd=ROOT,
                                   capture_output=True, text=True).stdout
        args = ["--data-dir", data] if "--data-dir" in help_text else []
        with BrokerProcess(args=args) as b:
            yield b.url
