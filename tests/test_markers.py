"""The test markers: ``slow`` and ``external`` are registered (pyproject.toml) and pytest
runs with ``--strict-markers``, so a marker that is not registered fails the run instead
of silently selecting nothing (``-m "not slow"`` would keep a test marked ``slwo``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def ini_options() -> dict[str, object]:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]


def test_slow_and_external_are_registered_and_markers_are_strict(pytestconfig: pytest.Config) -> None:
    registered = {line.split(":", 1)[0].strip() for line in pytestconfig.getini("markers")}
    assert {"slow", "external"} <= registered
    assert "--strict-markers" in str(ini_options()["addopts"]).split()


def test_an_unregistered_marker_fails_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # the suite's own marker settings, in a project of their own (no plugins: quick)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    opts = ini_options()
    markers = "\n    ".join(str(m) for m in opts["markers"])  # type: ignore[attr-defined]
    pytester.makeini(f"[pytest]\naddopts = {opts['addopts']}\nmarkers =\n    {markers}\n")
    pytester.makepyfile(test_marked="""
        import pytest

        @pytest.mark.slow
        def test_registered():
            pass

        @pytest.mark.slwo
        def test_typo():
            pass
    """)
    result = pytester.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'slwo' not found in `markers` configuration option*"])
    assert "'slow' not found" not in result.stdout.str()
