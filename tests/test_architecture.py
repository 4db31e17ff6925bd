"""The import rules of ARCHITECTURE.md: the loop knows no method, methods know no loop or tracking,
networks know no methods, data knows no networks. A new import that breaks one fails here, naming it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "seal_exp"

NEVER = {
    "training": ("distillers", "tracking", "results", "teacher", "plan", "train"),
    "distillers": ("training", "run", "tracking", "results", "plan", "train"),
    "models": ("distillers", "training", "run", "tracking", "data"),
    "data": ("models", "distillers", "training", "run", "tracking"),
    "run": ("training", "teacher", "plan", "train"),
    "tracking.py": ("run", "training", "teacher", "plan", "train", "results", "models", "data", "distillers"),
    "results": ("train", "plan", "training", "teacher", "models", "distillers", "data"),
    "trained.py": ("train", "plan", "training", "teacher", "distillers", "data", "results"),
    "measures": ("distillers", "tracking", "results", "teacher", "plan", "train"),
}


def imported_parts(path: Path) -> set[str]:
    """The top-level parts of seal_exp (``training``, ``run``, …) that a file imports, anywhere in it."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            bits = name.split(".")
            if bits[0] == "seal_exp" and len(bits) > 1:
                parts.add(bits[1])
    return parts


@pytest.mark.parametrize("part", sorted(NEVER))
def test_no_part_imports_what_it_must_never(part):
    files = [PACKAGE / part] if part.endswith(".py") else sorted((PACKAGE / part).rglob("*.py"))
    assert files and all(f.is_file() for f in files), part
    never = set(NEVER[part])
    broken = [f"{f.relative_to(PACKAGE)} imports {p}" for f in files for p in imported_parts(f) & never]
    assert not broken, broken


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "x.py"
    source.write_text(
        "def f():\n    from seal_exp.distillers.seal import SeAl\n    import seal_exp.run.checkpoint\n"
    )
    assert imported_parts(source) == {"distillers", "run"}
