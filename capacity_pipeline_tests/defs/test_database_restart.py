"""A Dagster run whose WhaleFall database restarts under it: the batch that lost its connection is
run again once the server is back, and the run and its TaskRun end as if nothing happened.

On a private PostgreSQL server (the machine's is shared and never restarted).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import date

import dagster as dg
from sqlalchemy import text

from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.month_partitions import ensure_month_partitions
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import AGGREGATION_ASSETS, WhaleFallData, dagster_resources, wait_until

DAY = date(2026, 7, 1)
PERIOD_LOCK = f"capacity_pipeline.database_size_aggregations.daily.{DAY}"


def _waiting_on_a_lock(engine) -> int:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'capacity_pipeline' "
                "AND wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar()


def test_a_run_survives_a_restart_of_the_whalefall_database_in_the_middle_of_a_batch(
    private_postgres, dagster_instance
):
    engine = make_engine(private_postgres.new_database())
    create_schema(engine)
    whalefall = WhaleFallData(engine)
    for instance_id in (1, 2, 3):
        whalefall.instance(instance_id)
        whalefall.database_stats(instance_id, "app", [(DAY, 100 * instance_id, 90)])
    ensure_month_partitions(engine, ["database_size_aggregations"], [DAY])
    # Another session holds the period's lock: the run's first batch waits for it inside its
    # transaction, until the restart ends both sessions.
    holder = engine.connect()
    holder.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), {"key": PERIOD_LOCK})
    resources = dagster_resources(engine, batch_size=1, statement_timeout_seconds=60, heartbeat_seconds=0.5)
    try:
        with ThreadPoolExecutor(1) as worker:
            run = worker.submit(
                dg.materialize,
                [AGGREGATION_ASSETS[Level.DATABASE, PeriodType.DAILY]],
                partition_key=DAY.isoformat(),
                resources=resources,
                instance=dagster_instance,
                raise_on_error=False,
            )
            wait_until(lambda: _waiting_on_a_lock(engine), 30, "the run's first batch waiting inside its transaction")
            private_postgres.restart()
            result = run.result(timeout=120)
    finally:
        with suppress(Exception):  # its session died with the restart
            holder.close()

    assert result.success
    task_run = RunCenter(engine).get_run(result.run_id)
    items = RunCenter(engine).get_items(result.run_id)
    assert task_run["status"] == "completed" and task_run["completed_at"] is not None
    assert [item["status"] for item in items] == ["completed"] * 3
    counters = (task_run["progress_total"], task_run["progress_completed"], task_run["progress_failed"])
    assert counters == (3, 3, 0)
    rows = whalefall.rows("database_size_aggregations")
    assert [(row["instance_id"], row["avg_size_mb"]) for row in rows] == [(1, 100), (2, 200), (3, 300)]
    engine.dispose()
