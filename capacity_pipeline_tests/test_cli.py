"""The `capacity-pipeline` command line, driven through `main(argv)` against real databases."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

from capacity_pipeline.cli import build_parser, main
from capacity_pipeline.domain.periods import china_today
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import WhaleFallData, row_trigger, url_of

DAY = date(2026, 6, 10)
DAY_BEFORE = date(2026, 6, 9)
AGGREGATE_DAILY = ["aggregate", "--period", "daily", "--date", "2026-06-10"]
AGGREGATION_TABLES = ("database_size_aggregations", "instance_size_aggregations")
ALL_TABLES = sorted(
    [
        "instances",
        "database_size_stats",
        "instance_size_stats",
        "database_size_aggregations",
        "instance_size_aggregations",
        "task_runs",
        "task_run_items",
        "capacity_task_run_links",  # the pipeline's own, beside the run center
        "capacity_limits",  # the forecasts' own
        "capacity_forecasts",
        "capacity_sensor_heartbeats",  # the pipeline's own: the sensors' last ticks
        "capacity_sample_versions",  # the pipeline's own: what changed in the samples
        "capacity_sample_observations",
        "capacity_sample_changes",
        "capacity_window_marks",
    ]
)


@pytest.fixture(autouse=True)
def no_ambient_database_url(monkeypatch):
    """Tests decide for themselves whether WHALEFALL_DATABASE_URL is set."""
    monkeypatch.delenv("WHALEFALL_DATABASE_URL", raising=False)
    monkeypatch.delenv("CAPACITY_CORRECTED_PREVIOUS_QUARTER", raising=False)


def _seed_two_instances(whalefall: WhaleFallData) -> None:
    """Instance 1 with two databases, instance 2 with one; stats on 2026-06-10 and 2026-06-09."""
    for instance_id, databases in ((1, ("app", "logs")), (2, ("app",))):
        whalefall.instance(instance_id)
        for name in databases:
            whalefall.database_stats(instance_id, name, [(DAY, 120, 100), (DAY_BEFORE, 100, 80)])
        whalefall.instance_stats(
            instance_id, [(DAY, 120 * len(databases), len(databases)), (DAY_BEFORE, 100, len(databases))]
        )


@pytest.fixture
def seeded_sqlite(tmp_path):
    """A SQLite file with the schema and two seeded instances; yields (url, WhaleFallData)."""
    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    engine = make_engine(url)
    create_schema(engine)
    whalefall = WhaleFallData(engine)
    _seed_two_instances(whalefall)
    yield url, whalefall
    engine.dispose()


def _count(whalefall: WhaleFallData, table: str) -> int:
    with whalefall.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(whalefall.tables[table])).scalar_one()


def _aggregation_counts(whalefall: WhaleFallData) -> dict[str, int]:
    return {table: _count(whalefall, table) for table in AGGREGATION_TABLES}


def _one_line(stderr: str) -> str:
    assert stderr.endswith("\n")
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# --- init-db ----------------------------------------------------------------------------------


def test_init_db_creates_all_tables_once_on_a_fresh_sqlite_file(tmp_path, capsys):
    path = tmp_path / "fresh.db"
    url = f"sqlite:///{path}"

    assert main(["init-db", "--db-url", url]) == 0
    first = capsys.readouterr()
    assert main(["init-db", "--db-url", url]) == 0
    second = capsys.readouterr()

    assert sorted(json.loads(first.out)["created_tables"]) == ALL_TABLES
    assert json.loads(second.out) == {"created_tables": []}
    assert first.err == second.err == ""
    engine = make_engine(url)
    assert sorted(inspect(engine).get_table_names()) == ALL_TABLES
    engine.dispose()


def test_init_db_on_an_existing_postgresql_schema_creates_nothing(pg_engine, capsys):
    assert main(["init-db", "--db-url", url_of(pg_engine)]) == 0

    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"created_tables": []}
    assert captured.err == ""


# --- aggregate --------------------------------------------------------------------------------


def _expected_summary(scope: str, rows_written: dict[str, int]) -> dict:
    return {
        "period_type": "daily",
        "scope": scope,
        "window": {"start": "2026-06-10", "end": "2026-06-10"},
        "previous_window": {"start": "2026-06-09", "end": "2026-06-09"},
        "instances": {"total": 2, "processed": 2, "skipped": 0, "failed": 0, "not_run": 0},
        "rows_written": rows_written,
        "failures": [],
        "batches": {"done": 1, "total": 1},
        "stopped": False,
    }


def _summary_without_seconds(stdout: str) -> dict:
    summary = json.loads(stdout)
    seconds = summary.pop("seconds")
    assert isinstance(seconds, int | float) and not isinstance(seconds, bool)
    assert seconds >= 0
    return summary


def test_aggregate_prints_the_run_summary_as_json(engine, whalefall, capsys):
    _seed_two_instances(whalefall)

    exit_code = main([*AGGREGATE_DAILY, "--db-url", url_of(engine)])

    captured = capsys.readouterr()
    assert exit_code == 0
    assert captured.err == ""
    assert _summary_without_seconds(captured.out) == _expected_summary(
        "all", {"database": 3, "instance": 2, "total": 5}
    )
    database_rows = whalefall.rows("database_size_aggregations", "instance_id, database_name")
    assert [(r["instance_id"], r["database_name"]) for r in database_rows] == [
        (1, "app"),
        (1, "logs"),
        (2, "app"),
    ]
    instance_rows = whalefall.rows("instance_size_aggregations")
    assert [(r["instance_id"], r["period_type"], r["period_start"]) for r in instance_rows] == [
        (1, "daily", DAY),
        (2, "daily", DAY),
    ]


def test_aggregate_with_database_scope_writes_only_database_rows(engine, whalefall, capsys):
    _seed_two_instances(whalefall)

    exit_code = main([*AGGREGATE_DAILY, "--scope", "database", "--db-url", url_of(engine)])

    captured = capsys.readouterr()
    assert exit_code == 0
    assert _summary_without_seconds(captured.out) == _expected_summary("database", {"database": 3, "total": 3})
    assert _aggregation_counts(whalefall) == {
        "database_size_aggregations": 3,
        "instance_size_aggregations": 0,
    }


def test_aggregate_takes_the_url_from_the_environment(engine, whalefall, capsys, monkeypatch):
    _seed_two_instances(whalefall)
    monkeypatch.setenv("WHALEFALL_DATABASE_URL", url_of(engine))

    exit_code = main(AGGREGATE_DAILY)

    captured = capsys.readouterr()
    assert exit_code == 0
    assert _summary_without_seconds(captured.out)["rows_written"] == {
        "database": 3,
        "instance": 2,
        "total": 5,
    }
    assert _aggregation_counts(whalefall) == {
        "database_size_aggregations": 3,
        "instance_size_aggregations": 2,
    }


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected_parts"),
    [
        pytest.param(
            ["aggregate", "--period", "hourly", "--date", "2026-06-10"],
            ["--period", "'hourly'", "daily", "weekly", "monthly", "quarterly"],
            id="unknown-period",
        ),
        pytest.param(
            [*AGGREGATE_DAILY, "--scope", "everything"],
            ["--scope", "'everything'", "all", "database", "instance"],
            id="unknown-scope",
        ),
        pytest.param(
            ["aggregate", "--period", "daily", "--date", "2026-13-45"],
            ["--date", "'2026-13-45'", "YYYY-MM-DD"],
            id="impossible-date",
        ),
        pytest.param(
            ["aggregate", "--period", "daily", "--date", "yesterday"],
            ["--date", "'yesterday'", "YYYY-MM-DD"],
            id="word-for-date",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(seeded_sqlite, capsys, arguments, expected_parts):
    url, whalefall = seeded_sqlite

    with pytest.raises(SystemExit) as raised:
        main([*arguments, "--db-url", url])

    captured = capsys.readouterr()
    assert raised.value.code == 2
    line = _one_line(captured.err)
    assert line.startswith("capacity-pipeline aggregate: error: argument ")
    for part in expected_parts:
        assert part in line
    assert captured.out == ""
    assert _aggregation_counts(whalefall) == dict.fromkeys(AGGREGATION_TABLES, 0)


def test_missing_database_url_names_the_environment_variable(seeded_sqlite, capsys):
    _, whalefall = seeded_sqlite

    exit_code = main(AGGREGATE_DAILY)

    captured = capsys.readouterr()
    assert exit_code == 2
    line = _one_line(captured.err)
    assert line.startswith("capacity-pipeline aggregate: error: WHALEFALL_DATABASE_URL is not set")
    assert "--db-url" in line
    assert captured.out == ""
    assert _aggregation_counts(whalefall) == dict.fromkeys(AGGREGATION_TABLES, 0)


def test_unreachable_database_fails_without_showing_the_password(seeded_sqlite, capsys, monkeypatch):
    # The environment points at a usable database: the explicit --db-url must win all the same.
    url, whalefall = seeded_sqlite
    monkeypatch.setenv("WHALEFALL_DATABASE_URL", url)

    exit_code = main([*AGGREGATE_DAILY, "--db-url", "postgresql://postgres:s3cret@127.0.0.1:1/nowhere"])

    captured = capsys.readouterr()
    assert exit_code == 1
    line = _one_line(captured.err)
    assert line.startswith(
        "capacity-pipeline aggregate: failed: cannot use postgresql://postgres:***@127.0.0.1:1/nowhere: "
    )
    assert "s3cret" not in captured.err + captured.out
    assert captured.out == ""
    assert _aggregation_counts(whalefall) == dict.fromkeys(AGGREGATION_TABLES, 0)


def test_unsupported_scheme_in_the_environment_lists_the_allowed_databases(seeded_sqlite, capsys, monkeypatch):
    _, whalefall = seeded_sqlite
    monkeypatch.setenv("WHALEFALL_DATABASE_URL", "mysql://x@y/z")

    exit_code = main(AGGREGATE_DAILY)

    captured = capsys.readouterr()
    assert exit_code == 2
    assert _one_line(captured.err) == (
        "capacity-pipeline aggregate: error: WHALEFALL_DATABASE_URL: unsupported database 'mysql'; "
        "allowed: postgresql, sqlite"
    )
    assert captured.out == ""
    assert _aggregation_counts(whalefall) == dict.fromkeys(AGGREGATION_TABLES, 0)


def test_unsupported_scheme_in_db_url_names_the_option_and_the_allowed_databases(seeded_sqlite, capsys):
    _, whalefall = seeded_sqlite

    exit_code = main([*AGGREGATE_DAILY, "--db-url", "mysql://x@y/z"])

    captured = capsys.readouterr()
    assert exit_code == 2
    assert _one_line(captured.err) == (
        "capacity-pipeline aggregate: error: --db-url: unsupported database 'mysql'; allowed: postgresql, sqlite"
    )
    assert captured.out == ""
    assert _aggregation_counts(whalefall) == dict.fromkeys(AGGREGATION_TABLES, 0)


def test_aggregate_on_a_missing_sqlite_file_refuses_without_creating_it(tmp_path, capsys):
    path = tmp_path / "never-initialised.db"

    exit_code = main([*AGGREGATE_DAILY, "--db-url", f"sqlite:///{path}"])

    captured = capsys.readouterr()
    assert exit_code == 2
    assert _one_line(captured.err) == (
        f"capacity-pipeline aggregate: error: SQLite file {path} does not exist "
        "(run 'capacity-pipeline init-db' to create it)"
    )
    assert captured.out == ""
    assert not path.exists()


def test_aggregate_before_init_db_suggests_init_db(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    make_engine(url).dispose()
    with make_engine(url).begin() as connection:
        connection.exec_driver_sql("CREATE TABLE unrelated (id INTEGER)")

    exit_code = main([*AGGREGATE_DAILY, "--db-url", url])

    captured = capsys.readouterr()
    assert exit_code == 1
    assert _one_line(captured.err) == (
        "capacity-pipeline aggregate: failed: no such table: instances (run 'capacity-pipeline init-db' first)"
    )
    assert captured.out == ""


def test_missing_postgresql_database_names_the_url_not_init_db(postgres_url, capsys):
    url = postgres_url.rsplit("/", 1)[0] + "/capacity_no_such_database"

    exit_code = main([*AGGREGATE_DAILY, "--db-url", url])

    line = _one_line(capsys.readouterr().err)
    assert exit_code == 1
    assert line.startswith("capacity-pipeline aggregate: failed: cannot use postgresql+psycopg://")
    assert '"capacity_no_such_database" does not exist' in line
    assert "init-db" not in line


# --- a failing instance -----------------------------------------------------------------------


def test_one_failing_instance_exits_1_naming_it_and_the_others_are_written(seeded_sqlite, capsys):
    url, whalefall = seeded_sqlite
    failing = row_trigger(
        whalefall.engine, "instance_size_aggregations", "NEW.instance_id = 2", error="disk quota exceeded"
    )

    with failing:
        exit_code = main([*AGGREGATE_DAILY, "--db-url", url])

    captured = capsys.readouterr()
    assert exit_code == 1
    assert _one_line(captured.err) == (
        "capacity-pipeline aggregate: failed: 1 of 2 instances failed (first: instance 2: disk quota exceeded)"
    )
    summary = _summary_without_seconds(captured.out)
    assert summary["instances"] == {"total": 2, "processed": 1, "skipped": 0, "failed": 1, "not_run": 0}
    assert summary["failures"] == [{"instance_id": 2, "instance_name": "instance-2", "error": "disk quota exceeded"}]
    assert summary["rows_written"] == {"database": 2, "instance": 1, "total": 3}
    # Instance 2's transaction is rolled back whole: no database-level rows for it either.
    with whalefall.engine.connect() as connection:
        written = {
            table: connection.execute(text(f"SELECT DISTINCT instance_id FROM {table} ORDER BY 1")).scalars().all()
            for table in AGGREGATION_TABLES
        }
    assert written == {"database_size_aggregations": [1], "instance_size_aggregations": [1]}


# --- generate ---------------------------------------------------------------------------------

GENERATE = ["generate", "--instances", "3", "--databases", "2", "--days", "5", "--end-date", "2026-06-10"]


def test_generate_loads_synthetic_rows_and_prints_the_counts(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'generated.db'}"

    exit_code = main([*GENERATE, "--db-url", url])

    captured = capsys.readouterr()
    assert exit_code == 0
    assert captured.err == ""
    counts = json.loads(captured.out)
    engine = make_engine(url)
    whalefall = WhaleFallData(engine)
    assert counts == {
        "instances": 3,
        "database_size_stats": _count(whalefall, "database_size_stats"),
        "instance_size_stats": _count(whalefall, "instance_size_stats"),
    }
    assert _count(whalefall, "instances") == 3
    assert 0 < counts["database_size_stats"] <= 3 * 2 * 5
    with engine.connect() as connection:
        days = connection.execute(
            text("SELECT min(collected_date), max(collected_date) FROM database_size_stats")
        ).one()
    assert tuple(days) == ("2026-06-06", "2026-06-10")
    engine.dispose()


def test_generate_refuses_a_database_that_already_has_instances(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'generated.db'}"
    assert main([*GENERATE, "--db-url", url]) == 0
    first_counts = json.loads(capsys.readouterr().out)

    exit_code = main([*GENERATE, "--seed", "7", "--db-url", url])

    captured = capsys.readouterr()
    assert exit_code == 2
    assert _one_line(captured.err) == (
        "capacity-pipeline generate: error: instances: the target database already has 3 instances; "
        "synthetic data only goes into an empty database"
    )
    assert captured.out == ""
    engine = make_engine(url)
    whalefall = WhaleFallData(engine)
    assert {table: _count(whalefall, table) for table in first_counts} == first_counts
    engine.dispose()


# --- help, request, dates, folders, ranges, progress ------------------------------------------


def _option_help(parser_help: str) -> dict[str, str]:
    """Each option's help text in a rendered --help, keyed by its first option string."""
    entries: dict[str, str] = {}
    current = None
    for line in parser_help.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith(" " * 10):
            entries[current] += " " + line.strip()
    return entries


