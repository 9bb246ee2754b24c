"""The interop matrix (interop/run.py) as a test: every client library and framework against
a real Leveret subprocess.

The matrix runs once per session (in parallel, about half a minute).  A client whose
toolchain is missing (node, php, ruby, amqp-tools, a Python package) is skipped with the
reason -- except in CI (CI=true), where interop/install.sh has run and a missing toolchain
is a failure.  Cells listed in interop/known_failures.txt do not fail the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "interop" / "run.py"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# node, php, ruby, amqp-tools (and Python clients) in one run of about half a minute
pytestmark = [pytest.mark.timeout(600), pytest.mark.external, pytest.mark.slow]


def _load_runner() -> Any:
    spec = importlib.util.spec_from_file_location("interop_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["interop_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


CLIENTS = _load_runner().CLIENTS


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("interop") / "matrix.json"
    cmd = [sys.executable, str(RUN), "--json", str(out), "--jobs", "4"]
    if IN_CI:
        cmd.append("--require-all")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert out.exists(), f"run.py wrote no results:\n{proc.stdout}\n{proc.stderr}"
    data = json.loads(out.read_text())
    data["returncode"] = proc.returncode
    data["stdout"] = proc.stdout
    data["stderr"] = proc.stderr
    return data


def test_matrix_passes(matrix: dict[str, Any]) -> None:
    """run.py exits 0: nothing fails beyond interop/known_failures.txt."""
    assert matrix["returncode"] == 0, f"{matrix['stdout']}\n{matrix['stderr'][-3000:]}"


@pytest.mark.parametrize("client", [c.name for c in CLIENTS])
def test_client(matrix: dict[str, Any], client: str) -> None:
    result = matrix["clients"][client]
    if result["missing"]:
        if IN_CI:
            pytest.fail(f"{client}: toolchain missing in CI: {result['missing']} "
                        "(interop/install.sh should have installed it)")
        pytest.skip(f"{client}: {result['missing']} (interop/install.sh installs it)")
    failed = {name: cell["reason"] for name, cell in result["cells"].items()
              if cell["status"] == "fail"}
    assert not failed, f"{client} failed: {failed}\n--- output ---\n{result['output']}"
