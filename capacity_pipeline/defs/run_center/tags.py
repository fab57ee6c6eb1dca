"""Which run-center task a Dagster run is, as its tags and job say.

A trigger's claim key, an explicit TaskRun id, the nightly job, or else a hand-made (or
automated) materialization: `task_of_run` reads them once, and every other module asks it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import Level, Scope
from capacity_pipeline.domain.run_center.task_runs import TaskRunSpec

# Tags the pipeline reads and writes on Dagster runs.
CLAIM_TAG = "capacity/claim_key"  # set by the trigger sensor: the run claims that key's TaskRuns
TASK_RUN_TAG = "capacity/task_run_id"  # the TaskRun the run was launched for (the first of a shared run)
TASK_RUN_IDS_TAG = "capacity/task_run_ids"  # every TaskRun the run serves, set when it claims them
TASK_KEY_TAG = "capacity/task_key"  # the run-center task this run is (else from the job)
TRIGGER_SOURCE_TAG = "capacity/trigger_source"  # "scheduled" for runs no person asked for
SCOPE_TAG = "capacity/scope"
CREATED_BY_TAG = "capacity/created_by"
REQUESTED_PERIOD_TAG = "capacity/requested_period_type"
SCHEDULE_TAG = "dagster/schedule_name"
# Set by the automation (and kept by its retries): the run refreshes what changed since each
# window was last aggregated, not the whole scope.
REFRESH_TAG = "capacity/refresh"
REFRESH_CHANGED = "changed"
# The changes a refresh run covers, one for all its steps: {"through": id, "since": {level: mark}}.
CHANGES_TAG = "capacity/changes"
# Set by the retry sensor (defs/aggregation/retries.py): which retry of an automated run this is
# (none: the automation's own run, attempt 0) and the failed run it re-runs.
REFRESH_ATTEMPT_TAG = "capacity/refresh_attempt"
RETRY_OF_TAG = "capacity/retry_of"
# The run queue (dagster.yaml) lets a person's run go before background work: higher first.
PRIORITY_TAG = "dagster/priority"
BACKGROUND_PRIORITY = "-1"  # the automation's runs and the nightly schedule's
MIRRORED_TASK_KEYS = (c.CURRENT_TASK_KEY, c.NIGHTLY_TASK_KEY, c.MATERIALIZE_TASK_KEY)
# The two jobs WhaleFall knows carry its task keys as their names (compat 6.2, 8).
CURRENT_JOB_NAME = c.CURRENT_TASK_KEY
NIGHTLY_JOB_NAME = c.NIGHTLY_TASK_KEY


@dataclass(frozen=True)
class RunTask:
    """The run-center task a Dagster run is, as its tags and job say."""

    task_key: str
    task_name: str
    trigger_source: str
    created_by: int | None
    scope: Scope
    requested_period_type: str | None = None

    @property
    def is_nightly(self) -> bool:
        return self.task_key == c.NIGHTLY_TASK_KEY

    def spec(self, summary: dict[str, Any]) -> TaskRunSpec:
        result_url = c.NIGHTLY_RESULT_URL if self.is_nightly else c.CURRENT_RESULT_URL[self.scope.value]
        return TaskRunSpec(
            task_key=self.task_key,
            task_name=self.task_name,
            trigger_source=self.trigger_source,
            created_by=self.created_by,
            result_url=result_url,
            summary_json=summary,
        )


_TASK_NAMES = {
    c.CURRENT_TASK_KEY: c.CURRENT_TASK_NAME,
    c.NIGHTLY_TASK_KEY: c.NIGHTLY_TASK_NAME,
    c.MATERIALIZE_TASK_KEY: c.MATERIALIZE_TASK_NAME,
}


def levels_of(asset_keys: Iterable[dg.AssetKey]) -> set[Level]:
    """The aggregation levels among these assets (a run's: the assets its job executes)."""
    names = {key.to_user_string() for key in asset_keys}
    return {level for level in Level if any(name.endswith(f"_{level.table}") for name in names)}


def task_of_run(run: dg.DagsterRun, asset_keys: Iterable[dg.AssetKey] = ()) -> RunTask:
    """The task a run is: its TASK_KEY_TAG, else its job's (the jobs are named for their task keys),
    else a materialization made by hand (or by automation). `asset_keys`: the assets the run
    executes, which give its scope when no tag does."""
    job_task = run.job_name if run.job_name in (CURRENT_JOB_NAME, NIGHTLY_JOB_NAME) else c.MATERIALIZE_TASK_KEY
    task_key = run.tags.get(TASK_KEY_TAG) or job_task
    scheduled = SCHEDULE_TAG in run.tags or run.tags.get(TRIGGER_SOURCE_TAG) == c.TRIGGER_SCHEDULED
    tagged_scope = run.tags.get(SCOPE_TAG)
    scope = Scope(tagged_scope) if tagged_scope in set(Scope) else Scope.of_levels(levels_of(asset_keys) or set(Level))
    created_by = run.tags.get(CREATED_BY_TAG, "")
    return RunTask(
        task_key=task_key,
        task_name=_TASK_NAMES.get(task_key, c.MATERIALIZE_TASK_NAME),
        trigger_source=c.TRIGGER_SCHEDULED if scheduled else c.TRIGGER_MANUAL,
        created_by=None if scheduled or not created_by.lstrip("-").isdigit() else int(created_by),
        scope=Scope.ALL if task_key == c.NIGHTLY_TASK_KEY else scope,
        requested_period_type=run.tags.get(REQUESTED_PERIOD_TAG),
    )


FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def runs_by_claim_key(instance: dg.DagsterInstance, claim_keys: list[str]) -> dict[str, dg.DagsterRun]:
    if not claim_keys:
        return {}
    runs = instance.get_runs(filters=dg.RunsFilter(tags={CLAIM_TAG: claim_keys}))
    return {run.tags[CLAIM_TAG]: run for run in runs}
