"""The forecast assets through real Dagster runs (materialize / execute_in_process) on a real
instance, against SQLite and PostgreSQL WhaleFall databases: the stored forecasts, what a
materialization shows, the calibration check, the nightly run's forecasts and their automation."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from datetime import date, timedelta

import dagster as dg
import pytest
from sqlalchemy import text

from capacity_pipeline.defs.aggregation.jobs import NIGHTLY_FORECAST_OP_NAME, NIGHTLY_OP_NAME
from capacity_pipeline.defs.forecast.assets import forecast_key
from capacity_pipeline.defs.forecast.metadata import CHART_KEY, table_key, totals_key
from capacity_pipeline.defs.samples.sources import stats_key
from capacity_pipeline.domain.forecast.limits import set_limit
from capacity_pipeline.domain.forecast.store import read_forecasts
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, china_today
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline_tests.support import (
    AGGREGATION_ASSETS,
    FORECAST_ASSETS,
    code_location_definitions,
    dagster_resources,
    observe_samples,
    resolve_job,
    task_runs,
)

AS_OF = date(2026, 6, 30)


def _days(count: int, last: date = AS_OF) -> list[date]:
    return [last - timedelta(days=count - 1 - i) for i in range(count)]


@pytest.fixture
def fleet(engine, whalefall):
    """Instance 7 (database orders, 1000 MB + 10 a day, limit 2000 MB), instance 8 (database app,
    1000 MB + 20 a day, no limit), instance 9 (database new, 5 samples): 60 days up to AS_OF, and
    each instance's total the sum of its databases."""
    series = {7: ("orders", 10, 60), 8: ("app", 20, 60), 9: ("new", 1, 5)}
    for instance_id, (database, growth, count) in series.items():
        whalefall.instance(instance_id)
        samples = [(day, 1000 + growth * i) for i, day in enumerate(_days(count))]
        whalefall.database_stats(instance_id, database, [(day, size, None) for day, size in samples])
        whalefall.instance_stats(instance_id, [(day, size, 1) for day, size in samples])
    set_limit(engine, 7, "orders", 2000)
    set_limit(engine, 8, None, 100_000)  # far away: the instance level ranks by growth below it
    return whalefall


def _materialize(engine, instance, partition: date, levels=tuple(Level), **resource_settings):
    return dg.materialize(
        [FORECAST_ASSETS[level] for level in levels],
        partition_key=partition.isoformat(),
        resources=dagster_resources(engine, **resource_settings),
        instance=instance,
    )


