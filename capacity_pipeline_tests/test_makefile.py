"""The Makefile's targets pass what they promise to the commands they run."""

from __future__ import annotations

import os
import shutil
import subprocess

from capacity_pipeline_tests.support import REPO


def _recorder(path, name: str, log) -> None:  # noqa: ANN001
    """A stand-in for a command that records its arguments and DAGSTER_WEBSERVER_URL, then exits."""
    script = path / name
    script.write_text(f'#!/bin/sh\necho "{name} $* url=$DAGSTER_WEBSERVER_URL" >> {log}\n')
    script.chmod(0o755)


def _make(tmp_path, *arguments: str, **environ: str) -> list[str]:  # noqa: ANN001
    """`make dev ...` in an empty folder whose .venv holds recorders instead of the real commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "commands.log"
    for name in ("capacity-pipeline", "dagster"):
        _recorder(bin_dir, name, log)
    (tmp_path / "pyproject.toml").write_text("")
    installed = bin_dir / ".installed"
    installed.write_text("")  # newer than pyproject.toml: nothing to install
    environment = {key: value for key, value in os.environ.items() if key != "DAGSTER_WEBSERVER_URL"}
    subprocess.run(
        [shutil.which("make"), "-s", "-f", str(REPO / "Makefile"), "-C", str(tmp_path), *arguments,
         f"BIN={bin_dir}", f"INSTALLED={installed}"],
        env={**environment, **environ},
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return log.read_text().splitlines()


def test_make_dev_on_another_port_links_the_runs_to_that_port(tmp_path):
    commands = _make(tmp_path, "dev", "DEV_PORT=3111")

    assert commands[0] == "capacity-pipeline demo url=http://127.0.0.1:3111"  # no demo yet: it runs first
    assert commands[1].startswith("dagster dev -w workspace.yaml -h 127.0.0.1 -p 3111 ")
    assert commands[1].endswith(" url=http://127.0.0.1:3111")


def test_an_explicit_webserver_url_wins_over_the_port(tmp_path):
    commands = _make(tmp_path, "dev", "DEV_PORT=3111", DAGSTER_WEBSERVER_URL="https://dagster.example")

    assert all(command.endswith(" url=https://dagster.example") for command in commands)
