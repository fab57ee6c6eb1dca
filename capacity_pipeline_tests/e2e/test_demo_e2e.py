"""`make demo` is an operator's day through a real `dagster dev` on the embedded default (SQLite
everywhere): the samples are observed first, then the location's nightly and current-period jobs
run, as runs the UI can re-execute; nothing of an earlier day is deleted."""

from __future__ import annotations

import dagster as dg

from capacity_pipeline.cli import main
from capacity_pipeline.defs.aggregation.assets import asset_key
from capacity_pipeline.demo import DEMO_SPEC, DEMO_TAG, DemoPaths
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, china_today
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import code_location_definitions, observe_samples


@dg.op
def earlier_work() -> None:
    """Stands for whatever ran in the demo's Dagster home before (an earlier demo, a run by hand)."""


@dg.job
def earlier_job() -> None:
    earlier_work()


def test_the_demo_observes_then_runs_the_locations_jobs_and_keeps_what_was_there(tmp_path, capsys):
    paths = DemoPaths(tmp_path / "demo")
    today = china_today()
    # What an earlier demo today left: its samples and a run in the Dagster home.
    paths.dagster_home.mkdir(parents=True)
    engine = make_engine(paths.database_url)
    create_schema(engine)
    load_synthetic_data(engine, SyntheticSpec(end_date=today, **DEMO_SPEC))
    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        earlier = earlier_job.execute_in_process(instance=instance).run_id
    capsys.readouterr()  # that run's own log lines

    assert main(["demo", "--folder", str(paths.folder)]) == 0

    captured = capsys.readouterr()
    assert captured.err == ""  # no progress lines when stderr is not a terminal
    lines = captured.out.splitlines()
    assert lines[0] == f"Kept {paths.database}: its samples already end today ({today}, Asia/Shanghai)."
    assert lines[1] == f"Dagster instance: {paths.dagster_home} (SQLite storage; 1 run from before kept)."
    header, _rule, *rows = lines[3 : lines.index("", 3)]
    assert header.split()[:3] == ["job", "period", "partition"]
    assert [row.split()[:2] for row in rows] == [
        ["calculate_database", "daily"],
        ["calculate_database", "weekly"],
        ["calculate_database", "monthly"],
        ["calculate_database", "quarterly"],
        ["capacity_aggregate_current", "daily"],
    ]
    assert rows[-1].split()[2] == today.isoformat()
    # Four checks per partition and level, and the roll-ups' freshness: 10 per period.
    assert all("0 failed" in row and row.endswith("10/10 passed") for row in rows), rows

    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        records = sorted(instance.get_run_records(), key=lambda record: record.create_timestamp)
        assert records[0].dagster_run.run_id == earlier
        demo = [record for record in records if record.dagster_run.tags.get(DEMO_TAG) == today.isoformat()]
        by_job = {record.dagster_run.job_name: record for record in demo}
        jobs = [
            "observe_capacity_samples",
            "observe_quarterly_baselines",
            "calculate_database",
            "capacity_aggregate_current",
        ]
        assert sorted(by_job) == sorted(jobs)
        assert len(demo) == 4 and all(record.dagster_run.status == dg.DagsterRunStatus.SUCCESS for record in demo)
        # Launched through the location's code server: the UI finds the job and can re-execute the run.
        assert {record.dagster_run.remote_job_origin.location_name for record in demo} == {"capacity_pipeline"}
        observed = max(by_job[job].end_time for job in ("observe_capacity_samples", "observe_quarterly_baselines"))
        assert min(by_job[job].start_time for job in ("calculate_database", "capacity_aggregate_current")) > observed
        for period in PeriodType:
            for level in Level:
                assert instance.get_materialized_partitions(asset_key(level, period)), (period, level)
        aggregation_runs = [by_job["calculate_database"].dagster_run, by_job["capacity_aggregate_current"].dagster_run]
        # `make dev` next: its automation starts, the samples are observed on schedule, and there is
        # nothing to re-aggregate until a sample changes.
        definitions = code_location_definitions(engine)
        first = dg.evaluate_automation_conditions(defs=definitions, instance=instance)
        observe_samples(definitions, instance)
        after = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=first.cursor)
        assert (first.total_requested, after.total_requested) == (0, 0)
    # The aggregation runs are final in the run center (hand-made runs: the TaskRun has the run's id),
    # settled by their steps' hooks.
    center = RunCenter(engine)
    for run in aggregation_runs:
        task_run = center.get_run(run.run_id)
        assert (task_run["task_key"], task_run["status"]) == (run.job_name, "completed")
        assert task_run["completed_at"] and task_run["progress_completed"] == task_run["progress_total"] > 0
    engine.dispose()
