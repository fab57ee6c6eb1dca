"""The test toolkit: real databases, real Dagster, real processes, and the helpers every test shares.

Fixtures live in the conftest files and are built from these pieces; tests import helpers from
here, never from a conftest or from another test module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
from sqlalchemy import Engine, create_engine, func, insert, make_url, select, text

from capacity_pipeline.defs.aggregation.assets import build_aggregation_assets
from capacity_pipeline.defs.definitions import build_defs
from capacity_pipeline.defs.forecast.assets import build_forecast_assets
from capacity_pipeline.defs.partitions import partitions_by_period
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center.tags import CLAIM_TAG
from capacity_pipeline.domain.model import Level, TaskStatus
from capacity_pipeline.domain.periods import PeriodType, months_between, windows_fed_by
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.payloads import PhaseResult
from capacity_pipeline.domain.run_center.task_runs import ItemPhase, RunCenter, TaskRunSpec
from capacity_pipeline.domain.storage.month_partitions import ensure_month_partitions
from capacity_pipeline.domain.storage.tables import tables_for
from capacity_pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("CAPACITY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")
_TABLES = (
    "capacity_sample_versions",
    "capacity_sample_observations",
    "capacity_sample_changes",
    "capacity_window_marks",
    "capacity_forecasts",
    "capacity_limits",
    "capacity_sensor_heartbeats",
    "capacity_task_run_links",
    "task_run_items",
    "task_runs",
    "database_size_aggregations",
    "instance_size_aggregations",
    "database_size_stats",
    "instance_size_stats",
    "instances",
)


# -- databases --------------------------------------------------------------------------------------


def admin_engine() -> Engine:
    """The PostgreSQL server's maintenance database, for creating and dropping test databases."""
    url = make_url(ADMIN_URL).set(drivername="postgresql+psycopg")
    return create_engine(url, isolation_level="AUTOCOMMIT")


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for the block; its name is yielded, and it is dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = admin_engine()
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def database_url(name: str, driver: str = "postgresql+psycopg") -> str:
    return make_url(ADMIN_URL).set(drivername=driver, database=name).render_as_string(hide_password=False)


def empty_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE"))


class WhaleFallData:
    """Writes WhaleFall rows the way its collector would, and reads tables back typed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tables = tables_for(engine).tables

    def instance(self, instance_id: int, name: str | None = None, *, active: bool = True, deleted: bool = False) -> int:
        with self.engine.begin() as connection:
            connection.execute(
                insert(self.tables["instances"]),
                {
                    "id": instance_id,
                    "name": name or f"instance-{instance_id}",
                    "db_type": "mysql",
                    "is_active": active,
                    "deleted_at": datetime(2026, 1, 1, tzinfo=UTC) if deleted else None,
                },
            )
        return instance_id

    def database_stats(
        self,
        instance_id: int,
        database_name: str,
        samples: list[tuple[date, int, int | None]],
        log_size_mb: int | None = None,
    ) -> None:
        """samples: (collected_date, size_mb, data_size_mb)."""
        self._partitions("database_size_stats", [day for day, *_ in samples])
        rows = [
            {
                "instance_id": instance_id,
                "database_name": database_name,
                "size_mb": size,
                "data_size_mb": data,
                "log_size_mb": log_size_mb,
                "collected_date": day,
            }
            for day, size, data in samples
        ]
        with self.engine.begin() as connection:
            connection.execute(insert(self.tables["database_size_stats"]), rows)

    def instance_stats(
        self, instance_id: int, samples: list[tuple[date, int, int]], *, is_deleted: bool = False
    ) -> None:
        """samples: (collected_date, total_size_mb, database_count)."""
        self._partitions("instance_size_stats", [day for day, *_ in samples])
        rows = [
            {
                "instance_id": instance_id,
                "total_size_mb": total,
                "database_count": count,
                "collected_date": day,
                "is_deleted": is_deleted,
            }
            for day, total, count in samples
        ]
        with self.engine.begin() as connection:
            connection.execute(insert(self.tables["instance_size_stats"]), rows)

    def _partitions(self, table: str, days: list[date]) -> None:
        if days:
            ensure_month_partitions(self.engine, [table], months_between(min(days), max(days)))

    def rows(self, table: str, order_by: str = "instance_id") -> list[dict]:
        """The table's rows with typed values (dates, Decimals) on both dialects."""
        query = select(self.tables[table]).order_by(text(order_by))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]


