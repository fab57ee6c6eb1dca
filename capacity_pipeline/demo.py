"""The demo: an operator's day on the embedded default (SQLite for WhaleFall's tables and Dagster's).

It seeds synthetic samples (once a day: a rerun on the same day keeps them, a later day replaces
them so that they end today), then does what an operator does in the Dagster UI, through a real
`dagster dev` (webserver and daemon) over `<folder>/dagster_home`: observe the samples, run the
nightly job (`calculate_database`, the last complete periods) and the current-period job
(`capacity_aggregate_current`, today). The runs are the code location's own, launched through its
code server, so the UI can re-execute them and "View job" opens the job. Nothing is deleted: the
runs of earlier demos stay in Dagster and in the run center. `make dev` then serves the same files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg

from capacity_pipeline.defs.aggregation.assets import asset_key
from capacity_pipeline.defs.aggregation.jobs import NIGHTLY_OP_NAME
from capacity_pipeline.defs.partitions import key_for_window
from capacity_pipeline.defs.run_center.tags import CURRENT_JOB_NAME, NIGHTLY_JOB_NAME
from capacity_pipeline.domain.aggregation.top_growth import top_growth
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, china_today, last_window, window_containing
from capacity_pipeline.domain.samples.synthetic import (
    SyntheticSpec,
    clear_synthetic_data,
    load_synthetic_data,
    seeded_through,
)
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline.settings import Settings

DEMO_SPEC = {"instances": 12, "databases": 6, "days": 200, "seed": 7}
LOCATION = "capacity_pipeline"
OBSERVATION_JOBS = ("observe_capacity_samples", "observe_quarterly_baselines")
DEMO_TAG = "capacity/demo"  # the day of the demo that launched a run
_WORKSPACE = f"""# The demo's workspace: the same code location as the repository's workspace.yaml.
load_from:
  - python_module:
      module_name: capacity_pipeline.defs
      attribute: defs
      location_name: {LOCATION}
"""
_DAGSTER_YAML = """# The demo's Dagster instance (written by `capacity-pipeline demo`): SQLite storage under this
# folder (Dagster's default) and a run queue that starts two runs at a time: SQLite takes one writer
# at a time anyway, and a laptop is not a server.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
    dequeue_interval_seconds: 1
telemetry:
  enabled: false
"""
_FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


class DemoFailed(RuntimeError):
    """The demo's server or one of its runs did not do its part; the message says where to look."""


@dataclass(frozen=True)
class DemoPaths:
    folder: Path

    @property
    def database(self) -> Path:
        return self.folder / "whalefall-demo.db"

    @property
    def dagster_home(self) -> Path:
        return self.folder / "dagster_home"

    @property
    def workspace(self) -> Path:
        return self.folder / "workspace.yaml"

    @property
    def server_log(self) -> Path:
        return self.folder / "dagster-dev.log"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.database.resolve()}"


def run_demo(folder: Path, settings: Settings, *, say: Callable[[str], None] = lambda _: None) -> str:
    """The operator's day in `folder`; returns the text to print. `say` hears each step as it starts."""
    paths = DemoPaths(folder)
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    (paths.dagster_home / "dagster.yaml").write_text(_DAGSTER_YAML)
    paths.workspace.write_text(_WORKSPACE)
    today = china_today()
    say("seeding the samples")
    lines = [seed_demo(paths, today)]
    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        earlier = len(instance.get_run_records())
    kept = f"; {earlier} {'run' if earlier == 1 else 'runs'} from before kept" if earlier else ""
    lines += [f"Dagster instance: {paths.dagster_home} (SQLite storage{kept}).", ""]

    say("starting dagster dev (webserver and daemon) for the demo's runs")
    with _dagster_dev(paths, settings) as client:
        tags = {DEMO_TAG: today.isoformat()}
        # The samples are observed first, so that the aggregations record the versions they read.
        say(f"observing the samples: {', '.join(OBSERVATION_JOBS)}")
        _run_all(client, paths, [_Launch(job, tags) for job in OBSERVATION_JOBS])
        say(f"the nightly job ({NIGHTLY_JOB_NAME}: the last complete periods) and the current-period job "
            f"({CURRENT_JOB_NAME}: today)")  # fmt: skip
        nightly_config = {"ops": {NIGHTLY_OP_NAME: {"config": {"today": today.isoformat()}}}}
        today_key = key_for_window(window_containing(PeriodType.DAILY, today))
        nightly, current = _run_all(
            client,
            paths,
            [
                _Launch(NIGHTLY_JOB_NAME, tags, nightly_config),
                _Launch(CURRENT_JOB_NAME, {**tags, "dagster/partition": today_key}),
            ],
        )

    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        rows = [
            ("job", "period", "partition", "window", "compared with", "instances", "db rows", "inst rows", "checks")
        ]
        rows += _summary_rows(instance, nightly, NIGHTLY_JOB_NAME)
        rows += _summary_rows(instance, current, CURRENT_JOB_NAME)
    lines.append(_table(rows))
    engine = make_engine(paths.database_url)
    month = last_window(PeriodType.MONTHLY, today)
    for level in Level:
        lines.append(f"\n{level.value.capitalize()}s that grew most in {month}:")
        frame = top_growth(engine, level, PeriodType.MONTHLY.value, month.start, limit=5)
        lines.append(frame.to_string(index=False))
    engine.dispose()
    lines.append(
        f"\nOpen the Dagster UI on this data with: make dev  ({settings.webserver_url}); "
        "the runs above can be re-executed there."
    )
    return "\n".join(lines)


