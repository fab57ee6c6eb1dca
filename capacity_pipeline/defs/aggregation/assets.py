"""The aggregation assets: one per level and period type, partitioned by period window.

Materializing a partition (or a range of them, in a backfill) runs the domain's engine for each
window at the asset's level, mirrored into the run center (defs/run_center), then evaluates the
asset's checks on each partition written, also when some instances failed (the checks look at
what was written; the step fails after them). Each asset depends on the samples it reads: its own
window and the previous one (the change fields compare with it), through partition mappings, so
the lineage is true and automation re-aggregates exactly what a changed day feeds. The asset holds
no SQL of its own.
"""

import json
import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg

from capacity_pipeline.defs.aggregation import checks
from capacity_pipeline.defs.aggregation.automation import DEFAULT_MAX_QUEUED, aggregation_condition
from capacity_pipeline.defs.aggregation.freshness import report_freshness
from capacity_pipeline.defs.aggregation.metadata import (
    RefreshReason,
    failure_description,
    failures_metadata,
    growth_metadata,
    refresh_summary,
    report_metadata,
)
from capacity_pipeline.defs.keys import asset_key, baseline_key, stats_key
from capacity_pipeline.defs.partitions import PartitionsByPeriod, window_for_key
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center.hooks import RUN_CENTER_HOOKS
from capacity_pipeline.defs.run_center.step import InstancesFailed, RunCenterStep
from capacity_pipeline.defs.run_center.tags import CHANGES_TAG, REFRESH_CHANGED, REFRESH_TAG, RunTask, task_of_run
from capacity_pipeline.defs.samples.sources import GROUP
from capacity_pipeline.domain.aggregation.engine import Batch
from capacity_pipeline.domain.aggregation.refresh import Refresh, plan_refresh
from capacity_pipeline.domain.model import AggregationReport, Level, WindowPlan, merge_outcomes
from capacity_pipeline.domain.periods import PeriodType, Window
from capacity_pipeline.domain.run_center.payloads import current_phase_result, current_summary
from capacity_pipeline.domain.run_center.task_runs import ItemPhase
from capacity_pipeline.domain.samples.instances import list_active_instances

_SPEC_SECTION = {Level.DATABASE: "compat 4.1", Level.INSTANCE: "compat 4.2"}

# How many partitions one backfill run takes: each is one set-based pass, so runs stay short.
_PARTITIONS_PER_BACKFILL_RUN = {
    PeriodType.DAILY: 31,
    PeriodType.WEEKLY: 13,
    PeriodType.MONTHLY: 6,
    PeriodType.QUARTERLY: 2,
}


def aggregation_selection(periods: tuple[PeriodType, ...] = tuple(PeriodType)) -> dg.AssetSelection:
    """The aggregation assets of these periods, at both levels."""
    return dg.AssetSelection.assets(*(asset_key(level, period) for period in periods for level in Level))


def _deps(level: Level, period: PeriodType) -> list[dg.AssetDep]:
    """The samples a partition reads: its window and the previous one (compat 3)."""
    if period is PeriodType.QUARTERLY:
        # The previous window of a quarter is not a whole quarter (compat Q1): it is the baseline
        # source's partition of the quarter before.
        return [
            dg.AssetDep(stats_key(level), partition_mapping=_window(start_offset=0)),
            dg.AssetDep(baseline_key(level), partition_mapping=_window(start_offset=-1, end_offset=-1)),
        ]
    return [dg.AssetDep(stats_key(level), partition_mapping=_window(start_offset=-1))]


def _window(start_offset: int, end_offset: int = 0) -> dg.TimeWindowPartitionMapping:
    # Offsets count downstream periods; the first partition's previous window predates the samples.
    return dg.TimeWindowPartitionMapping(
        start_offset=start_offset, end_offset=end_offset, allow_nonexistent_upstream_partitions=True
    )