def test_every_option_of_every_command_has_help_that_says_its_default():
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    assert set(commands.choices) >= {"init-db", "aggregate", "generate", "request", "serve-api", "demo"}
    for name, command in commands.choices.items():
        documented = _option_help(command.format_help())
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            text = " ".join(documented[action.option_strings[0]].split())
            if not action.required:  # an option one may leave out says what happens then
                assert "default" in text or "required" in text, f"{name} {action.option_strings[0]}: {text}"
    serve_api = _option_help(commands.choices["serve-api"].format_help())
    assert "(default: 8080)" in " ".join(serve_api["--port"].split())


def test_request_prints_the_task_run_as_json_in_english(engine, capsys):
    exit_code = main(["request", "--scope", "instance", "--period", "weekly", "--db-url", url_of(engine)])

    captured = capsys.readouterr()
    assert exit_code == 0 and captured.err == ""
    request = json.loads(captured.out)
    assert set(request) == {"task_run_id", "task_key", "status", "scope", "period_type", "message"}
    assert (request["task_key"], request["status"], request["scope"], request["period_type"]) == (
        "capacity_aggregate_current",
        "running",
        "instance",
        "weekly",
    )
    assert request["message"].isascii() and "Dagster daemon" in request["message"]
    task_run = RunCenter(engine).get_run(request["task_run_id"])
    assert task_run["status"] == "running" and task_run["task_key"] == "capacity_aggregate_current"


