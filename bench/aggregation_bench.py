"""Benchmark: the aggregation engine against the floor of plain SQL on the same rows, and the cost
of following the samples (observation, re-aggregation after one late sample).

For each period type (last complete window, scope all, both levels) it times a first run (no
rows yet) and a re-run (every row conflicts), and in the same process the floor: per level one
GROUP BY over the current window, one over the previous window, and one
`INSERT ... ON CONFLICT DO UPDATE` of as many result rows (rolled back). Peak memory is the
peak resident memory of this process during the run, which must not grow with the input rows.

Then, with --freshness: one observation tick (the queries of the daily and the quarterly sources
of both stats tables over the default observed range), the re-aggregation after one late sample
(every partition that day feeds, at its level, as the automation runs them), and a full recompute
of every window of the data. The late sample is removed again at the end, so --reuse reruns alike.

    python bench/aggregation_bench.py --scale 1000x100x100 [--scale 100x100x100] [--reuse]

The PostgreSQL server comes from CAPACITY_BENCH_POSTGRES_URL (default: the local one); each scale
gets its own database `capacity_bench_<N>x<M>x<D>`, kept for --reuse.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import Connection, Engine, create_engine, make_url, text

from capacity_pipeline.domain.aggregation.engine import aggregate_period
from capacity_pipeline.domain.model import AggregationReport, Level, Scope
from capacity_pipeline.domain.periods import (
    PeriodType,
    Window,
    last_window,
    previous_window,
    window_containing,
    windows_fed_by,
)
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.samples.versions import (
    baseline_days,
    baseline_versions,
    day_versions,
    observed_days,
    quarterly_baselines,
)
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.month_partitions import ensure_month_partitions
from capacity_pipeline.domain.storage.tables import create_schema

SERVER_URL = os.environ.get("CAPACITY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TODAY = date(2026, 7, 2)
LATE_SAMPLE = "late_sample"  # the database whose one sample arrives late


@dataclass
class Row:
    scale: str
    period: str
    run: str
    input_rows: int
    output_rows: int
    seconds: float
    floor_seconds: float
    peak_mib: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.floor_seconds


def _database_for(scale: str, reuse: bool, prefix: str = "capacity_bench") -> Engine:
    name = f"{prefix}_{scale}"
    server = make_url(SERVER_URL).set(drivername="postgresql+psycopg")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
        if exists and not reuse:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            exists = None
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_engine(server.set(database=name))


def _load(engine: Engine, scale: str) -> None:
    instances, databases, days = (int(part) for part in scale.split("x"))
    create_schema(engine)
    with engine.connect() as connection:
        loaded = connection.execute(text("SELECT count(*) FROM instances")).scalar_one()
    if loaded:
        print(f"# {scale}: reusing the loaded data", file=sys.stderr)
        return
    started = time.perf_counter()
    counts = load_synthetic_data(engine, SyntheticSpec(instances, databases, days, TODAY - timedelta(days=1)))
    print(f"# {scale}: loaded {counts} in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def _timed(connection: Connection, sql: str, params: dict) -> float:
    started = time.perf_counter()
    connection.execute(text(sql), params)
    return time.perf_counter() - started


_FLOOR_DATABASE = {
    "current": """CREATE TEMP TABLE floor_current ON COMMIT DROP AS
        SELECT instance_id, database_name, avg(size_mb) AS avg_size, max(size_mb) AS max_size,
               min(size_mb) AS min_size, count(id) AS data_count, avg(data_size_mb) AS avg_data,
               max(data_size_mb) AS max_data, min(data_size_mb) AS min_data
        FROM database_size_stats WHERE collected_date BETWEEN :start AND :end
        GROUP BY instance_id, database_name""",
    "previous": """SELECT count(*) FROM (
        SELECT instance_id, database_name, avg(size_mb), avg(data_size_mb)
        FROM database_size_stats WHERE collected_date BETWEEN :previous_start AND :previous_end
        GROUP BY instance_id, database_name) AS previous""",
    "upsert": """INSERT INTO database_size_aggregations (instance_id, database_name, period_type,
            period_start, period_end, avg_size_mb, max_size_mb, min_size_mb, data_count,
            avg_data_size_mb, max_data_size_mb, min_data_size_mb, size_change_mb,
            size_change_percent, data_size_change_mb, data_size_change_percent, growth_rate,
            calculated_at, created_at)
        SELECT instance_id, database_name, :period_type, :start, :end, trunc(avg_size), max_size,
               min_size, data_count, trunc(avg_data), max_data, min_data, 0, 0, 0, 0, 0, now(), now()
        FROM floor_current
        ON CONFLICT (instance_id, database_name, period_type, period_start) DO UPDATE SET
            avg_size_mb = excluded.avg_size_mb, max_size_mb = excluded.max_size_mb,
            min_size_mb = excluded.min_size_mb, data_count = excluded.data_count,
            avg_data_size_mb = excluded.avg_data_size_mb, max_data_size_mb = excluded.max_data_size_mb,
            min_data_size_mb = excluded.min_data_size_mb, size_change_mb = excluded.size_change_mb,
            size_change_percent = excluded.size_change_percent,
            data_size_change_mb = excluded.data_size_change_mb,
            data_size_change_percent = excluded.data_size_change_percent,
            growth_rate = excluded.growth_rate, calculated_at = excluded.calculated_at""",
}

_FLOOR_INSTANCE = {
    "current": """CREATE TEMP TABLE floor_current ON COMMIT DROP AS
        SELECT instance_id, count(DISTINCT collected_date) AS days, sum(total_size_mb) AS total,
               max(total_size_mb) AS max_total, min(total_size_mb) AS min_total,
               sum(database_count) AS databases
        FROM instance_size_stats
        WHERE collected_date BETWEEN :start AND :end AND is_deleted IS FALSE
        GROUP BY instance_id""",
    "previous": """SELECT count(*) FROM (
        SELECT instance_id, sum(total_size_mb), sum(database_count), count(*)
        FROM instance_size_stats
        WHERE collected_date BETWEEN :previous_start AND :previous_end AND is_deleted IS FALSE
        GROUP BY instance_id) AS previous""",
    "upsert": """INSERT INTO instance_size_aggregations (instance_id, period_type, period_start,
            period_end, total_size_mb, avg_size_mb, max_size_mb, min_size_mb, data_count,
            database_count, calculated_at, created_at)
        SELECT instance_id, :period_type, :start, :end, total / days, total / databases,
               max_total, min_total, days, databases / days, now(), now()
        FROM floor_current
        ON CONFLICT (instance_id, period_type, period_start) DO UPDATE SET
            total_size_mb = excluded.total_size_mb, avg_size_mb = excluded.avg_size_mb,
            max_size_mb = excluded.max_size_mb, min_size_mb = excluded.min_size_mb,
            data_count = excluded.data_count, database_count = excluded.database_count,
            calculated_at = excluded.calculated_at""",
}


def floor_seconds(engine: Engine, period: PeriodType, window: Window, previous: Window) -> float:
    """The plainest SQL doing the same reads and writes; its writes are rolled back."""
    params = {
        "period_type": period.value,
        "start": window.start,
        "end": window.end,
        "previous_start": previous.start,
        "previous_end": previous.end,
    }
    total = 0.0
    for statements in (_FLOOR_DATABASE, _FLOOR_INSTANCE):
        with engine.connect() as connection:
            transaction = connection.begin()
            total += sum(_timed(connection, statements[step], params) for step in statements)
            transaction.rollback()
    # The rolled-back writes leave dead rows and index entries behind; clear them so that the
    # engine's run that follows does not pay for the floor's garbage.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM database_size_aggregations, instance_size_aggregations"))
    return total


def _input_rows(engine: Engine, window: Window, previous: Window) -> int:
    with engine.connect() as connection:
        return sum(
            connection.execute(
                text(f"SELECT count(*) FROM {table} WHERE collected_date BETWEEN :s AND :e"),
                {"s": span.start, "e": span.end},
            ).scalar_one()
            for table in ("database_size_stats", "instance_size_stats")
            for span in (window, previous)
        )


class _PeakRss:
    """Samples this process's resident memory every few milliseconds while a run lasts.

    A sampler rather than tracemalloc: tracing every allocation would slow the run it measures.
    """

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.005)

    def __enter__(self) -> _PeakRss:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _measured_run(engine: Engine, period: PeriodType, window: Window) -> tuple[AggregationReport, float]:
    with _PeakRss() as rss:
        report = aggregate_period(engine, period, window)
    return report, rss.peak / 2**20


def bench_scale(scale: str, reuse: bool) -> list[Row]:
    engine = _database_for(scale, reuse)
    _load(engine, scale)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE database_size_aggregations, instance_size_aggregations"))
    rows = []
    for period in PeriodType:
        window = last_window(period, TODAY)
        previous = previous_window(period, window)
        input_rows = _input_rows(engine, window, previous)  # also warms the cache for both sides
        ensure_month_partitions(engine, [level.table for level in Level], [window.start])
        for run in ("first run", "re-run"):
            floor = floor_seconds(engine, period, window, previous)
            report, peak = _measured_run(engine, period, window)
            output = report.rows_written(Level.DATABASE) + report.rows_written(Level.INSTANCE)
            rows.append(Row(scale, period.value, run, input_rows, output, report.seconds, floor, peak))
            print(_format(rows[-1]), flush=True)
    engine.dispose()
    return rows


HEADER = "| scale | period | run | input rows | output rows | seconds | floor seconds | ratio | peak RSS MiB |"


def _format(row: Row) -> str:
    return (
        f"| {row.scale} | {row.period} | {row.run} | {row.input_rows:,} | {row.output_rows:,} | "
        f"{row.seconds:.2f} | {row.floor_seconds:.2f} | {row.ratio:.2f} | {row.peak_mib:.1f} |"
    )


def bench_freshness(scale: str) -> str:
    """Observation, one late sample's re-aggregation and a full recompute, on the loaded data."""
    from capacity_pipeline.settings import SETTINGS

    engine = _database_for(scale, reuse=True)
    days = observed_days(TODAY, SETTINGS["observe_days"].default)
    # What one observation tick queries (defs/sources.py): the daily sources read each table's day
    # versions; the quarterly baseline sources (another job) read the days of their baselines.
    started = time.perf_counter()
    baselines = quarterly_baselines(days, corrected_quarter=False)
    for level in Level:
        day_versions(engine, level, days)
        if (span := baseline_days(baselines)) is not None:
            baseline_versions(day_versions(engine, level, span), baselines)
    observation = time.perf_counter() - started

    late = TODAY - timedelta(days=20)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO database_size_stats (instance_id, database_name, size_mb, data_size_mb, collected_date) "
                "VALUES (1, :name, 1024, 1000, :day)"
            ),
            {"name": LATE_SAMPLE, "day": late},
        )
    # What the automation runs: every complete window the day feeds, at the level that changed.
    affected = {
        period: [w for w in windows_fed_by(period, late) if period is PeriodType.DAILY or w.end < TODAY]
        for period in PeriodType
    }
    started = time.perf_counter()
    for period, windows in affected.items():
        for window in windows:
            aggregate_period(engine, period, window, scope=Scope.DATABASE)
    reaggregation = time.perf_counter() - started

    started, windows = time.perf_counter(), 0
    first = _first_sample_day(engine)
    for period in PeriodType:
        window = window_containing(period, first)
        while window.start < TODAY:
            aggregate_period(engine, period, window)
            windows += 1
            window = window_containing(period, window.end + timedelta(days=1))
    full = time.perf_counter() - started
    with engine.begin() as connection:  # a rerun with --reuse finds the data as it was loaded
        for table in ("database_size_stats", "database_size_aggregations"):
            connection.execute(text(f"DELETE FROM {table} WHERE database_name = :name"), {"name": LATE_SAMPLE})
    engine.dispose()
    fed = ", ".join(f"{len(windows)} {period.value}" for period, windows in affected.items())
    return (
        f"| {scale} | {observation:.2f} ({days.days} days, both tables, daily and quarterly sources) | "
        f"{fed} (database level) | "
        f"{reaggregation:.2f} | {full:.1f} ({windows} windows, both levels) |"
    )


def _first_sample_day(engine: Engine) -> date:
    with engine.connect() as connection:
        return connection.execute(text("SELECT min(collected_date) FROM instance_size_stats")).scalar_one()


FRESHNESS_COLUMNS = (
    "scale",
    "observation seconds",
    "partitions one late sample feeds",
    "re-aggregation seconds",
    "full recompute seconds",
)
FRESHNESS_HEADER = "| " + " | ".join(FRESHNESS_COLUMNS) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", action="append", help="INSTANCESxDATABASESxDAYS (repeatable)")
    parser.add_argument("--reuse", action="store_true", help="keep and reuse already loaded data")
    parser.add_argument("--freshness", action="store_true", help="also time observation and late-sample runs")
    args = parser.parse_args(argv)
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    scales = args.scale or ["1000x100x100"]
    for scale in scales:
        bench_scale(scale, args.reuse)
    if args.freshness:
        print()
        print(FRESHNESS_HEADER)
        print("|---" * (FRESHNESS_HEADER.count("|") - 1) + "|")
        for scale in scales:
            print(bench_freshness(scale), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
