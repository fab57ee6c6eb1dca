"""The house's rules, read from the source: dependencies point one way, public Dagster names only, and
the HTTP API needs only the base install (no Dagster, no pandas)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
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


# -- the API-only install -----------------------------------------------------------------------

# What the base install (pyproject's dependencies, no extra) provides, by import name; werkzeug and
# wtforms come with flask and flask-wtf.
BASE_INSTALL = {
    "sqlalchemy", "psycopg", "flask", "flask_login", "flask_wtf", "werkzeug", "wtforms", "waitress", "tqdm", "numpy",
}  # fmt: skip
PIPELINE_ONLY = {"dagster", "dagster_webserver", "dagster_postgres", "dagster_graphql", "pandas"}


def _runtime_imports(path: Path) -> set[str]:
    """Every module a file may import when it runs: top level and inside functions, without the
    `if TYPE_CHECKING:` blocks (never executed)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from capacity_pipeline.x import y` may import the module capacity_pipeline.x.y
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_path(name: str) -> Path | None:
    relative = Path(*name.split("."))
    for candidate in (REPO / relative.with_suffix(".py"), REPO / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _reachable_from(roots: list[str]) -> tuple[set[str], set[str]]:
    """(our modules, other top-level packages) that importing `roots` can load, transitively."""
    ours, others, todo = set(), set(), list(roots)
    while todo:
        name = todo.pop()
        if name in ours:
            continue
        path = _module_path(name)
        if path is None:  # an attribute imported from one of our modules, not a module
            continue
        ours.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the packages' __init__ run first
        for imported in _runtime_imports(path):
            if imported.split(".")[0] == "capacity_pipeline":
                todo.append(imported)
            else:
                others.add(imported.split(".")[0])
    return ours, others


def test_the_api_and_what_it_imports_need_only_the_base_install():
    """WhaleFall's web process mounts the blueprint from an install without the pipeline extra."""
    api = [f"capacity_pipeline.api.{path.stem}" for path in _sources(PACKAGE / "api") if path.stem != "__init__"]
    ours, others = _reachable_from(api)

    assert "capacity_pipeline.api.blueprint" in ours and "capacity_pipeline.domain.run_center.task_runs" in ours
    assert not {name for name in ours if name.startswith("capacity_pipeline.defs")}, sorted(ours)
    assert others & PIPELINE_ONLY == set()
    assert others - sys.stdlib_module_names <= BASE_INSTALL, sorted(others - sys.stdlib_module_names)


def test_the_base_install_holds_no_pipeline_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[\[<>=!~ ]", requirement)[0].replace("-", "_") for requirement in project["dependencies"]}
    assert base & PIPELINE_ONLY == set()
    assert base <= BASE_INSTALL
    pipeline = {re.split(r"[\[<>=!~ ]", r)[0].replace("-", "_") for r in project["optional-dependencies"]["pipeline"]}
    assert {"dagster", "pandas"} <= pipeline


def test_the_api_serves_in_a_process_where_dagster_and_pandas_cannot_be_imported(tmp_path):
    """The same at run time: the standalone app answers /api/v1/health with the pipeline's packages
    made unimportable, as in an install without the extra."""
    program = f"""
import importlib.abc, sys
class NoPipeline(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(PIPELINE_ONLY)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the base install)", name=name)
sys.meta_path.insert(0, NoPipeline())
from capacity_pipeline.api.auth import BearerTokenAuth, Caller
from capacity_pipeline.api.server import create_app
from capacity_pipeline.domain.run_center.sensor_heartbeats import record_trigger_sensor_tick
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
engine = make_engine("sqlite:///{tmp_path / "whalefall.db"}")
create_schema(engine)
record_trigger_sensor_tick(engine, 2)  # as the daemon's sensor does: health is 200, not degraded
app = create_app(engine, BearerTokenAuth({{"token": Caller(1, "admin")}}))
response = app.test_client().get("/api/v1/health")
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {sorted(PIPELINE_ONLY)!r})
print(response.status_code, loaded)
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200 []"
