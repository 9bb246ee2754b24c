"""docs/testing.md shows every example test file of tests/plugin verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "testing.md"
MARK = re.compile(r"<!-- example: (\S+) -->\n\n`\1`:\n\n```python\n(.*?)```", re.S)


def test_every_example_in_the_guide_is_a_test_file_and_identical() -> None:
    doc = DOC.read_text()
    shown = {path: code for path, code in MARK.findall(doc)}
    files = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "plugin").glob("test_example_*.py")
    )
    assert sorted(shown) == files, "every tests/plugin/test_example_*.py must be in docs/testing.md"
    for path, code in shown.items():
        assert code == (ROOT / path).read_text(), f"docs/testing.md is out of date for {path}"
    assert doc.count("<!-- example: ") == len(files)
