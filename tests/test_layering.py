"""Imports flow one way: losses/ imports only torch; data/ imports no model code; nothing imports
cli/ (DESIGN.md section 1)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "simple_rlhf"


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_losses_import_only_torch_and_losses():
    allowed = (
        "torch",
        "math",
        "dataclasses",
        "collections",
        "typing",
        "__future__",
        "simple_rlhf.losses",
    )
    for f in (SRC / "losses").glob("*.py"):
        bad = [m for m in imports(f) if not m.startswith(allowed)]
        assert not bad, f"{f.name} imports {bad}"


def test_data_imports_no_model_code():
    for f in (SRC / "data").glob("*.py"):
        bad = [
            m
            for m in imports(f)
            if m.startswith(("simple_rlhf.models", "simple_rlhf.trainers", "simple_rlhf.rollout"))
        ]
        assert not bad, f"{f.name} imports {bad}"


def test_nothing_imports_cli():
    for f in SRC.rglob("*.py"):
        if f.parent.name == "cli" or f.name == "__main__.py":
            continue
        bad = [m for m in imports(f) if m.startswith("simple_rlhf.cli")]
        assert not bad, f"{f.relative_to(SRC)} imports {bad}"
