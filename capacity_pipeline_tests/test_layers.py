"""The house's rules, read from the source: dependencies point one way, public Dagster names only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from capacity_pipeline_tests.support import REPO

PACKAGE = REPO / "capacity_pipeline"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names, as written)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(PACKAGE), ids=lambda p: str(p.relative_to(REPO)))
def test_only_public_dagster_names_are_imported(path):
    private = {name for name in _imports(path) if name.startswith("dagster") and "._" in name}
    assert not private, f"{path.relative_to(REPO)} imports private Dagster modules: {sorted(private)}"


@pytest.mark.parametrize("path", _sources(PACKAGE / "domain"), ids=lambda p: str(p.relative_to(REPO)))
def test_the_domain_knows_neither_dagster_nor_flask_nor_the_edges(path):
    edges = ("dagster", "flask", "werkzeug", "waitress", "capacity_pipeline.defs", "capacity_pipeline.api")
    found = {name for name in _imports(path) if name.split(".")[0] in edges or name.startswith(edges)}
    assert not found, f"{path.relative_to(REPO)} imports {sorted(found)}"


def test_the_domain_folders_depend_one_way():
    """forecast, run_center -> aggregation -> samples -> storage -> the shared vocabulary, never back."""
    order = ["storage", "samples", "aggregation", "run_center", "forecast"]
    for path in _sources(PACKAGE / "domain"):
        folder = path.relative_to(PACKAGE / "domain").parts[0]
        if folder not in order:
            continue
        allowed = set(order[: order.index(folder) + 1])
        for name in _imports(path):
            parts = name.split(".")
            if parts[:2] == ["capacity_pipeline", "domain"] and len(parts) > 3 and parts[2] in order:
                assert parts[2] in allowed, f"{path.relative_to(REPO)} ({folder}) imports {name}"
