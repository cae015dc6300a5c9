"""The layering rule of ../shared/ARCHITECTURE.md, read from every import (lazy ones inside functions too).

From the ground up: data/, models/, evaluation/ import nothing from engine/, inference/, audit/, api or
cli; inference/ imports no training code (engine/); engine/ may use inference/ (validation runs the one
batch runner) but imports nothing from export/, plots/, audit/, the run report, api or cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "boxforge"
FORBIDDEN: dict[str, set[str]] = {
    "data": {"engine", "inference", "audit", "api", "cli"},
    "models": {"engine", "inference", "audit", "api", "cli"},
    "evaluation": {"engine", "inference", "audit", "api", "cli"},
    "inference": {"engine", "audit", "api", "cli"},
    "engine": {"export", "plots", "audit", "run_report", "api", "cli"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, the boxforge part imported: "engine", "api", ...) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "boxforge" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_above_itself(layer: str) -> None:
    broken = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, part in _imports(path):
            if part in FORBIDDEN[layer]:
                broken.append(f"{path.relative_to(PACKAGE)}:{line} imports boxforge.{part}")
    assert not broken, "layering rule broken:\n" + "\n".join(broken)


def test_the_rule_is_checked_on_real_files() -> None:
    """The walk sees imports at all (a guard against a test that passes by reading nothing)."""
    seen = {part for path in (PACKAGE / "engine").rglob("*.py") for _, part in _imports(path)}
    assert {"data", "inference", "checkpoint"} <= seen