def _metadata(instance: dg.DagsterInstance, level: Level) -> dict:
    event = instance.get_latest_materialization_event(forecast_key(level))
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def _svg(markdown: str) -> ET.Element:
    [encoded] = re.findall(r"\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return ET.fromstring(base64.b64decode(encoded))


def test_a_partition_stores_the_days_forecasts_and_shows_them_at_a_glance(engine, fleet, dagster_instance):
    result = _materialize(engine, dagster_instance, AS_OF)

    assert result.success
    rows = [row.as_json() for row in read_forecasts(engine, level=Level.DATABASE, as_of=AS_OF)]
    assert [(r["instance_id"], r["horizon_days"], r["p50_mb"], r["quality"]) for r in rows] == [
        (7, 30, 1890.0, "ok"),  # 1000 + 10 * 59 on the as-of day, 10 MB a day
        (7, 90, 2490.0, "ok"),
        (7, 180, 3390.0, "ok"),
        (8, 30, 2780.0, "ok"),
        (8, 90, 3980.0, "ok"),
        (8, 180, 5780.0, "ok"),
        (9, 30, None, "insufficient_data"),
        (9, 90, None, "insufficient_data"),
        (9, 180, None, "insufficient_data"),
    ]

    database = _metadata(dagster_instance, Level.DATABASE)
    assert (database["series"], database["forecast"], database["insufficient_data"]) == (3, 2, 1)
    assert (database["as_of_date"], database["rows_written"]) == ("2026-06-30", 9)
    # The fleet's P50 totals, as floats (the Plots tab draws them): the ok series' P50s added up.
    totals = {h: database[totals_key(h)] for h in (30, 90, 180)}
    assert totals == {30: 1890.0 + 2780.0, 90: 2490.0 + 3980.0, 180: 3390.0 + 5780.0}
    event = dagster_instance.get_latest_materialization_event(forecast_key(Level.DATABASE))
    assert isinstance(event.asset_materialization.metadata[totals_key(30)], dg.FloatMetadataValue)
    assert event.asset_materialization.partition == "2026-06-30"

    # The table: the database at its limit first (41 days: 1590 + 10 * 41 = 2000), then by growth.
    table = database[table_key(Level.DATABASE)].splitlines()
    assert table[2].startswith("| # | instance | database | limit MB | full in P10 / P50 / P90 (days) |")
    assert (
        table[4]
        == "| 1 | 7 instance-7 | orders | 2,000 | 41 / 41 / 41 | 2026-08-10 | 10.000 | 1,890 | 2,490 | 3,390 | - |"
    )
    assert table[5] == "| 2 | 8 instance-8 | app | - | - | - | 20.000 | 2,780 | 3,980 | 5,780 | - |"
    assert len(table) == 6  # the refused series has no place in the ranking

    # The chart of the series nearest its limit: a well-formed SVG with its samples, band and limit.
    chart = database[CHART_KEY]
    assert chart.startswith("**instance 7 (instance-7), database orders** (nearest its limit)")
    svg = _svg(chart)
    texts = [element.text for element in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "limit 2,000 MB" in texts and "P50 full 2026-08-10" in texts and "as of 2026-06-30" in texts
    [samples] = [p for p in svg.iter("{http://www.w3.org/2000/svg}polyline") if p.get("stroke-width") == "1.8"]
    assert len(samples.get("points").split()) == 60  # every sample of the 90 days shown (60 here)
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}polygon"))) == 1  # the band

    # The instance level has its own table and chart: no instance reaches a limit, so by growth.
    instance = _metadata(dagster_instance, Level.INSTANCE)
    assert [line.split(" | ")[1] for line in instance[table_key(Level.INSTANCE)].splitlines()[4:]] == [
        "8 instance-8",
        "7 instance-7",
    ]
    assert instance[CHART_KEY].startswith("**instance 8 (instance-8)** (fastest growing)")

    evaluations = result.get_asset_check_evaluations()
    assert {(e.asset_key, e.check_name, e.passed) for e in evaluations} == {
        (forecast_key(level), "forecast_calibration", True) for level in Level
    }
    assert {e.partition for e in evaluations} == {"2026-06-30"}
    assert task_runs(engine) == 0  # a forecast is not a run-center task


def _ledger(whalefall, inside: int, total: int, as_of: date) -> None:
    """`total` databases of instance 7 on one line (1000 MB + 10 a day) up to `as_of`; after it,
    `inside` of them go on along the line and the others lose 500 MB (a purge nobody forecast)."""
    whalefall.instance(7)
    days = _days(91, as_of + timedelta(days=30))
    for n in range(total):
        sizes = [1000 + 10 * i - (500 if n >= inside and day > as_of else 0) for i, day in enumerate(days)]
        whalefall.database_stats(7, f"db{n}", [(day, size, None) for day, size in zip(days, sizes, strict=True)])


@pytest.mark.parametrize(("inside", "passed"), [(4, True), (1, False)], ids=["holds", "misses"])
def test_the_calibration_check_warns_when_the_band_misses_and_passes_when_it_holds(
    engine, whalefall, dagster_instance, inside, passed
):
    first = AS_OF - timedelta(days=30)
    _ledger(whalefall, inside, 5, first)
    assert _materialize(engine, dagster_instance, first, (Level.DATABASE,), forecast_horizons=[30]).success

    # Thirty days later the first day's forecasts are scored against that day's samples.
    result = _materialize(engine, dagster_instance, AS_OF, (Level.DATABASE,), forecast_horizons=[30])

    assert result.success  # a warning does not fail the run
    [evaluation] = result.get_asset_check_evaluations()
    assert (evaluation.passed, evaluation.severity, evaluation.partition) == (
        passed,
        dg.AssetCheckSeverity.WARN,
        AS_OF.isoformat(),
    )
    metadata = {key: value.value for key, value in evaluation.metadata.items()}
    assert metadata["scored_30d"] == 5
    assert metadata["inside_p10_p90_percent_30d"] == inside * 20.0
    # P50 1900 MB on the target day (1600 on the first day + 10 a day): the purged are 500 MB off their 1400.
    assert metadata["p50_error_percent_30d"] == pytest.approx((5 - inside) / 5 * 500 / 1400 * 100, abs=1e-3)
    verdict = "calibrated" if passed else "band too narrow"
    assert metadata["ledger"].splitlines()[2] == (
        f"| 30 d | 5 | {inside * 20.0:.1f} % ({inside}) | {metadata['p50_error_percent_30d']:.2f} % | "
        f"{AS_OF} .. {AS_OF} | {verdict} |"
    )


def test_the_check_alone_scores_the_latest_partition_and_keeps_its_verdict(engine, whalefall, dagster_instance):
    first = AS_OF - timedelta(days=30)
    _ledger(whalefall, 1, 5, first)
    for day in (first, AS_OF):
        assert _materialize(engine, dagster_instance, day, (Level.DATABASE,), forecast_horizons=[30]).success
    check = dg.AssetCheckKey(forecast_key(Level.DATABASE), "forecast_calibration")

    result = dg.materialize(  # the Checks tab's "Execute": the check without its asset or a partition
        [FORECAST_ASSETS[Level.DATABASE]],
        selection=dg.AssetSelection.checks(check),
        resources=dagster_resources(engine, forecast_horizons=[30]),
        instance=dagster_instance,
    )

    assert result.success
    assert dagster_instance.get_latest_materialization_event(check.asset_key).run_id != result.run_id
    recorded, summary = result.get_asset_check_evaluations()
    assert (recorded.partition, recorded.passed, recorded.metadata["inside_p10_p90_percent_30d"].value) == (
        "2026-06-30",
        False,
        20.0,
    )
    assert (summary.partition, summary.passed, summary.metadata["checked_partition"].value) == (
        None,
        False,
        "2026-06-30",
    )


def test_a_run_of_roll_ups_and_forecasts_together_has_the_roll_ups_task_run_only(engine, fleet, dagster_instance):
    daily = [AGGREGATION_ASSETS[level, PeriodType.DAILY] for level in Level]
    result = dg.materialize(
        [*daily, *FORECAST_ASSETS.values()],
        partition_key=AS_OF.isoformat(),
        resources=dagster_resources(engine),
        instance=dagster_instance,
    )

    assert result.success
    [task_run_id] = RunClaims(engine).task_runs_of(result.run_id)
    run = RunCenter(engine).get_run(task_run_id)
    assert (task_runs(engine), run["task_key"], run["status"]) == (1, "capacity_materialize", "completed")
    assert run["summary_json"]["common"]["inputs"] == {"scope": "all"}  # from the roll-ups' levels alone
    assert [item["instance_id"] for item in RunCenter(engine).get_items(task_run_id)] == [7, 8, 9]
    assert len(list(read_forecasts(engine, as_of=AS_OF))) == 2 * 9


def test_the_nightly_run_forecasts_the_day_it_closes_after_its_task_run_is_final(engine, fleet, dagster_instance):
    today = AS_OF + timedelta(days=1)
    result = resolve_job(engine, "calculate_database").execute_in_process(
        run_config={
            "ops": {op: {"config": {"today": today.isoformat()}} for op in (NIGHTLY_OP_NAME, NIGHTLY_FORECAST_OP_NAME)}
        },
        instance=dagster_instance,
    )

    assert result.success
    for level in Level:
        event = dagster_instance.get_latest_materialization_event(forecast_key(level))
        assert event.asset_materialization.partition == "2026-06-30"  # the day the run closes
        assert event.run_id == result.run_id
    checks = [e for e in result.get_asset_check_evaluations() if e.check_name == "forecast_calibration"]
    assert {(e.asset_key, e.partition) for e in checks} == {(forecast_key(level), "2026-06-30") for level in Level}
    assert [row.p50_mb for row in read_forecasts(engine, level=Level.DATABASE, instance_id=7)] == [
        1890.0,
        2490.0,
        3390.0,
    ]

    # One TaskRun, as before: WhaleFall's nightly task, final before the forecasts began.
    [task_run_id] = RunClaims(engine).task_runs_of(result.run_id)
    run = RunCenter(engine).get_run(task_run_id)
    assert (task_runs(engine), run["task_key"], run["status"]) == (1, "calculate_database", "completed")
    assert "forecast" not in str(run["summary_json"])
    steps = [
        (event.step_key, event.event_type)
        for event in result.all_events
        if event.event_type in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS)
    ]
    assert steps == [
        (NIGHTLY_OP_NAME, dg.DagsterEventType.STEP_START),
        (NIGHTLY_OP_NAME, dg.DagsterEventType.STEP_SUCCESS),
        (NIGHTLY_FORECAST_OP_NAME, dg.DagsterEventType.STEP_START),
        (NIGHTLY_FORECAST_OP_NAME, dg.DagsterEventType.STEP_SUCCESS),
    ]
    # While it forecast, the run still beat on its run-center link (a reconciler does not take it for dead).
    aggregated = [
        e.timestamp
        for e in dagster_instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        if e.step_key == NIGHTLY_OP_NAME
    ]
    last_beat = RunClaims(engine).last_beats([result.run_id])[result.run_id]
    assert last_beat.timestamp() > aggregated[0]


