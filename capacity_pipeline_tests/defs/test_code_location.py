"""The Dagster code location, through real Dagster runs (materialize / execute_in_process) on a
real instance, against SQLite and PostgreSQL WhaleFall databases."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from capacity_pipeline.defs.aggregation.assets import asset_key
from capacity_pipeline.defs.aggregation.jobs import (
    NIGHTLY_OP_NAME,
    calculate_database_schedule,
)
from capacity_pipeline.defs.definitions import build_defs
from capacity_pipeline.defs.partitions import key_for_window, window_for_key
from capacity_pipeline.defs.resources import WhaleFallDatabase, whalefall_from_settings
from capacity_pipeline.defs.run_center.tags import TRIGGER_SOURCE_TAG
from capacity_pipeline.domain.aggregation.engine import aggregate_period
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, last_window, previous_window, window_containing
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline_tests import whalefall_reference as reference
from capacity_pipeline_tests.support import (
    AGGREGATION_ASSETS,
    PARTITIONS,
    REPO,
    TEST_SETTINGS,
    dagster_resources,
    resolve_job,
    row_trigger,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
TODAY = date(2026, 7, 2)
SPEC = SyntheticSpec(instances=12, databases=4, days=220, end_date=TODAY, seed=3)
# One chosen partition per period: the last complete one on TODAY (daily: yesterday).
CHOSEN = {period: key_for_window(last_window(period, TODAY)) for period in PeriodType}
IGNORED = {"id", "calculated_at", "created_at"}


def _period_assets(period: PeriodType) -> list:
    return [AGGREGATION_ASSETS[level, period] for level in Level]  # each with its checks


def _rows(whalefall, table: str, period: PeriodType, key: str) -> list[dict]:
    start = date.fromisoformat(key)
    return [
        {k: v for k, v in row.items() if k not in IGNORED}
        for row in whalefall.rows(table, "id")
        if row["period_type"] == period.value and row["period_start"] == start
    ]


@pytest.fixture
def synthetic(engine, whalefall):
    load_synthetic_data(engine, SPEC)
    return whalefall


def test_definitions_load():
    defs = build_defs(TEST_SETTINGS)
    dg.Definitions.validate_loadable(defs)
    assert {job.name for job in defs.resolve_all_job_defs()} >= {
        "capacity_aggregate_current",
        "calculate_database",
    }
    keys = {asset.key for asset in AGGREGATION_ASSETS.values()}
    assert {key.to_user_string() for key in keys} == {
        f"{period.value}_{level.value}_size_aggregations" for period in PeriodType for level in Level
    }
    assert {asset.group_names_by_key[asset.key] for asset in AGGREGATION_ASSETS.values()} == {"capacity"}
    checked = sorted((k.asset_key.to_user_string(), k.name) for a in AGGREGATION_ASSETS.values() for k in a.check_keys)
    assert len(checked) == 32 and ("daily_database_size_aggregations", "coverage") in checked
    schedule = defs.resolve_schedule_def("calculate_database_nightly")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 4 * * *", "Asia/Shanghai")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


BOUNDARY_DAYS = [
    date(2025, 12, 31), date(2026, 1, 1), date(2026, 1, 4), date(2026, 1, 5),
    date(2026, 2, 28), date(2026, 3, 1), date(2026, 3, 31), date(2026, 4, 1),
    date(2026, 6, 28), date(2026, 6, 29), date(2026, 9, 30), date(2026, 10, 1),
]  # fmt: skip


@pytest.mark.parametrize("period", list(PeriodType))
def test_partition_windows_match_the_period_engine(period):
    now = datetime(2027, 1, 10, tzinfo=SHANGHAI)
    for day in BOUNDARY_DAYS:
        window = window_containing(period, day)
        key = key_for_window(window)
        assert key in PARTITIONS[period].get_partition_keys(current_time=now)
        assert window_for_key(period, key) == window
    for key in PARTITIONS[period].get_partition_keys(current_time=now):
        window = window_for_key(period, key)
        assert window_containing(period, window.start) == window


def test_every_period_type_includes_the_period_in_progress():
    just_after_midnight = datetime(2026, 7, 1, 16, 30, tzinfo=UTC)  # 00:30 on Thu 07-02 in Shanghai
    last = {p: PARTITIONS[p].get_partition_keys(current_time=just_after_midnight)[-1] for p in PeriodType}
    assert last == {
        PeriodType.DAILY: "2026-07-02",
        PeriodType.WEEKLY: "2026-06-29",
        PeriodType.MONTHLY: "2026-07-01",
        PeriodType.QUARTERLY: "2026-07-01",
    }


@pytest.mark.parametrize("period", list(PeriodType))
def test_materializing_a_partition_writes_the_engines_rows(engine, synthetic, dagster_instance, period):
    key = CHOSEN[period]
    result = dg.materialize(
        _period_assets(period), partition_key=key, resources=dagster_resources(engine), instance=dagster_instance
    )
    assert result.success
    written = {
        t: _rows(synthetic, t, period, key) for t in ("database_size_aggregations", "instance_size_aggregations")
    }
    assert all(written.values())

    # The foundation's engine, run again on the same window, finds exactly these rows.
    aggregate_period(engine, period, window_for_key(period, key))
    assert {t: _rows(synthetic, t, period, key) for t in written} == written

    event = dagster_instance.get_latest_materialization_event(asset_key(Level.INSTANCE, period))
    metadata = event.asset_materialization.metadata
    assert event.asset_materialization.partition == key
    assert metadata["rows_written"].value == len(written["instance_size_aggregations"])
    assert metadata["window"].value == str(window_for_key(period, key))
    assert metadata["previous_window"].value == str(previous_window(period, window_for_key(period, key)))
    assert metadata["instances_failed"].value == 0
    assert "| instance_id |" in metadata["top_growing_instances"].value
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 8 and all(e.passed for e in evaluations)
    assert {e.partition for e in evaluations} == {key}  # recorded on the partition written


def test_materialized_rows_match_whalefall_row_by_row(pg_engine, pg_whalefall, dagster_instance):
    load_synthetic_data(pg_engine, SPEC)
    for period, key in CHOSEN.items():
        result = dg.materialize(
            _period_assets(period),
            partition_key=key,
            resources=dagster_resources(pg_engine),
            instance=dagster_instance,
        )
        assert result.success
        window = window_for_key(period, key)
        with pg_engine.connect() as connection:
            expected = reference.instance_rows(connection, period.value, window, previous_window(period, window))
        got = {row.pop("instance_id"): row for row in _rows(pg_whalefall, "instance_size_aggregations", period, key)}
        assert got == expected


def test_checks_pass_on_good_rows_and_fail_on_broken_ones(engine, synthetic, dagster_instance):
    period, key = PeriodType.DAILY, CHOSEN[PeriodType.DAILY]
    assets, resources = _period_assets(period), dagster_resources(engine)
    good = dg.materialize(assets, partition_key=key, resources=resources, instance=dagster_instance)
    assert [e.passed for e in good.get_asset_check_evaluations()] == [True] * 8

    # Rows the engine never rewrites (no stats in the window) stay as broken as we make them, and
    # one instance's row is silently swallowed by the database.
    start = date.fromisoformat(key)
    [victim] = [
        r["instance_id"]
        for r in synthetic.rows("instance_size_aggregations", "instance_id")
        if r["period_start"] == start
    ][:1]
    with engine.begin() as connection:
        for name, (avg, low, high, count) in {
            "stale_a": (50, 10, 40, 3),
            "stale_b": (20, 10, 40, -1),
        }.items():
            connection.exec_driver_sql(
                "INSERT INTO database_size_aggregations (instance_id, database_name, period_type, "
                "period_start, period_end, avg_size_mb, max_size_mb, min_size_mb, data_count, "
                "size_change_mb, size_change_percent, growth_rate, calculated_at, created_at) VALUES "
                f"({victim}, '{name}', 'daily', '{start}', '{start}', {avg}, {high}, {low}, {count}, "
                "0, 0, 0, '2026-07-02 00:00:00+00', '2026-07-02 00:00:00+00')"
            )
        connection.exec_driver_sql(
            f"DELETE FROM instance_size_aggregations WHERE period_start = '{start}' AND instance_id = {victim}"
        )
    with row_trigger(engine, "instance_size_aggregations", f"NEW.instance_id = {victim}"):  # skips the row
        broken = dg.materialize(assets, partition_key=key, resources=resources, instance=dagster_instance)

    verdicts = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in broken.get_asset_check_evaluations()}
    assert verdicts == {
        ("daily_database_size_aggregations", "min_avg_max"): False,
        ("daily_database_size_aggregations", "no_negative_counts"): False,
        ("daily_database_size_aggregations", "coverage"): True,
        ("daily_database_size_aggregations", "no_negative_input"): True,
        ("daily_instance_size_aggregations", "min_avg_max"): True,
        ("daily_instance_size_aggregations", "no_negative_counts"): True,
        ("daily_instance_size_aggregations", "coverage"): False,
        ("daily_instance_size_aggregations", "no_negative_input"): True,
    }
    assert broken.success  # a failed check warns; it does not fail the run or undo the rows
    [coverage] = [e for e in broken.get_asset_check_evaluations() if e.check_name == "coverage" and not e.passed]
    assert coverage.metadata["violations"].value == 1
    assert coverage.metadata["instances"].value.startswith(f"{victim} (")


def test_nightly_job_aggregates_the_last_period_of_each_type(engine, synthetic, dagster_instance):
    result = resolve_job(engine, "calculate_database").execute_in_process(
        run_config={"ops": {NIGHTLY_OP_NAME: {"config": {"today": TODAY.isoformat()}}}},
        instance=dagster_instance,
    )

    assert result.success
    for period, key in CHOSEN.items():
        for level in Level:
            assert _rows(synthetic, level.table, period, key), (period, level)
            event = dagster_instance.get_latest_materialization_event(asset_key(level, period))
            assert event.asset_materialization.partition == key


def _last(daily: str, weekly: str, monthly: str, quarterly: str) -> dict[str, str]:
    return {"daily": daily, "weekly": weekly, "monthly": monthly, "quarterly": quarterly}


@pytest.mark.parametrize(
    ("tick", "expected"),
    [
        (datetime(2026, 7, 2, 4, 0), _last("2026-07-01", "2026-06-22", "2026-06-01", "2026-04-01")),
        (datetime(2026, 1, 1, 4, 0), _last("2025-12-31", "2025-12-22", "2025-12-01", "2025-10-01")),
        (datetime(2026, 4, 1, 4, 0), _last("2026-03-31", "2026-03-23", "2026-03-01", "2026-01-01")),
    ],
)
def test_schedule_at_four_requests_the_last_complete_period_of_each_type(tick, expected):
    context = dg.build_schedule_context(scheduled_execution_time=tick.replace(tzinfo=SHANGHAI))
    request = calculate_database_schedule(context)
    assert {p: request.tags[f"capacity/{p}"] for p in expected} == expected
    assert request.run_config["ops"][NIGHTLY_OP_NAME]["config"]["today"] == tick.date().isoformat()
    assert request.run_key == f"calculate_database:{tick.date().isoformat()}"
    assert request.tags[TRIGGER_SOURCE_TAG] == "scheduled"


def test_backfill_takes_a_range_of_partitions_in_one_run(engine, synthetic, dagster_instance):
    first, last = TODAY - timedelta(days=5), TODAY - timedelta(days=1)
    job = resolve_job(engine, "capacity_aggregate_current")
    result = job.execute_in_process(
        instance=dagster_instance,
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
    )
    assert result.success
    for offset in range(5):
        key = (first + timedelta(days=offset)).isoformat()
        assert _rows(synthetic, "instance_size_aggregations", PeriodType.DAILY, key)
    materialized = dagster_instance.get_materialized_partitions(asset_key(Level.DATABASE, PeriodType.DAILY))
    assert materialized == {(first + timedelta(days=offset)).isoformat() for offset in range(5)}


def test_missing_database_url_names_the_variable(monkeypatch, dagster_instance):
    monkeypatch.delenv("WHALEFALL_DATABASE_URL", raising=False)
    with pytest.raises(dg.DagsterInvalidConfigError, match='environment variable "WHALEFALL_DATABASE_URL"'):
        dg.materialize(
            _period_assets(PeriodType.DAILY),
            partition_key=CHOSEN[PeriodType.DAILY],
            resources={"whalefall": whalefall_from_settings(TEST_SETTINGS)},
            instance=dagster_instance,
        )


def test_wrong_database_url_fails_with_the_variable_name_and_no_password(dagster_instance):
    result = dg.materialize(
        _period_assets(PeriodType.DAILY),
        partition_key=CHOSEN[PeriodType.DAILY],
        resources={"whalefall": WhaleFallDatabase(url="postgresql://postgres:pw-s3cret@127.0.0.1:1/none")},
        instance=dagster_instance,
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures
    description = failures[0].step_failure_data.error.message
    assert "WHALEFALL_DATABASE_URL: cannot connect to the WhaleFall database" in description
    logs = dagster_instance.all_logs(result.run_id)
    assert not any("pw-s3cret" in str(entry.dagster_event or entry.user_message) for entry in logs)
    assert "pw-s3cret" not in str(dagster_instance.get_run_by_id(result.run_id).tags)


def test_importing_the_code_location_reads_no_setting_and_loading_it_reads_them_once():
    """Importing any module of the package has no side effect: a bad setting in the environment
    only fails when Dagster loads the location, naming the variable."""
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in (REPO / "capacity_pipeline" / "defs").rglob("*.py")
    )
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    env = {**os.environ, "CAPACITY_BATCH_SIZE": "0", "CAPACITY_PARTITIONS_START": "someday"}
    imported = subprocess.run([sys.executable, "-c", script, *modules], env=env, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    loaded = subprocess.run(
        [sys.executable, "-c", "from capacity_pipeline.defs import defs; defs()"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode != 0
    assert "SettingError: CAPACITY_BATCH_SIZE: '0' is not a whole number >= 1" in loaded.stderr


def test_the_loader_builds_the_location_from_the_environment(monkeypatch):
    from capacity_pipeline.defs import defs as load_code_location

    monkeypatch.setenv("CAPACITY_AUTOMATION", "off")
    monkeypatch.setenv("CAPACITY_PARTITIONS_START", "2026-02-11")
    monkeypatch.setenv("CAPACITY_OBSERVE_MINUTES", "7")
    location = load_code_location()
    assert location.resolve_sensor_def("capacity_automation").default_status == dg.DefaultSensorStatus.STOPPED
    schedule = location.resolve_schedule_def("observe_capacity_samples_schedule")
    assert schedule.cron_schedule == "*/7 * * * *"
    daily = location.resolve_assets_def(asset_key(Level.DATABASE, PeriodType.DAILY)).partitions_def
    weekly = location.resolve_assets_def(asset_key(Level.DATABASE, PeriodType.WEEKLY)).partitions_def
    assert (daily.get_first_partition_key(), weekly.get_first_partition_key()) == ("2026-02-11", "2026-02-09")