def build_aggregation_asset(
    level: Level,
    period: PeriodType,
    partitions: dg.TimeWindowPartitionsDefinition,
    *,
    automate_current_periods: bool,
    max_queued: int = DEFAULT_MAX_QUEUED,
) -> dg.AssetsDefinition:
    key = asset_key(level, period)

    @dg.multi_asset(
        name=key.to_python_identifier(),
        specs=[
            dg.AssetSpec(
                key,
                group_name=GROUP,
                deps=_deps(level, period),
                kinds={"sql"},
                automation_condition=aggregation_condition(
                    period, automate_current_periods=automate_current_periods, max_queued=max_queued
                ),
                description=f"WhaleFall's {level.table} rows for {period.value} periods ({_SPEC_SECTION[level]}).",
            )
        ],
        check_specs=checks.check_specs(key, partitions),
        can_subset=True,  # the checks can run alone (the Checks tab's "Execute")
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(_PARTITIONS_PER_BACKFILL_RUN[period]),
        hooks=RUN_CENTER_HOOKS,
    )
    def aggregation(context: dg.AssetExecutionContext, whalefall: WhaleFallDatabase) -> Iterator:
        selected_checks = [check.name for check in context.selected_asset_check_keys]
        failed = None
        if key in context.selected_asset_keys:
            try:
                yield _materialize(
                    context, whalefall, key, level, period, automate_current_periods=automate_current_periods
                )
            except InstancesFailed as failure:
                failed = failure  # the other instances' rows are written: the checks look at them first
            partition_keys = context.partition_keys
        else:
            partition_keys = _partitions_to_check(context, key)
        engine = whalefall.connected_engine()
        evaluations = [
            evaluation
            for partition_key in partition_keys
            for evaluation in checks.evaluate(engine, key, level, period, partition_key, selected_checks)
        ]
        if failed is not None:
            for evaluation in evaluations:  # recorded on their partitions, then the step fails
                context.log_event(evaluation)
            raise failed
        if context.has_partition_key:  # one partition: the step's own results, recorded on it
            yield from (checks.as_result(evaluation) for evaluation in evaluations)
            return
        for evaluation in evaluations:  # a range, or no partition: each result on its partition
            context.log_event(evaluation)
        if key not in context.selected_asset_keys:
            # The checks alone, run without a partition: their own results say which partition they saw.
            for name in selected_checks:
                results = [e for e in evaluations if e.check_name == name]
                yield dg.AssetCheckResult(
                    asset_key=key,
                    check_name=name,
                    passed=all(e.passed for e in results),
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"checked_partitions": ", ".join(partition_keys) or "none materialized yet"},
                )

    return aggregation


def _partitions_to_check(context: dg.AssetExecutionContext, key: dg.AssetKey) -> list[str]:
    """The partitions a run of the checks alone looks at: the run's (one or a range), else the
    latest materialized."""
    if context.has_partition_key or context.has_partition_key_range:
        return context.partition_keys
    latest = context.instance.get_latest_materialization_event(key)
    partition = latest.dagster_event.partition if latest is not None and latest.dagster_event else None
    return [partition] if partition else []


def _materialize(
    context: dg.AssetExecutionContext,
    whalefall: WhaleFallDatabase,
    key: dg.AssetKey,
    level: Level,
    period: PeriodType,
    *,
    automate_current_periods: bool,
) -> dg.MaterializeResult:
    """Aggregate each partition of the run at this asset's level, mirrored into the run center."""
    task = task_of_run(context.run, context.job_def.asset_layer.selected_asset_keys)
    windows = [window_for_key(period, key) for key in context.partition_keys]
    span = Window(windows[0].start, windows[-1].end)
    plans = [WindowPlan(period, window, (level,), whalefall.corrected_quarter) for window in windows]
    refresh = _refresh_of_run(context, whalefall, task.scope.levels, period, windows)
    why, why_summary = _why(context, whalefall, refresh, level, task)

    def phase_results(batch: Batch) -> list[ItemPhase]:
        """One result per instance for this level over all the run's windows (compat 6.2 payloads)."""
        merged = merge_outcomes(batch.outcomes.values())
        return [
            ItemPhase(instance_id, level.value, current_phase_result(outcome, level, task.scope, period, span))
            for instance_id, outcome in merged.items()
        ]

    with RunCenterStep(
        context.op_execution_context,
        whalefall,
        task,
        initial_summary=lambda: current_summary(task.task_key, task.scope),
        only=refresh.instance_ids if refresh is not None else None,
    ) as step:
        step.write_summaries(
            lambda _: current_summary(
                task.task_key,
                task.scope,
                period_type=period,
                requested_period_type=task.requested_period_type,
                window=span,
                extra={**whalefall.run_url(context.run.run_id), **why_summary},
            )
        )
        reports = step.aggregate(
            plans,
            phase_results,
            [phase.value for phase in task.scope.levels],
            changes_through=refresh.through if refresh is not None else None,
            only=refresh.instance_ids_at(level) if refresh is not None else None,
        )
    # The windows written are fresh now (or still stale, for what failed): the freshness check says so.
    report_freshness(
        context.instance,
        step.engine,
        {period: key},
        level,
        whalefall,
        automate_current_periods=automate_current_periods,
    )
    return _result(context, step, reports, key, level, why)


