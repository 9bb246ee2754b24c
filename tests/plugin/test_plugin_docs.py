"""docs/testing.md shows every example test file of tests/plugin verbatim; and any document
(README.md, docs/*.md) that marks a code block ``<!-- example: tests/... -->`` shows that
file verbatim.  (tests/test_docs_code_blocks.py runs or checks every other code block.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "testing.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"<!-- example: (\S+) -->\n\n(?:`\1`:\n\n)?```python\n(.*?)```", re.S)


def test_every_example_in_the_guide_is_a_test_file_and_identical() -> None:
    doc = DOC.read_text()
    shown = {path: code for path, code in MARK.findall(doc)}
    files = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "plugin").glob("test_example_*.py")
    )
    assert sorted(shown) == files, "every tests/plugin/test_example_*.py must be in docs/testing.md"
    assert doc.count("<!-- example: ") == len(files)


def test_every_example_block_of_every_document_is_its_file_verbatim() -> None:
    for path in DOCS:
        text = path.read_text()
        found = MARK.findall(text)
        assert len(found) == text.count("<!-- example: "), f"{path.name}: an example marker without its block"
        for example, code in found:
            assert code == (ROOT / example).read_text(), f"{path.name} is out of date for {example}"
