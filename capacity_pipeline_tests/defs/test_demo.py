"""`make demo` runs the real Dagster path on the embedded default (SQLite everywhere)."""

from __future__ import annotations

import dagster as dg

from capacity_pipeline.cli import main
from capacity_pipeline.defs.aggregation.assets import asset_key
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.storage.database import make_engine


def test_demo_materializes_every_period_through_dagster_and_prints_a_summary(tmp_path, capsys):
    folder = tmp_path / "demo"

    assert main(["demo", "--folder", str(folder)]) == 0

    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"Seeded {folder / 'whalefall-demo.db'}: 12 instances, ")
    header, rule, *runs = lines[3 : lines.index("", 3)]
    assert header.split()[:3] == ["period", "partition", "window"]
    assert [run.split()[0] for run in runs] == ["daily", "daily", "weekly", "monthly", "quarterly"]
    assert all("0 failed" in run and run.endswith("8/8 passed") for run in runs)
    assert "Instances that grew most in" in captured.out

    with dg.DagsterInstance.from_config(str(folder / "dagster_home")) as instance:
        for period in PeriodType:
            for level in Level:
                assert instance.get_materialized_partitions(asset_key(level, period)), (period, level)
        runs = instance.get_run_records()
        assert len(runs) == 5
    # Every demo run is final in the run center without any daemon: the steps' hooks settled them.
    center = RunCenter(make_engine(f"sqlite:///{folder / 'whalefall-demo.db'}"))
    task_runs = [center.get_run(record.dagster_run.run_id) for record in runs]
    assert [run["status"] for run in task_runs] == ["completed"] * 5
    assert all(run["completed_at"] and run["progress_completed"] == run["progress_total"] > 0 for run in task_runs)
