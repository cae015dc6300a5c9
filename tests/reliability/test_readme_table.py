"""README's "Reliability" table stays true: it names every test in tests/reliability, and only real ones."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

HERE = Path(__file__).resolve().parent


def _tests_here() -> set[str]:
    found = set()
    for path in sorted(HERE.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found |= {f"{path.name}::{node.name}" for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    return found


def test_the_reliability_table_names_exactly_the_tests_in_this_folder():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Reliability\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+\.py::test_\w+)`", section))
    here = _tests_here() - {"test_readme_table.py::test_the_reliability_table_names_exactly_the_tests_in_this_folder"}
    assert not named - here, f"the README names tests that do not exist: {sorted(named - here)}"
    assert not here - named, f"tests missing from the README's Reliability table: {sorted(here - named)}"
