"""What a materialization shows in the Dagster UI: why it ran, counts, windows, timings, top growth, failures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.domain.aggregation.refresh import Refresh, changed_days_text
from capacity_pipeline.domain.aggregation.top_growth import top_growth
from capacity_pipeline.domain.model import AggregationReport, Level

if TYPE_CHECKING:
    import pandas as pd


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown pipe table (the UI renders it)."""
    if frame.empty:
        return "_no rows_"
    header = "| " + " | ".join(str(column) for column in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(str(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def report_metadata(report: AggregationReport, level: Level) -> dict[str, Any]:
    """The counts and windows of one run at one level."""
    summary = report.summary()
    return {
        "window": str(report.window),
        "previous_window": str(report.previous_window),
        "rows_written": dg.MetadataValue.int(report.rows_written(level)),
        "instances_processed": dg.MetadataValue.int(summary["instances"]["processed"]),
        "instances_skipped": dg.MetadataValue.int(summary["instances"]["skipped"]),
        "instances_failed": dg.MetadataValue.int(summary["instances"]["failed"]),
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
    }


def failures_metadata(report: AggregationReport) -> dict[str, Any]:
    failed = report.failures
    if not failed:
        return {}
    import pandas as pd  # only when there are failures to show

    frame = pd.DataFrame(
        [{"instance_id": o.instance.id, "instance": o.instance.name, "error": o.error} for o in failed]
    )
    return {"failures": dg.MetadataValue.md(markdown_table(frame))}


def growth_metadata(engine: Engine, report: AggregationReport, level: Level) -> dict[str, Any]:
    """The ten rows of this level (databases, or instances) that grew most in the period written."""
    frame = top_growth(engine, level, report.period_type.value, report.window.start, limit=10)
    return {f"top_growing_{level.value}s": dg.MetadataValue.md(markdown_table(frame))}


def failure_description(report: AggregationReport) -> str:
    failed = report.failures
    first = failed[0]
    return (
        f"{len(failed)} of {report.instances_total} instances failed in {report.period_type.value} "
        f"{report.window}; first: instance {first.instance.id} ({first.instance.name}): {first.error}"
    )


@dataclass(frozen=True)
class RefreshReason:
    """Why a materialization re-aggregates what it does at its level: a refresh of what changed, or
    the whole scope."""

    text: str
    reaggregated: int  # instances re-aggregated at this level
    in_scope: int  # active instances
    changed: dict[int, tuple[date, ...]] | None = None  # this level's changed instances and days (a refresh)
    through: int | None = None  # the latest change the refresh follows

    @classmethod
    def of(cls, refresh: Refresh | None, level: Level, in_scope: int, whole_scope: str) -> RefreshReason:
        if refresh is None:
            return cls(f"{whole_scope}: the whole scope, all {in_scope} instance(s)", in_scope, in_scope)
        ids = refresh.instance_ids_at(level)
        if ids is None:
            return cls(refresh.describe(in_scope), in_scope, in_scope, through=refresh.through)
        changed = refresh.changed_at.get(level, {})
        return cls(refresh.describe(in_scope), len(ids), in_scope, changed, refresh.through)

    def metadata(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "trigger": self.text,
            "instances_reaggregated": dg.MetadataValue.int(self.reaggregated),
            "instances_in_scope": dg.MetadataValue.int(self.in_scope),
        }
        if self.changed is not None:
            values["changed_instance_days"] = dg.MetadataValue.int(sum(len(days) for days in self.changed.values()))
            values["changed_days"] = changed_days_text(self.changed) or "none at this level"
        if self.through is not None:
            values["changes_through"] = dg.MetadataValue.int(self.through)
        return values


def refresh_summary(refresh: Refresh, in_scope: int) -> dict[str, Any]:
    """Why an automated run re-aggregates what it does, for its TaskRun's summary (summary_json.ext.data)."""
    reaggregated = in_scope if refresh.instance_ids is None else len(refresh.instance_ids)
    return {
        "refresh_reason": refresh.describe(in_scope),
        "instances_reaggregated": reaggregated,
        "instances_in_scope": in_scope,
    }