@contextmanager
def row_trigger(engine: Engine, table: str, condition: str, *, event: str = "INSERT", error: str | None = None):
    """A real trigger for the length of the block, on rows of `table` where `condition` (SQL over
    NEW, valid on both dialects) holds: it raises `error`, or without one silently skips the row."""
    name = f"test_trigger_{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            effect = f"RAISE(ABORT, '{error}')" if error else "RAISE(IGNORE)"
            connection.exec_driver_sql(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {condition} BEGIN SELECT {effect}; END"
            )
        else:
            effect = f"RAISE EXCEPTION '{error}'" if error else "RETURN NULL"
            connection.exec_driver_sql(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {condition} THEN {effect}; END IF; RETURN NEW; END $$"
            )
            connection.exec_driver_sql(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"
            )
    try:
        yield
    finally:
        with engine.begin() as connection:
            if engine.dialect.name == "sqlite":
                connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
            else:
                connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                connection.exec_driver_sql(f"DROP FUNCTION IF EXISTS {name}()")


# -- run-center rows --------------------------------------------------------------------------------

TASK_RUN_ID = "11111111-1111-4111-8111-111111111111"
OTHER_TASK_RUN_ID = "22222222-2222-4222-8222-222222222222"
TASK_RUN_SUMMARY = {
    "version": 1,
    "common": {"inputs": {"scope": "all"}, "metrics": [], "flags": {"skipped": False, "skip_reason": None}},
    "ext": {"type": "capacity_aggregate_current", "version": 1, "data": {"scope": "all", "说明": "容量"}},
}
PHASE_METRICS = {"records": 2, "status": "completed"}
PHASE_DETAILS = {"message": "实例 a 的 daily 实例聚合完成 (处理 2 条记录)"}


def task_run_spec(**overrides: Any) -> TaskRunSpec:
    """A current-period TaskRunSpec (compat 6.2), with any column overridden."""
    values: dict[str, Any] = {
        "task_key": "capacity_aggregate_current",
        "task_name": "容量统计(当前周期)",
        "trigger_source": "manual",
        "summary_json": TASK_RUN_SUMMARY,
    }
    return TaskRunSpec(**{**values, **overrides})


def completed_phase(
    instance_id: int, metrics: Any = PHASE_METRICS, details: Any = PHASE_DETAILS, phase: str = "instance"
) -> ItemPhase:
    """One instance's completed phase result, as a batch records it."""

    return ItemPhase(instance_id, phase, PhaseResult(TaskStatus.COMPLETED, metrics, details))


def failed_phase(
    instance_id: int, message: str = "实例聚合失败", details: Any = None, phase: str = "instance"
) -> ItemPhase:
    """One instance's failed phase result, as a batch records it."""

    return ItemPhase(instance_id, phase, PhaseResult(TaskStatus.FAILED, None, details or {"error": message}, message))


def stored_utc(engine: Engine, value: datetime) -> datetime:
    """A stored timestamp as an aware UTC datetime; PostgreSQL's must carry an offset, SQLite keeps
    the UTC wall clock without one."""
    if engine.dialect.name == "postgresql":
        assert value.tzinfo is not None
        return value.astimezone(UTC)
    assert value.tzinfo is None
    return value.replace(tzinfo=UTC)


