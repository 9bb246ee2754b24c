"""The example programs of interop/examples/ run end to end against their own Leveret.

Each starts ``python -m leveret`` on a free port itself, checks its outcome and exits 0.
Missing Python packages skip an example except in CI (CI=true).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "interop" / "examples"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

CASES = {
    "work_queue.py": ["pika"],
    "pubsub_fanout.py": ["pika"],
    "topic_routing.py": ["pika"],
    "push_vs_pull.py": ["pika"],
    "rpc.py": ["pika"],
    "spike_buffer.py": ["pika", "aio_pika"],
    "celery_flask/demo.py": ["celery", "flask", "PIL"],
}


# each example starts its own broker subprocess and runs for seconds
pytestmark = pytest.mark.slow
EXTERNAL = {"celery_flask/demo.py"}  # starts Celery worker processes


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "example", [pytest.param(name, marks=pytest.mark.external if name in EXTERNAL else ()) for name in CASES]
)
def test_example(example: str) -> None:
    missing = [m for m in CASES[example] if importlib.util.find_spec(m) is None]
    if missing:
        if IN_CI:
            pytest.fail(f"{example}: python packages missing in CI: {missing}")
        pytest.skip(f"{example}: python packages {missing} not installed "
                    "(pip install -r interop/requirements.txt)")
    env = {k: v for k, v in os.environ.items() if k != "AMQP_URL"}  # always its own broker
    proc = subprocess.run([sys.executable, str(EXAMPLES / example)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, f"{example} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert proc.stdout.rstrip().endswith("ok"), proc.stdout