@pytest.mark.parametrize("option", ["--date", "--from", "--to"])
def test_a_date_in_the_future_is_refused_naming_the_option_and_today(seeded_sqlite, capsys, option):
    url, whalefall = seeded_sqlite
    today = china_today()
    tomorrow = today + timedelta(days=1)
    dates = {"--date": ["--date", tomorrow], "--from": ["--from", tomorrow, "--to", tomorrow]}
    dates["--to"] = ["--from", today, "--to", tomorrow]

    exit_code = main(["aggregate", "--period", "daily", *map(str, dates[option]), "--db-url", url])

    captured = capsys.readouterr()
    assert exit_code == 2 and captured.out == ""
    assert _one_line(captured.err) == (
        f"capacity-pipeline aggregate: error: {option}: {tomorrow} is in the future; today is {today} (Asia/Shanghai)"
    )
    assert _aggregation_counts(whalefall) == dict.fromkeys(AGGREGATION_TABLES, 0)


def test_init_db_into_a_missing_folder_names_the_folder(tmp_path, capsys):
    folder = tmp_path / "no" / "such" / "dir"

    exit_code = main(["init-db", "--db-url", f"sqlite:///{folder / 'x.db'}"])

    captured = capsys.readouterr()
    assert exit_code == 2 and captured.out == ""
    assert _one_line(captured.err) == (
        f"capacity-pipeline init-db: error: SQLite file {folder / 'x.db'}: the folder {folder} does not exist "
        "(create it first)"
    )
    assert not (tmp_path / "no").exists()