class SteppingClock:
    """A clock to hand the run center (`RunCenter(engine, clock)`, `settle(..., clock=)`): real time
    that moves at least 1 ms at every reading, so successive writes get distinct timestamps without
    a test having to sleep."""

    def __init__(self) -> None:
        self.current = datetime.now(UTC)

    def __call__(self, _connection: object = None) -> datetime:
        self.current = max(datetime.now(UTC), self.current + timedelta(milliseconds=1))
        return self.current

    def now(self) -> datetime:
        """Not before any time this clock has given (nor before the real time)."""
        return max(datetime.now(UTC), self.current)


def whalefall_cancel(engine: Engine, run_id: str) -> bool:
    """What WhaleFall's own cancel endpoint does (compat 6.1 cancel_run, 7.3), written here
    independently of the pipeline: a `running` run becomes cancelled (run row first, then its
    items) and its counters are left as they were. True if it was cancelled."""
    tables = tables_for(engine).tables
    runs, items = tables["task_runs"], tables["task_run_items"]
    now = datetime.now(UTC)
    with engine.begin() as connection:
        query = select(runs.c.status).where(runs.c.run_id == run_id)
        status = connection.execute(query.with_for_update() if engine.dialect.name != "sqlite" else query).scalar()
        if status != "running":
            return False
        connection.execute(
            runs.update().where(runs.c.run_id == run_id).values(status="cancelled", completed_at=now, updated_at=now)
        )
        connection.execute(
            items.update()
            .where(items.c.run_id == run_id, items.c.status.in_(("pending", "running")))
            .values(status="cancelled", completed_at=now, updated_at=now)
        )
    return True


# -- a PostgreSQL server of the tests' own --------------------------------------------------------