def test_todays_forecast_follows_todays_samples_and_past_days_stay_as_made(pg_engine, pg_whalefall, dagster_instance):
    today = china_today()
    load_synthetic_data(pg_engine, SyntheticSpec(3, 2, 30, today, seed=5, inactive_share=0, deleted_share=0))
    definitions = code_location_definitions(pg_engine, observe_days=10)
    observe_samples(definitions, dagster_instance)  # records every observed day: nothing automates yet
    first = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance)
    assert first.total_requested == 0

    with pg_engine.begin() as connection:  # today's instance samples change; a past day's database samples
        connection.execute(
            text("UPDATE instance_size_stats SET total_size_mb = total_size_mb + 1 WHERE collected_date = :day"),
            {"day": today},
        )
        connection.execute(
            text("UPDATE database_size_stats SET size_mb = size_mb + 1 WHERE collected_date = :day"),
            {"day": today - timedelta(days=3)},
        )
    observe_samples(definitions, dagster_instance)
    result = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance, cursor=first.cursor)

    assert set(result.get_requested_partitions(forecast_key(Level.INSTANCE))) == {today.isoformat()}
    assert set(result.get_requested_partitions(forecast_key(Level.DATABASE))) == set()
    graph = definitions.resolve_asset_graph()
    for level in Level:
        assert graph.get(forecast_key(level)).parent_keys == {stats_key(level)}
    sensor = definitions.resolve_sensor_def("capacity_forecast_automation")
    assert sensor.asset_selection.resolve(graph) == {forecast_key(level) for level in Level}