def _refresh_of_run(
    context: dg.AssetExecutionContext,
    whalefall: WhaleFallDatabase,
    levels: tuple[Level, ...],
    period: PeriodType,
    windows: list[Window],
) -> Refresh | None:
    """An automated run of one partition refreshes what changed since the window was last
    aggregated; an explicit materialization, a backfill, the nightly job and the API do the
    whole scope (None). The run's steps share one cursor (a run tag), so every level of the run
    covers the same changes and the same instances."""
    if context.run.tags.get(REFRESH_TAG) != REFRESH_CHANGED or len(windows) != 1:
        return None
    engine = whalefall.connected_engine()
    plan = WindowPlan(period, windows[0], levels, whalefall.corrected_quarter)
    tags = (context.instance.get_run_by_id(context.run.run_id) or context.run).tags
    if CHANGES_TAG in tags:  # a later step of the run: the same changes as the first
        cursor = json.loads(tags[CHANGES_TAG])
        marks = {Level(level): mark for level, mark in cursor["since"].items()}
        return plan_refresh(engine, plan, through=cursor["through"], marks=marks)
    refresh = plan_refresh(engine, plan)
    cursor = {"through": refresh.through, "since": {level.value: mark for level, mark in refresh.marks.items()}}
    context.instance.add_run_tags(context.run.run_id, {CHANGES_TAG: json.dumps(cursor, sort_keys=True)})
    return refresh


def _why(
    context: dg.AssetExecutionContext,
    whalefall: WhaleFallDatabase,
    refresh: Refresh | None,
    level: Level,
    task: RunTask,
) -> tuple[RefreshReason, dict[str, Any]]:
    """What triggered this materialization: for its metadata (this level), and for the TaskRun's
    summary (the run)."""
    in_scope = len(list_active_instances(whalefall.connected_engine()))
    how = "a backfill" if "dagster/backfill" in context.run.tags else f"a {task.task_name} run"
    summary = refresh_summary(refresh, in_scope) if refresh is not None else {}
    return RefreshReason.of(refresh, level, in_scope, how), summary


def _result(
    context: dg.AssetExecutionContext,
    step: RunCenterStep,
    reports: list[AggregationReport],
    key: dg.AssetKey,
    level: Level,
    why: RefreshReason,
) -> dg.MaterializeResult:
    failed = [report for report in reports if report.failures]
    for report in failed:
        context.log.error(failure_description(report))
    if failed:
        metadata = {**report_metadata(failed[0], level), **failures_metadata(failed[0]), **why.metadata()}
        raise InstancesFailed(description=failure_description(failed[0]), metadata=metadata)
    context.log.info(f"Why: {why.text}")
    if len(reports) == 1:
        [report] = reports
        return dg.MaterializeResult(
            metadata={
                **why.metadata(),
                **report_metadata(report, level),
                **growth_metadata(step.engine, report, level),
            }
        )
    return dg.MaterializeResult(
        asset_key=key,
        metadata={
            "partitions": dg.MetadataValue.int(len(reports)),
            "window": str(Window(reports[0].window.start, reports[-1].window.end)),
            "rows_written": dg.MetadataValue.int(sum(r.rows_written(level) for r in reports)),
            "seconds": dg.MetadataValue.float(round(sum(r.seconds for r in reports), 3)),
            **why.metadata(),
        },
    )


AggregationAssets = dict[tuple[Level, PeriodType], dg.AssetsDefinition]


def build_aggregation_assets(
    partitions: PartitionsByPeriod, *, automate_current_periods: bool, max_queued: int = DEFAULT_MAX_QUEUED
) -> AggregationAssets:
    """The eight aggregation assets (every period at both levels), each with its checks."""
    with warnings.catch_warnings():
        # Labelled in 1.13 (pinned exactly): BackfillPolicy and partition mappings that allow
        # missing upstream partitions (beta), partitioned asset checks (preview).
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return {
            (level, period): build_aggregation_asset(
                level,
                period,
                partitions[period],
                automate_current_periods=automate_current_periods,
                max_queued=max_queued,
            )
            for period in PeriodType
            for level in Level
        }