def test_aggregate_from_to_writes_every_period_of_the_range(seeded_sqlite, capsys):
    url, whalefall = seeded_sqlite

    exit_code = main(["aggregate", "--period", "daily", "--from", "2026-06-08", "--to", "2026-06-10", "--db-url", url])

    captured = capsys.readouterr()
    assert exit_code == 0 and captured.err == ""
    summaries = json.loads(captured.out)
    assert [summary["window"]["start"] for summary in summaries] == ["2026-06-08", "2026-06-09", "2026-06-10"]
    # 2026-06-08 has no samples: its instances are skipped; the two days with samples are written.
    assert [summary["instances"]["processed"] for summary in summaries] == [0, 2, 2]
    days = {row["period_start"] for row in whalefall.rows("instance_size_aggregations")}
    assert days == {DAY_BEFORE, DAY}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--from", "2026-06-08"], "--from needs --to (the last day of the range)"),
        (["--date", "2026-06-08", "--to", "2026-06-10"], "--to goes with --from, not with --date"),
        (["--from", "2026-06-10", "--to", "2026-06-08"], "--to: 2026-06-08 is before --from 2026-06-10"),
    ],
)
def test_a_malformed_range_is_refused(seeded_sqlite, capsys, arguments, message):
    url, whalefall = seeded_sqlite

    exit_code = main(["aggregate", "--period", "daily", *arguments, "--db-url", url])

    assert exit_code == 2
    assert _one_line(capsys.readouterr().err) == f"capacity-pipeline aggregate: error: {message}"
    assert _aggregation_counts(whalefall) == dict.fromkeys(AGGREGATION_TABLES, 0)


def test_generate_draws_progress_on_a_terminal_and_keeps_stdout_json(tmp_path):
    """On a terminal stderr shows a progress bar; stdout stays the JSON (quiet elsewhere: see above)."""
    url = f"sqlite:///{tmp_path / 'generated.db'}"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
    try:
        process = subprocess.run(
            [str(Path(sys.executable).parent / "capacity-pipeline"), *GENERATE, "--db-url", url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=120,
            check=False,
        )
        os.close(follower)
        follower = None
        terminal = b""
        while chunk := _read_available(leader):
            terminal += chunk
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)

    assert process.returncode == 0
    assert json.loads(process.stdout)["instances"] == 3
    drawn = terminal.decode(errors="replace")
    assert "synthetic samples:" in drawn and "0/5 [" in drawn and "days/s" in drawn


def _read_available(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the writer closed its side
        return b""
