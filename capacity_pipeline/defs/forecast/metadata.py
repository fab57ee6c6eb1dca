"""What a forecast partition shows in the Dagster UI: counts and timings, the ten series that reach
their limit soonest (else grow fastest) as a table, the fleet's P50 totals as numbers (Dagster's
Plots tab draws each over the partitions), and the chart of the series nearest its limit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.defs.forecast.chart import forecast_svg, headline, markdown_image, series_label
from capacity_pipeline.domain.forecast.compute import ForecastReport
from capacity_pipeline.domain.forecast.fleet import FleetEntry, FleetSummary, fleet_summary
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.samples.instances import list_active_instances

TOP = 10
CHART_HISTORY_DAYS = 90
_MARKDOWN_SPECIAL = "\\`*_[]<>|#"


def totals_key(horizon_days: int) -> str:
    return f"p50_total_mb_{horizon_days}d"


def table_key(level: Level) -> str:
    return f"soonest_full_{level.value}s"


CHART_KEY = "nearest_limit_chart"


def forecast_metadata(engine: Engine, report: ForecastReport) -> dict[str, Any]:
    """Everything a materialization of (report.as_of, report.level) shows."""
    summary = fleet_summary(engine, report.level, report.as_of, top=TOP, history_days=CHART_HISTORY_DAYS)
    names = {instance.id: instance.name for instance in list_active_instances(engine)}
    metadata: dict[str, Any] = {
        "as_of_date": report.as_of.isoformat(),
        "horizons_days": ", ".join(str(h) for h in report.horizons),
        "series": dg.MetadataValue.int(report.series),
        "forecast": dg.MetadataValue.int(report.forecast),
        "insufficient_data": dg.MetadataValue.int(report.insufficient),
        "rows_written": dg.MetadataValue.int(report.rows_written),
        "seconds": dg.MetadataValue.float(round(sum(report.seconds.values()), 3)),
    }
    # Quantiles do not add up; P50s do (the fleet's median path is not a quantile of the fleet's total).
    for horizon, total in summary.p50_totals_mb.items():
        metadata[totals_key(horizon)] = dg.MetadataValue.float(round(total, 2))
    metadata[table_key(report.level)] = dg.MetadataValue.md(ranking_table(summary, names))
    metadata[CHART_KEY] = dg.MetadataValue.md(chart_markdown(summary, names))
    return metadata


def ranking_table(summary: FleetSummary, names: dict[int, str]) -> str:
    """The top series as a Markdown table, soonest at the limit first (then the fastest growing)."""
    if not summary.top:
        return "_no series has a forecast yet (too few samples)_"
    horizons = [row.horizon_days for row in summary.top[0].rows]
    columns = ["#", "instance"] + (["database"] if summary.level is Level.DATABASE else [])
    columns += ["limit MB", "full in P10 / P50 / P90 (days)", "P50 full on", "growth MB/day"]
    columns += [f"P50 {h} d MB" for h in horizons] + ["level shift"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for rank, entry in enumerate(summary.top, start=1):
        lines.append("| " + " | ".join(_cells(rank, entry, summary.level, horizons, names)) + " |")
    note = "Ranked by the P50 day the limit is reached, then the P10 day, then the growth per day."
    return note + "\n\n" + "\n".join(lines)


def _cells(rank: int, entry: FleetEntry, level: Level, horizons: list[int], names: dict[int, str]) -> list[str]:
    row = entry.first
    instance = f"{row.instance_id}" + (f" {_escape(names[row.instance_id])}" if row.instance_id in names else "")
    cells = [str(rank), instance] + ([_escape(row.database_name or "")] if level is Level.DATABASE else [])
    days = (row.days_to_limit_p10, row.days_to_limit_p50, row.days_to_limit_p90)
    full_on = "-" if row.days_to_limit_p50 is None else (row.as_of_date + timedelta(days=row.days_to_limit_p50))
    p50 = {r.horizon_days: r.p50_mb for r in entry.rows}
    cells += [
        _number(row.limit_mb),
        " / ".join("-" if d is None else str(d) for d in days) if row.limit_mb is not None else "-",
        str(full_on),
        _number(row.growth_mb_per_day, decimals=3),
        *(_number(p50.get(h)) for h in horizons),
        "-" if row.change_point_date is None else row.change_point_date.isoformat(),
    ]
    return cells


def chart_markdown(summary: FleetSummary, names: dict[int, str]) -> str:
    """The chart of the first-ranked series (nearest its limit, else fastest growing), as an image."""
    if summary.nearest is None or not summary.top:
        return "_no series has a forecast yet (too few samples)_"
    entry = summary.top[0]
    label = series_label(entry, names)
    row = entry.first
    reaches = row.days_to_limit_p50 is not None or row.days_to_limit_p10 is not None
    why = "nearest its limit" if reaches else "fastest growing"
    svg = forecast_svg(summary.nearest, entry, f"{label}: {why}")
    caption = (
        f"**{_escape(label)}** ({why}): {_escape(headline(entry))}. Samples of the last {CHART_HISTORY_DAYS} days, "
        "the P10-P90 band and P50 to the last horizon (straight lines between horizons)"
        + (", the limit and, on it, the P10-P90 days it is reached." if row.limit_mb is not None else ".")
    )
    return f"{caption}\n\n{markdown_image(svg, f'forecast of {label}')}"


def _number(value: float | None, decimals: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{decimals}f}" if decimals else f"{value:,.0f}"


def _escape(text: str) -> str:
    """Text from the database inside a Markdown table: no cell breaks, no formatting."""
    cleaned = " ".join(text.split())
    return "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in cleaned)
