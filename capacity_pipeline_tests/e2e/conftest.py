"""A real `dagster dev` (webserver and daemon) on a free port, with PostgreSQL storage in a
throwaway database and the production dagster.yaml, in its own process group."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import make_url, text

from capacity_pipeline_tests.conftest import ADMIN_URL, _admin_engine

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
STARTUP_SECONDS = 120


@dataclass
class DagsterDev:
    port: int
    log: Path
    home: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def instance(self):  # noqa: ANN201 - a DagsterInstance context manager
        """The same Dagster instance (PostgreSQL storage), opened from this test process."""
        import dagster as dg

        os.environ["DAGSTER_POSTGRES_URL"] = self.env["DAGSTER_POSTGRES_URL"]
        return dg.DagsterInstance.from_config(str(self.home))


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"dagster dev did not answer within {STARTUP_SECONDS} s:\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGINT to the whole group (dagster dev's own shutdown), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def dagster_dev(request, tmp_path, postgres_url, monkeypatch) -> Iterator[DagsterDev]:
    """`@pytest.mark.dagster_env(NAME="value")` adds variables to the server's environment."""
    monkeypatch.delenv("DAGSTER_POSTGRES_URL", raising=False)
    marker = request.node.get_closest_marker("dagster_env")
    storage = f"capacity_e2e_{uuid.uuid4().hex[:10]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{storage}"'))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port, log = _free_port(), tmp_path / "dagster-dev.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": make_url(ADMIN_URL)
        .set(drivername="postgresql+psycopg2", database=storage)
        .render_as_string(hide_password=False),
        "WHALEFALL_DATABASE_URL": postgres_url,
        **(marker.kwargs if marker else {}),
    }
    dagster = Path(sys.executable).parent / "dagster"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_serving(process, f"http://127.0.0.1:{port}", log)
        yield DagsterDev(port=port, log=log, home=home, env=env)
    finally:
        _stop(process)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{storage}" WITH (FORCE)'))
        admin.dispose()
