"""End to end: a real `dagster dev` launches the nightly job through its GraphQL API."""

from __future__ import annotations

import time
from datetime import date

from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from capacity_pipeline.defs.aggregation.jobs import NIGHTLY_OP_NAME
from capacity_pipeline.defs.run_center.tags import NIGHTLY_JOB_NAME
from capacity_pipeline.domain.periods import PeriodType, last_window
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline_tests.support import assert_run_center_consistent, submit_job, wait_for_run

TODAY = date(2026, 7, 2)


def test_nightly_job_launched_over_graphql_succeeds_and_writes_rows(dagster_dev, pg_engine, pg_whalefall):
    load_synthetic_data(pg_engine, SyntheticSpec(instances=8, databases=3, days=200, end_date=TODAY, seed=5))
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev.port)

    run_id = submit_job(
        client,
        time.monotonic() + 60,
        job_name=NIGHTLY_JOB_NAME,
        repository_location_name="capacity_pipeline",
        run_config={"ops": {NIGHTLY_OP_NAME: {"config": {"today": TODAY.isoformat()}}}},
    )

    assert wait_for_run(client, run_id) == DagsterRunStatus.SUCCESS, dagster_dev.tail()
    assert RunCenter(pg_engine).status(run_id) == "completed"  # settled by the op's hook
    with dagster_dev.instance() as instance:
        assert_run_center_consistent(pg_engine, instance, [run_id])
    for period in PeriodType:
        start = last_window(period, TODAY).start
        for table in ("database_size_aggregations", "instance_size_aggregations"):
            rows = [r for r in pg_whalefall.rows(table) if r["period_type"] == period.value]
            assert rows and {r["period_start"] for r in rows} == {start}, (period, table)