def seed_demo(paths: DemoPaths, today: date, demo_spec: Mapping[str, int] = DEMO_SPEC) -> str:
    """The demo's samples, ending today: kept when they already do, else (re)loaded. The run center
    is never touched."""
    engine = make_engine(paths.database_url)
    try:
        create_schema(engine)
        spec = SyntheticSpec(end_date=today, **demo_spec)
        last_day = seeded_through(engine)
        if last_day == today:
            return f"Kept {paths.database}: its samples already end today ({today}, Asia/Shanghai)."
        replaced = ""
        if last_day is not None:
            clear_synthetic_data(engine)
            replaced = f" (replacing samples that ended {last_day}; the run center's rows are kept)"
        counts = load_synthetic_data(engine, spec)
        return (
            f"Seeded {paths.database}: {counts.instances} instances, {counts.database_size_stats} database "
            f"samples and {counts.instance_size_stats} instance samples up to {today} (Asia/Shanghai){replaced}."
        )
    finally:
        engine.dispose()


@contextmanager
def _dagster_dev(paths: DemoPaths, settings: Settings) -> Iterator[Any]:
    """A `dagster dev` over the demo's instance, on a free port, in its own process group; yields a
    GraphQL client. Automation is off meanwhile: the operator decides what runs."""
    import socket

    from dagster_graphql import DagsterGraphQLClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(paths.dagster_home.resolve()),
        "WHALEFALL_DATABASE_URL": paths.database_url,
        "DAGSTER_WEBSERVER_URL": settings.webserver_url,  # where the run links point (make dev's UI)
        "CAPACITY_AUTOMATION": "off",
    }
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "dev", "-w", str(paths.workspace.resolve()), "-h", "127.0.0.1", "-p", str(port)]
    with paths.server_log.open("w") as log:
        server = subprocess.Popen(
            command,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_stop_signals,
        )
    try:
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        _wait_until_loaded(server, port, paths)
        yield client
    finally:
        _stop(server)


def _wait_until_loaded(server: subprocess.Popen, port: int, paths: DemoPaths, timeout: float = 180) -> None:
    """Until the webserver answers and the code location has loaded (the jobs can be launched)."""
    deadline = time.monotonic() + timeout
    query = b'{"query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"}'
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoFailed(f"dagster dev exited with {server.returncode}; see {paths.server_log}")
        with suppress(OSError):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/graphql", data=query, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                if b'"LOADED"' in response.read():
                    return
        time.sleep(0.5)
    raise DemoFailed(f"dagster dev did not load the code location within {timeout:.0f} s; see {paths.server_log}")


def _default_stop_signals() -> None:
    """In the child before exec: default SIGINT and SIGTERM, so `_stop` works even when the demo
    runs as a background job of a script (which starts with SIGINT ignored; dagster dev would keep
    ignoring it)."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


def _stop(server: subprocess.Popen) -> None:
    """SIGINT to the server's group (dagster dev stops its webserver, daemon and code servers), then
    SIGKILL to whatever lingers."""
    with suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        server.wait(timeout=30)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)


@dataclass(frozen=True)
class _Launch:
    job: str
    tags: dict[str, str]
    run_config: dict[str, Any] | None = None


def _run_all(client: Any, paths: DemoPaths, launches: list[_Launch], timeout: float = 300) -> list[str]:
    """Launch these jobs of the code location (through the queue), wait until every run succeeded;
    their run ids, in order."""
    run_ids = [
        client.submit_job_execution(
            launch.job, repository_location_name=LOCATION, run_config=launch.run_config, tags=launch.tags
        )
        for launch in launches
    ]
    deadline = time.monotonic() + timeout
    for launch, run_id in zip(launches, run_ids, strict=True):
        while (status := client.get_run_status(run_id)) not in _FINISHED:
            if time.monotonic() > deadline:
                raise DemoFailed(f"run {run_id} of {launch.job} did not finish within {timeout:.0f} s ({status.value})")
            time.sleep(0.5)
        if status is not dg.DagsterRunStatus.SUCCESS:
            raise DemoFailed(
                f"run {run_id} of {launch.job} ended {status.value}; see it with make dev or in {paths.server_log}"
            )
    return run_ids


def _summary_rows(instance: dg.DagsterInstance, run_id: str, job: str) -> list[tuple[str, ...]]:
    """One row per period the run wrote: its windows and counts as its materializations report them,
    and its checks' results on those partitions."""
    materialized: dict[tuple[PeriodType, Level], dict[str, Any]] = {}
    partitions: dict[PeriodType, str] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        for period in PeriodType:
            for level in Level:
                if materialization.asset_key == asset_key(level, period):
                    materialized[period, level] = {k: v.value for k, v in materialization.metadata.items()}
                    partitions[period] = materialization.partition
    checks: dict[PeriodType, list[bool]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.asset_check_evaluation_data
        for period in PeriodType:
            if evaluation.asset_key in {asset_key(level, period) for level in Level}:
                checks.setdefault(period, []).append(evaluation.passed)
    rows = []
    for period in PeriodType:
        if period not in partitions:
            continue
        database, instance_level = materialized[period, Level.DATABASE], materialized[period, Level.INSTANCE]
        results = checks.get(period, [])
        rows.append(
            (
                job,
                period.value,
                partitions[period],
                instance_level["window"],
                instance_level["previous_window"],
                f"{instance_level['instances_processed']} ok, {instance_level['instances_failed']} failed",
                str(database["rows_written"]),
                str(instance_level["rows_written"]),
                f"{sum(results)}/{len(results)} passed",
            )
        )
    return rows


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)
