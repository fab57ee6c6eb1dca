"""An independent, row-by-row transcription of WhaleFall's runners, used only as a test oracle.

It follows WhaleFall's code paths literally (compat 4.1, 4.2 and the runner source): per instance,
SQL AVG/MAX/MIN/COUNT for databases, Python lists and floats for instances, Python `round`.
It shares no code with the pipeline's SQL, so agreement between the two is evidence, not echo.
It only runs on PostgreSQL, where WhaleFall itself runs.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal

from sqlalchemy import Connection, text

from capacity_pipeline.domain.periods import Window


def _to_float(value: object) -> float:
    if isinstance(value, Decimal | int | float):
        return float(value)
    return 0.0


def _numeric2(value: float | int) -> Decimal:
    """What a numeric(10,2) column stores for a Python value bound by psycopg."""
    return Decimal(format(value, ".15g")).quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")


def active_instance_ids(connection: Connection) -> list[int]:
    return list(
        connection.execute(
            text("SELECT id FROM instances WHERE is_active IS TRUE AND deleted_at IS NULL ORDER BY id")
        ).scalars()
    )


def database_rows(
    connection: Connection, period_type: str, window: Window, previous: Window
) -> dict[tuple[int, str], dict]:
    results = {}
    metrics_sql = text(
        "SELECT database_name, avg(size_mb) AS avg_size, max(size_mb) AS max_size, "
        "min(size_mb) AS min_size, count(id) AS data_count, avg(data_size_mb) AS avg_data, "
        "max(data_size_mb) AS max_data, min(data_size_mb) AS min_data "
        "FROM database_size_stats WHERE instance_id = :i "
        "AND collected_date >= :s AND collected_date <= :e GROUP BY database_name"
    )
    averages_sql = text(
        "SELECT database_name, avg(size_mb) AS avg_size, avg(data_size_mb) AS avg_data "
        "FROM database_size_stats WHERE instance_id = :i "
        "AND collected_date >= :s AND collected_date <= :e GROUP BY database_name"
    )
    for instance_id in active_instance_ids(connection):
        window_params = {"i": instance_id, "s": window.start, "e": window.end}
        metrics = connection.execute(metrics_sql, window_params).all()
        if not metrics:
            continue
        previous_params = {"i": instance_id, "s": previous.start, "e": previous.end}
        prev = {r.database_name: r for r in connection.execute(averages_sql, previous_params)}
        for m in metrics:
            row = {
                "avg_size_mb": int(m.avg_size),
                "max_size_mb": int(m.max_size),
                "min_size_mb": int(m.min_size),
                "data_count": int(m.data_count),
                "avg_data_size_mb": None if m.avg_data is None else int(m.avg_data),
                "max_data_size_mb": m.max_data,
                "min_data_size_mb": m.min_data,
                "avg_log_size_mb": None,
                "max_log_size_mb": None,
                "min_log_size_mb": None,
            }
            p = prev.get(m.database_name)
            prev_avg = None if p is None else _to_float(p.avg_size)
            prev_data = None if p is None or p.avg_data is None else _to_float(p.avg_data)
            if prev_avg is None:
                row.update(
                    size_change_mb=0,
                    size_change_percent=0,
                    data_size_change_mb=0,
                    data_size_change_percent=0,
                    log_size_change_mb=0,
                    log_size_change_percent=0,
                    growth_rate=0,
                )
            else:
                change = _to_float(row["avg_size_mb"]) - prev_avg
                row["size_change_mb"] = int(change)
                row["size_change_percent"] = round((change / prev_avg * 100) if prev_avg > 0 else 0, 2)
                if prev_data is not None and row["avg_data_size_mb"] is not None:
                    data_change = _to_float(row["avg_data_size_mb"]) - prev_data
                    row["data_size_change_mb"] = int(data_change)
                    row["data_size_change_percent"] = round((data_change / prev_data * 100) if prev_data > 0 else 0, 2)
                else:
                    row["data_size_change_mb"] = 0
                    row["data_size_change_percent"] = 0
                row["log_size_change_mb"] = None
                row["log_size_change_percent"] = None
                row["growth_rate"] = row["size_change_percent"]
            for key in ("size_change_percent", "data_size_change_percent", "growth_rate"):
                row[key] = _numeric2(row[key])
            if row["log_size_change_percent"] is not None:
                row["log_size_change_percent"] = _numeric2(row["log_size_change_percent"])
            row.update(period_type=period_type, period_start=window.start, period_end=window.end)
            results[(instance_id, m.database_name)] = row
    return results


def _daily(connection: Connection, instance_id: int, start: date, end: date) -> tuple[list, list]:
    stats = connection.execute(
        text(
            "SELECT collected_date, total_size_mb, database_count FROM instance_size_stats "
            "WHERE instance_id = :i AND collected_date >= :s AND collected_date <= :e "
            "AND is_deleted IS FALSE ORDER BY collected_date"
        ),
        {"i": instance_id, "s": start, "e": end},
    ).all()
    grouped = defaultdict(list)
    for stat in stats:
        grouped[stat.collected_date].append(stat)
    totals = [sum(s.total_size_mb for s in day) for day in grouped.values()]
    counts = [sum(s.database_count for s in day) for day in grouped.values()]
    return totals, counts


def instance_rows(connection: Connection, period_type: str, window: Window, previous: Window) -> dict[int, dict]:
    results = {}
    for instance_id in active_instance_ids(connection):
        daily_totals, daily_db_counts = _daily(connection, instance_id, window.start, window.end)
        if not daily_totals:
            continue
        normalized = [float(t) for t in daily_totals]
        total_size = float(sum(normalized) / len(normalized))
        row = {
            "total_size_mb": int(total_size),
            "avg_size_mb": int(sum(normalized) / sum(daily_db_counts)) if sum(daily_db_counts) > 0 else 0,
            "max_size_mb": int(max(normalized)),
            "min_size_mb": int(min(normalized)),
            "data_count": len(normalized),
            "database_count": int(sum(daily_db_counts) / len(daily_db_counts)),
            "avg_database_count": float(sum(daily_db_counts) / len(daily_db_counts)),
            "max_database_count": int(max(daily_db_counts)),
            "min_database_count": int(min(daily_db_counts)),
        }
        prev_totals, prev_counts = _daily(connection, instance_id, previous.start, previous.end)
        if not prev_totals:
            row.update(
                total_size_change_mb=0,
                total_size_change_percent=0,
                database_count_change=0,
                database_count_change_percent=0,
                growth_rate=0,
                trend_direction="stable",
            )
        else:
            prev_avg_total = sum(prev_totals) / len(prev_totals)
            prev_avg_db = sum(prev_counts) / len(prev_counts)
            change = _to_float(row["total_size_mb"]) - prev_avg_total
            row["total_size_change_mb"] = int(change)
            row["total_size_change_percent"] = round((change / prev_avg_total * 100) if prev_avg_total > 0 else 0, 2)
            db_change = _to_float(row["avg_database_count"]) - prev_avg_db
            row["database_count_change"] = int(db_change)
            row["database_count_change_percent"] = round((db_change / prev_avg_db * 100) if prev_avg_db > 0 else 0, 2)
            row["growth_rate"] = row["total_size_change_percent"]
            if row["total_size_change_percent"] > 5:
                row["trend_direction"] = "growing"
            elif row["total_size_change_percent"] < -5:
                row["trend_direction"] = "shrinking"
            else:
                row["trend_direction"] = "stable"
        for key in (
            "avg_database_count",
            "total_size_change_percent",
            "database_count_change_percent",
            "growth_rate",
        ):
            row[key] = _numeric2(row[key])
        row.update(period_type=period_type, period_start=window.start, period_end=window.end)
        results[instance_id] = row
    return results
