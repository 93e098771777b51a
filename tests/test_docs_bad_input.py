"""docs/bad-input.md names the test behind every row (its last column); each named test must exist.

A renamed or deleted test would otherwise leave the page promising a check nobody runs. Names are
``path::test`` (a path under tests/ and a function in it), ``::test`` (same file as the previous
name in the row) or a whole file; a ``*`` in a name matches a prefix.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-input.md"
REF = re.compile(r"`((?:[\w/]+\.py)?)(?:::([\w*]+))?(?:\[[^\]]*\])?`")


def _references() -> list[tuple[str, str | None]]:
    refs: list[tuple[str, str | None]] = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c for c in line.split("|") if c.strip()]
        current: str | None = None
        for path, name in REF.findall(cells[-1]):  # the Test column
            if path:
                current = path
            if current is None or not (path or name):
                continue
            refs.append((current, name or None))
    return refs


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


REFS = _references()


def test_the_page_names_many_tests() -> None:
    assert len(REFS) > 60


@pytest.mark.parametrize(("path", "name"), REFS, ids=[f"{p}::{n}" for p, n in REFS])
def test_named_test_exists(path: str, name: str | None) -> None:
    file = ROOT / "tests" / path
    assert file.is_file(), f"docs/bad-input.md names {path}, which does not exist"
    if name is None:
        return
    names = _test_names(file)
    if name.endswith("*"):
        assert any(n.startswith(name[:-1]) for n in names), f"no test {name} in {path}"
    else:
        assert name in names, f"docs/bad-input.md names {path}::{name}, which does not exist"