PG_BIN = Path(os.environ.get("CAPACITY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb into a scratch folder, a free port on
    127.0.0.1, its own process group), which a test may stop and start again: the machine's
    server is shared by everyone and never restarted. As root, the server runs as `postgres`
    (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="capacity_pg_"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self._as_owner = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        initdb = [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync"]
        subprocess.run([*self._as_owner, *initdb, "-E", "UTF8"], check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database on this server (started if it is stopped); returns its URL."""
        if self.process is None:
            self.start()
        name = f"whalefall_{uuid.uuid4().hex[:8]}"
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name)

    def start(self) -> PrivatePostgres:
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}"]
        settings += ["-c", "fsync=off", "-c", "max_connections=40", "-c", "shared_buffers=16MB"]
        with (self.folder / "server.log").open("a") as log:
            self.process = spawn(
                [*self._as_owner, str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), *settings],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._accepting, 30, f"the private PostgreSQL on port {self.port} accepting connections")
        return self

    def _accepting(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log()
        ready = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            capture_output=True,
        )
        return ready.returncode == 0

    def stop(self) -> None:
        """A fast shutdown (SIGINT to the postmaster, as `pg_ctl stop -m fast`): sessions are
        terminated, their transactions rolled back; returns once the server is gone."""
        if self.process is not None:
            stop_group(self.process, sig=signal.SIGINT, grace=30)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- Dagster --------------------------------------------------------------------------------------


# Tests build the code location from explicit settings, never from the shell's environment.
TEST_SETTINGS = Settings()
PARTITIONS = partitions_by_period(TEST_SETTINGS.partitions_start)
# The aggregation assets alone, without resources, for dg.materialize with a test's own.
AGGREGATION_ASSETS = build_aggregation_assets(PARTITIONS, automate_current_periods=False)
# The forecast assets alone (each with its check), by level, likewise.
FORECAST_ASSETS = build_forecast_assets(PARTITIONS[PeriodType.DAILY])


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def dagster_resources(engine: Engine, **settings: Any) -> dict:
    """The code location's resources, pointed at a test database, with test-sized settings."""
    return {"whalefall": WhaleFallDatabase(url=url_of(engine), **settings)}


def code_location_definitions(
    engine: Engine, settings: Settings = TEST_SETTINGS, **resource_settings: Any
) -> dg.Definitions:
    """The code location built from `settings`, its resource pointed at a test database."""
    return build_defs(settings, resources=dagster_resources(engine, **resource_settings))


def resolve_job(engine: Engine, name: str, **resource_settings: Any) -> dg.JobDefinition:
    """One of the code location's jobs (or the implicit asset job), with test resources."""
    definitions = code_location_definitions(engine, **resource_settings)
    if name == "__ASSET_JOB":
        return definitions.resolve_implicit_global_asset_job_def()
    return definitions.resolve_job_def(name)


def observe_samples(definitions: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """One observation of the samples and of the quarterly baselines, as their schedules run it."""
    for job in ("observe_capacity_samples", "observe_quarterly_baselines"):
        assert definitions.resolve_job_def(job).execute_in_process(instance=instance).success


def expected_reaggregation(
    changed: dict[Level, set[date]], today: date, *, current_periods: bool, corrected_quarter: bool = False
) -> dict[dg.AssetKey, set[str]]:
    """The partitions a change to these days must re-aggregate, from WhaleFall's rules alone (compat 3):
    the window containing each day, and the window after when its previous window (Q1 quirk
    included) contains the day; never a period not begun, and the one in progress only for days
    or when `current_periods`."""
    from capacity_pipeline.defs.aggregation.assets import asset_key
    from capacity_pipeline.defs.partitions import key_for_window

    expected: dict[dg.AssetKey, set[str]] = {}
    for level, days in changed.items():
        for period in PeriodType:
            for day in days:
                for window in windows_fed_by(period, day, corrected_quarter=corrected_quarter):
                    in_progress = window.start <= today <= window.end
                    if window.start > today or (in_progress and period is not PeriodType.DAILY and not current_periods):
                        continue
                    expected.setdefault(asset_key(level, period), set()).add(key_for_window(window))
    return expected


# -- the HTTP API -----------------------------------------------------------------------------------

CURRENT = "/api/v1/capacity/aggregations/current"
HEALTH = "/api/v1/health"
SUCCESS_KEYS = {"success", "error", "message", "timestamp"}  # and "data" when there is data
ERROR_KEYS = {
    "success", "error", "error_id", "category", "severity", "message_code", "message",
    "timestamp", "recoverable", "suggestions", "context",
}  # fmt: skip
ADMIN_TOKEN, VIEWER_TOKEN = "tok-admin-7f3a9c", "tok-viewer-22b1"


def task_runs(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(tables_for(engine).tables["task_runs"])).scalar()


def task_run_rows(engine: Engine) -> list[tuple]:
    """Every task run as (run_id, status, updated_at): a snapshot to compare before and after."""
    runs = tables_for(engine).tables["task_runs"]
    with engine.connect() as connection:
        query = select(runs.c.run_id, runs.c.status, runs.c.updated_at).order_by(runs.c.id)
        return [tuple(row) for row in connection.execute(query)]


def error(response, status: int, code: str, message: str, category: str) -> dict:  # noqa: ANN001
    """Assert WhaleFall's error envelope with these values; returns the body."""
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == ERROR_KEYS
    assert (body["success"], body["error"], body["message_code"], body["message"], body["category"]) == (
        False,
        True,
        code,
        message,
        category,
    )
    assert len(body["error_id"]) == 32 and body["timestamp"].endswith("+00:00")
    assert body["recoverable"] is (body["severity"] in ("low", "medium"))
    assert body["context"]["method"] == response.request.method
    return body


# -- processes --------------------------------------------------------------------------------------


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_stop_signals() -> None:
    """Run in the child before exec: SIGINT and SIGTERM back to their default action. A background
    job of a non-interactive shell (`cmd &` in a script, some CI runners) starts with SIGINT
    ignored, and an ignored signal stays ignored across exec: a server started from it could not
    be stopped with SIGINT (Python then installs no KeyboardInterrupt handler at all)."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


def spawn(command: list[str], **popen: Any) -> subprocess.Popen:
    """Start `command` in a session (so a process group) of its own, with default SIGINT and
    SIGTERM whatever this process inherited: stop_group can always stop it and what it starts."""
    return subprocess.Popen(command, start_new_session=True, preexec_fn=default_stop_signals, **popen)


def live_members(group: int) -> list[int]:
    """The processes of a process group that have not exited (zombies hold no port: not counted)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited while we looked
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def stop_group(process: subprocess.Popen, *, sig: int = signal.SIGINT, grace: float = 30) -> None:
    """Stop a process started by `spawn`: `sig` to its whole group, SIGKILL to whatever is left
    after `grace` seconds, and return only once no process of the group is alive (so its ports
    are free: a server started next on the same port never meets the old one, which with
    SO_REUSEPORT would otherwise share the port with it)."""
    group = process.pid
    with suppress(ProcessLookupError):
        os.killpg(group, sig)
    deadline = time.monotonic() + grace
    while live_members(group) and time.monotonic() < deadline:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)  # reaps the leader as soon as it exits
    if live_members(group):
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        wait_until(lambda: not live_members(group), 10, f"process group {group} gone after SIGKILL", interval=0.05)
    process.wait(timeout=10)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the whole process group at once: every process dies without cleaning up; returns
    once they are all gone."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    wait_until(lambda: not live_members(process.pid), 10, f"process group {process.pid} gone", interval=0.05)


@dataclass
class DagsterDev:
    """A real `dagster dev` (webserver and daemon) with the production dagster.yaml and PostgreSQL
    storage, in its own process group; it can be killed and started again on the same storage."""

    home: Path
    log: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    startup_seconds: float = 120
    whalefall_engine: Engine | None = None  # set when the server has a WhaleFall database of its own

    @classmethod
    def prepared(cls, folder: Path, storage_url: str, whalefall_url: str, **extra_env: str) -> DagsterDev:
        home = folder / "dagster_home"
        home.mkdir(parents=True)
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "DAGSTER_POSTGRES_URL": storage_url,
            "WHALEFALL_DATABASE_URL": whalefall_url,
            **extra_env,
        }
        return cls(home=home, log=folder / "dagster-dev.log", env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DagsterDev:
        dagster = Path(sys.executable).parent / "dagster"
        with self.log.open("a") as output:
            self.process = spawn(
                [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_serving()
        return self

    def _wait_until_serving(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"dagster dev did not answer within {self.startup_seconds} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)

    def kill(self) -> None:
        """Kill the whole group (webserver, daemon, code server, run workers) without warning."""
        assert self.process is not None
        kill_group(self.process)

    def tail(self, characters: int = 4000) -> str:
        return self.log.read_text()[-characters:] if self.log.exists() else ""

    def instance(self) -> dg.DagsterInstance:
        """The same Dagster instance (PostgreSQL storage), opened from the test process without
        touching this process's environment."""
        return dagster_instance_at(self.home, self.env["DAGSTER_POSTGRES_URL"])


def dagster_instance_at(home: Path, storage_url: str) -> dg.DagsterInstance:
    """The Dagster instance of this DAGSTER_HOME (its dagster.yaml) on this PostgreSQL storage,
    opened from the test process without touching this process's environment."""
    from dagster._core.instance.ref import InstanceRef

    storage = {"storage": {"postgres": {"postgres_url": storage_url}}}
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), overrides=storage))


def submit_job(client: Any, deadline: float, **kwargs: Any) -> str:
    """Submit over GraphQL once the code location has loaded (the webserver answers before it has)."""
    from dagster_graphql import DagsterGraphQLClientError

    while True:
        try:
            return client.submit_job_execution(**kwargs)
        except DagsterGraphQLClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
_DAGSTER_STATUS_OF = {
    "completed": dg.DagsterRunStatus.SUCCESS,
    "failed": dg.DagsterRunStatus.FAILURE,
    "cancelled": dg.DagsterRunStatus.CANCELED,
}


def wait_for_run(client: Any, run_id: str, timeout: float = 120) -> dg.DagsterRunStatus:
    """The run's final status, polled over GraphQL."""

    def finished() -> dg.DagsterRunStatus | None:
        status = client.get_run_status(run_id)
        return status if status in FINISHED else None

    return wait_until(finished, timeout, f"the end of Dagster run {run_id}", interval=0.5)


# -- what must hold once runs have ended ------------------------------------------------------------


def dagster_runs_of(engine: Engine, instance: dg.DagsterInstance, task_run_id: str) -> list[dg.DagsterRun]:
    """The Dagster runs that worked (or were launched to work) for a TaskRun: the run that claimed
    it, else the runs of the claim key a launcher gave it; [] when none was ever launched."""
    links = tables_for(engine).tables["capacity_task_run_links"]
    with engine.connect() as connection:
        link = connection.execute(select(links).where(links.c.task_run_id == task_run_id)).first()
    if link is None:
        return []
    if link.dagster_run_id is not None:
        run = instance.get_run_by_id(link.dagster_run_id)
        return [run] if run is not None else []
    return list(instance.get_runs(filters=dg.RunsFilter(tags={CLAIM_TAG: link.claim_key})))


def assert_run_center_consistent(
    engine: Engine, instance: dg.DagsterInstance, task_run_ids: Iterable[str], *, killed: Iterable[str] = ()
) -> None:
    """Every TaskRun is final and agrees with its items and with its Dagster run:

    * completed_at set, no pending or running item, counters = items (total, completed, failed or
      cancelled: compat 6.1 finalize);
    * completed <=> SUCCESS, failed <=> FAILURE, cancelled <=> CANCELED; a TaskRun never launched
      (cancelled before any run, or failed by its launcher) has no run; a cancelled TaskRun that
      shared its run with TaskRuns that were not cancelled ends as they do (the run went on for
      them); a cancelled TaskRun whose worker the test killed (`killed`: Dagster run ids) before
      it could see the cancel may end FAILURE.
    """
    center, claims, killed = RunCenter(engine), RunClaims(engine), set(killed)
    for task_run_id in task_run_ids:
        run, items = center.get_run(task_run_id), center.get_items(task_run_id)
        status = run["status"]
        assert status in _DAGSTER_STATUS_OF, (task_run_id, status)
        assert run["completed_at"] is not None, (task_run_id, "completed_at")
        open_items = [i["item_key"] for i in items if i["status"] in ("pending", "running")]
        assert not open_items, (task_run_id, status, "open items", open_items)
        counters = (run["progress_total"], run["progress_completed"], run["progress_failed"])
        completed = sum(1 for i in items if i["status"] == "completed")
        failed = sum(1 for i in items if i["status"] in ("failed", "cancelled"))
        assert counters == (len(items), completed, failed), (task_run_id, status, counters, "items", completed, failed)
        runs = dagster_runs_of(engine, instance, task_run_id)
        if not runs:
            assert status in ("cancelled", "failed"), (task_run_id, status, "no Dagster run")
            continue
        assert len(runs) == 1, (task_run_id, [r.run_id for r in runs])
        [dagster_run] = runs
        if dagster_run.status not in FINISHED:  # its TaskRun settles as the step ends, a moment before the run
            wait_until(
                lambda run_id=dagster_run.run_id: instance.get_run_by_id(run_id).is_finished,
                60,
                f"Dagster run {dagster_run.run_id} ending",
                interval=0.5,
            )
            dagster_run = instance.get_run_by_id(dagster_run.run_id)
        assert dagster_run.status in FINISHED, (task_run_id, dagster_run.run_id, dagster_run.status)
        allowed = {_DAGSTER_STATUS_OF[status]}
        if status == "cancelled":
            others = {center.status(other) for other in claims.task_runs_of(dagster_run.run_id)} - {"cancelled"}
            allowed |= {_DAGSTER_STATUS_OF[other] for other in others if other in _DAGSTER_STATUS_OF}
            if dagster_run.run_id in killed:
                allowed.add(dg.DagsterRunStatus.FAILURE)
        assert dagster_run.status in allowed, (task_run_id, status, dagster_run.run_id, dagster_run.status)
