"""The demo's samples: seeded once a day, kept on a rerun that day, replaced (run center kept) on a later day.

The operator's day itself, through a real `dagster dev`, is e2e/test_demo_e2e.py.
"""

from __future__ import annotations

from datetime import timedelta

from capacity_pipeline.demo import DemoPaths, seed_demo
from capacity_pipeline.domain.model import Level, Scope
from capacity_pipeline.domain.periods import china_today
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.run_center.triggers import request_current_aggregation
from capacity_pipeline.domain.samples.changes import last_change, observe_changes
from capacity_pipeline.domain.samples.synthetic import seeded_through
from capacity_pipeline.domain.samples.versions import observed_days
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline_tests.support import WhaleFallData

SMALL = {"instances": 3, "databases": 2, "days": 20, "seed": 7}  # the demo's shape, test-sized


def test_the_demo_seeds_once_a_day_and_keeps_the_samples_on_a_rerun(tmp_path):
    paths = DemoPaths(tmp_path)
    today = china_today()

    first = seed_demo(paths, today, SMALL)
    engine = make_engine(paths.database_url)
    samples = WhaleFallData(engine).rows("instance_size_stats", "id")
    second = seed_demo(paths, today, SMALL)

    assert first.startswith(f"Seeded {paths.database}: {SMALL['instances']} instances, ")
    assert first.endswith(f"up to {today} (Asia/Shanghai).")
    assert second == f"Kept {paths.database}: its samples already end today ({today}, Asia/Shanghai)."
    assert WhaleFallData(engine).rows("instance_size_stats", "id") == samples
    engine.dispose()


def test_a_demo_on_a_later_day_replaces_the_samples_and_keeps_the_run_center(tmp_path):
    paths = DemoPaths(tmp_path)
    today = china_today()
    earlier = today - timedelta(days=3)
    seed_demo(paths, earlier, SMALL)
    engine = make_engine(paths.database_url)
    task_run = request_current_aggregation(engine, Scope.ALL, created_by=1)

    message = seed_demo(paths, today, SMALL)

    assert message.startswith(f"Seeded {paths.database}: ")
    assert message.endswith(f"(replacing samples that ended {earlier}; the run center's rows are kept).")
    assert seeded_through(engine) == today
    instances = WhaleFallData(engine).rows("instances", "id")
    assert [row["id"] for row in instances] == list(range(1, SMALL["instances"] + 1))
    assert RunCenter(engine).get_run(task_run)["status"] == "running"
    engine.dispose()


def test_a_demo_on_a_later_day_starts_following_its_new_samples_afresh(tmp_path):
    """New samples are not changes of the old ones: the next observation is a first one again, so
    `make dev` finds nothing to re-aggregate."""
    paths = DemoPaths(tmp_path)
    today = china_today()
    seed_demo(paths, today - timedelta(days=3), SMALL)
    engine = make_engine(paths.database_url)
    days = observed_days(today, 62)
    assert all(observe_changes(engine, level, days).first for level in Level)

    seed_demo(paths, today, SMALL)

    for level in Level:
        observation = observe_changes(engine, level, days)
        assert observation.first and observation.changed == {} and observation.instance_days > 0
    assert last_change(engine) == 0
    engine.dispose()
