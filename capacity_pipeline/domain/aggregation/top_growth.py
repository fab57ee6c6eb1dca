"""Read-side questions about aggregation results, for people (demo, Dagster metadata)."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from capacity_pipeline.domain.model import Level

if TYPE_CHECKING:
    import pandas as pd

_TOP_GROWTH = {
    Level.DATABASE: """
        SELECT a.instance_id, i.name AS instance_name, a.database_name,
               a.avg_size_mb, a.size_change_mb AS change_mb, a.growth_rate
        FROM database_size_aggregations AS a JOIN instances AS i ON i.id = a.instance_id
        WHERE a.period_type = :period_type AND a.period_start = :period_start
        ORDER BY a.size_change_mb DESC, a.instance_id, a.database_name
        LIMIT :limit""",
    Level.INSTANCE: """
        SELECT a.instance_id, i.name AS instance_name,
               a.total_size_mb, a.total_size_change_mb AS change_mb, a.growth_rate, a.trend_direction
        FROM instance_size_aggregations AS a JOIN instances AS i ON i.id = a.instance_id
        WHERE a.period_type = :period_type AND a.period_start = :period_start
        ORDER BY a.total_size_change_mb DESC, a.instance_id
        LIMIT :limit""",
}


def top_growth(engine: Engine, level: Level, period_type: str, period_start: date, limit: int = 10) -> pd.DataFrame:
    """The rows of one period that grew most in MB (ties broken by id, so the table is stable)."""
    import pandas as pd  # here, not at the top: a run worker imports pandas only to show a table

    params = {"period_type": period_type, "period_start": period_start, "limit": limit}
    with engine.connect() as connection:
        frame = pd.read_sql_query(text(_TOP_GROWTH[level]), connection, params=params)
    if "growth_rate" in frame:
        frame["growth_rate"] = frame["growth_rate"].astype(float).map("{:.2f}%".format)
    return frame
