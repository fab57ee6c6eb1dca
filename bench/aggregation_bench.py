"""Benchmark: the aggregation engine against the floor of plain SQL on the same rows, and the cost
of following the samples (observation, the automation's re-aggregation of what changed).

For each period type (last complete window, scope all, both levels) it times a first run (no
rows yet) and a re-run (every row conflicts), and in the same process the floor: per level one
GROUP BY over the current window, one over the previous window, and one
`INSERT ... ON CONFLICT DO UPDATE` of as many result rows (rolled back). Peak memory is the
peak resident memory of this process during the run, which must not grow with the input rows.

--freshness first sets up the state the pipeline is in (every window the observed days feed
aggregated, so it has a mark; a first observation done), then, for each of three changes (one late
database sample; 10 late samples on 10 instances; one sample of every instance on one past day
updated), times: one observation tick as the schedules run it (both stats sources and the
quarterly baseline sources over the default CAPACITY_OBSERVE_DAYS range), the automation's
re-aggregation (per level, every window a changed day feeds, plan_refresh then aggregate_windows
over the changed instances: domain/aggregation/follow.py), and the whole-window re-aggregation of
the same windows for every instance. Each change is undone and the state settled again, so
--reuse reruns alike. --observe-range times one tick (nothing changed) per observed range.

    python bench/aggregation_bench.py --scale 1000x100x100 [--scale 100x100x100] [--reuse]
    python bench/aggregation_bench.py --scale 1000x100x100 --reuse --no-engine --freshness
    python bench/aggregation_bench.py --scale 1000x100x215 --reuse --no-engine --observe-range 62,124,186

The PostgreSQL server comes from CAPACITY_BENCH_POSTGRES_URL (default: the local one); each scale
gets its own database `capacity_bench_<N>x<M>x<D>`, kept for --reuse (loading 1000x100x100 takes
about two minutes). The data ends the day before 2026-07-02, the bench's today.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import Connection, Engine, create_engine, make_url, text

from capacity_pipeline.domain.aggregation.engine import aggregate_period, aggregate_windows
from capacity_pipeline.domain.aggregation.follow import WindowRefresh, fed_windows, refresh_fed_windows
from capacity_pipeline.domain.model import AggregationReport, Level, WindowPlan
from capacity_pipeline.domain.periods import PeriodType, Window, last_window, previous_window, refreshed_automatically
from capacity_pipeline.domain.samples.changes import Observation, last_change, last_changes_within, observe_changes
from capacity_pipeline.domain.samples.instances import list_active_instances
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.samples.versions import observed_days, quarterly_baselines
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.month_partitions import ensure_month_partitions
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline.settings import SETTINGS

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


# -- freshness: following the samples ---------------------------------------------------------------

REFRESH_TARGETS = {"one late sample": 1.0, "10 late samples": 2.0}  # re-aggregation seconds, at most
OBSERVATION_TARGET = 2.0  # one observation tick, seconds, at most


@dataclass
class Case:
    """One change to the samples, as WhaleFall would make it, and how to take it back."""

    name: str
    changed: str  # what changed, for the table
    apply: Callable[[Connection], None]
    restore: Callable[[Connection], None]


@dataclass
class FreshnessRow:
    scale: str
    case: Case
    observation_seconds: float
    changed_instance_days: int
    partitions: int
    instances: int
    instance_partitions: int
    refresh_seconds: float
    full_seconds: float

    @property
    def ratio(self) -> float:
        return self.refresh_seconds / self.full_seconds

    @property
    def verdict(self) -> str:
        target = REFRESH_TARGETS.get(self.case.name)
        refresh = self.refresh_seconds <= target if target is not None else self.refresh_seconds <= self.full_seconds
        observation = self.observation_seconds <= OBSERVATION_TARGET
        wanted = f"<= {target:.0f} s" if target is not None else "<= full"
        return (
            f"re-aggregation {wanted}: {'pass' if refresh else 'FAIL'}; "
            f"observation <= {OBSERVATION_TARGET:.0f} s: {'pass' if observation else 'FAIL'}"
        )


FRESHNESS_COLUMNS = (
    "scale",
    "case",
    "observation s",
    "changed instance-days",
    "partitions",
    "instances",
    "instance-partitions",
    "re-aggregation s",
    "full-window s",
    "ratio",
    "targets",
)
FRESHNESS_HEADER = "| " + " | ".join(FRESHNESS_COLUMNS) + " |"


def _format_freshness(row: FreshnessRow) -> str:
    return (
        f"| {row.scale} | {row.case.name} ({row.case.changed}) | {row.observation_seconds:.2f} | "
        f"{row.changed_instance_days:,} | {row.partitions} | {row.instances:,} | {row.instance_partitions:,} | "
        f"{row.refresh_seconds:.2f} | {row.full_seconds:.2f} | {row.ratio:.2f} | {row.verdict} |"
    )


def observation_tick(engine: Engine, days: Window) -> tuple[float, dict[Level, Observation]]:
    """One tick of the observation schedules (defs/samples/observation.py): the stats source of each
    level (observe_changes), then the quarterly baseline sources (their change log lookups; the
    sources' own reads of Dagster's event log are left out)."""
    started = time.perf_counter()
    observations = {level: observe_changes(engine, level, days) for level in Level}
    baselines = quarterly_baselines(days, corrected_quarter=False)
    for level in Level:
        last_changes_within(engine, level, baselines)
    return time.perf_counter() - started, observations


def automated(period: PeriodType, window: Window) -> bool:
    """The windows the automation runs (defs/aggregation/automation.py, default settings): every
    day up to today; weeks, months and quarters once complete."""
    return refreshed_automatically(period, window, today=TODAY, current_periods=False)


def _refresh(engine: Engine, observations: dict[Level, Observation]) -> list[WindowRefresh]:
    """What the automation runs after a tick: per level, every window a changed day feeds."""
    return [
        refreshed
        for level, observation in observations.items()
        for refreshed in refresh_fed_windows(engine, level, observation.changed, include=automated)
    ]


def _sample_windows(engine: Engine, days: Window) -> list[WindowPlan]:
    """Every automated window that an observed day feeds and that has samples, both levels."""
    with engine.connect() as connection:
        last = connection.execute(text("SELECT max(collected_date) FROM instance_size_stats")).scalar_one()
    every_day = [days.start + timedelta(days=n) for n in range(days.days)]
    return [
        WindowPlan(period, window, tuple(Level))
        for period, window in fed_windows(every_day, include=automated)
        if window.start <= last
    ]


def _settle(engine: Engine, days: Window) -> None:
    """The state the pipeline is in before a change: every window the observed days feed aggregated
    (so it has a mark and rows), a first observation done, nothing pending."""
    with engine.begin() as connection:  # a run stopped half-way left its late samples behind
        for table in ("database_size_stats", "database_size_aggregations"):
            connection.execute(text(f"DELETE FROM {table} WHERE database_name = :name"), {"name": LATE_SAMPLE})
        marked = {
            (Level(level), period, start)
            for level, period, start in connection.execute(
                text("SELECT level, period_type, period_start FROM capacity_window_marks")
            )
        }
        written = {
            (level, period, start)
            for level in Level
            for period, start in connection.execute(
                text(f"SELECT DISTINCT period_type, period_start FROM {level.table}")
            )
        }
    missing = [
        plan
        for plan in _sample_windows(engine, days)
        if any(
            (level, plan.period.value, plan.window.start) not in marked
            or (level, plan.period.value, plan.window.start) not in written
            for level in Level
        )
    ]
    if missing:
        started = time.perf_counter()
        reports = aggregate_windows(engine, missing)  # every active instance: marks every window
        assert not any(report.failures for report in reports)
        print(f"# aggregated {len(missing)} windows in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    _, observations = observation_tick(engine, days)  # the first observation, or what is pending
    for refreshed in _refresh(engine, observations):
        assert not refreshed.report.failures


def _cases(engine: Engine) -> list[Case]:
    active = [instance.id for instance in list_active_instances(engine)]
    late = TODAY - timedelta(days=20)
    insert = text(
        "INSERT INTO database_size_stats (instance_id, database_name, size_mb, data_size_mb, collected_date) "
        "VALUES (:instance, :name, 1024, 1000, :day)"
    )

    def late_samples(pairs: list[tuple[int, date]]) -> Callable[[Connection], None]:
        return lambda c: c.execute(insert, [{"instance": i, "name": LATE_SAMPLE, "day": d} for i, d in pairs])

    def remove_late(connection: Connection) -> None:
        for table in ("database_size_stats", "database_size_aggregations"):
            connection.execute(text(f"DELETE FROM {table} WHERE database_name = :name"), {"name": LATE_SAMPLE})

    day = TODAY - timedelta(days=30)
    one_per_instance = (
        "id IN (SELECT min(id) FROM database_size_stats WHERE collected_date = :day GROUP BY instance_id) "
        "AND collected_date = :day"
    )
    bump = text(f"UPDATE database_size_stats SET size_mb = size_mb + 1 WHERE {one_per_instance}")
    unbump = text(f"UPDATE database_size_stats SET size_mb = size_mb - 1 WHERE {one_per_instance}")
    with engine.connect() as connection:
        fleet = connection.execute(
            text("SELECT count(DISTINCT instance_id) FROM database_size_stats WHERE collected_date = :day"),
            {"day": day},
        ).scalar_one()
    return [
        Case("one late sample", f"instance {active[0]}, {late}", late_samples([(active[0], late)]), remove_late),
        Case(
            "10 late samples",
            f"10 instances, {late - timedelta(days=9)} to {late}",
            late_samples([(i, late - timedelta(days=n)) for n, i in enumerate(active[:10])]),
            remove_late,
        ),
        Case(
            "a changed day",
            f"one sample of each of {fleet} instances, {day}",
            lambda c: c.execute(bump, {"day": day}),
            lambda c: c.execute(unbump, {"day": day}),
        ),
    ]


def _full_windows(engine: Engine, refreshed: list[WindowRefresh]) -> float:
    """The same windows re-aggregated for every active instance, one run each (no mark moves)."""
    started = time.perf_counter()
    for done in refreshed:
        [report] = aggregate_windows(engine, [done.refresh.plan], instances=list_active_instances(engine))
        assert not report.failures
    return time.perf_counter() - started


def bench_freshness(scale: str) -> list[FreshnessRow]:
    """Each case from the settled state: one observation tick, the automation's re-aggregation of
    what changed, the whole-window re-aggregation of the same windows; then the change is undone
    and the state settled again, so --reuse reruns alike."""
    engine = _database_for(scale, reuse=True)
    _load(engine, scale)
    days = observed_days(TODAY, SETTINGS["observe_days"].default)
    _settle(engine, days)
    rows = []
    for case in _cases(engine):
        with engine.begin() as connection:
            case.apply(connection)
        try:
            observation, observations = observation_tick(engine, days)
            started = time.perf_counter()
            refreshed = _refresh(engine, observations)
            refresh = time.perf_counter() - started
            assert not any(done.report.failures for done in refreshed)
            full = _full_windows(engine, refreshed)
        finally:
            with engine.begin() as connection:
                case.restore(connection)
            _settle(engine, days)
        ids = [done.instance_ids for done in refreshed]
        rows.append(
            FreshnessRow(
                scale,
                case,
                observation,
                sum(o.changed_instance_days for o in observations.values()),
                len(refreshed),
                len(set().union(*(i for i in ids if i is not None))),
                sum(len(i) for i in ids if i is not None),
                refresh,
                full,
            )
        )
        print(_format_freshness(rows[-1]), flush=True)
    engine.dispose()
    return rows


RANGE_HEADER = (
    "| scale | CAPACITY_OBSERVE_DAYS | observed days | instance-days observed | tick s | "
    "first tick after widening s (instance-days it logs as changed) |"
)


def bench_observation_range(scale: str, ranges: list[int]) -> None:
    """One observation tick per observed range, with nothing changed: a first tick at the range
    records the days new to it (and logs them as changed), the second is timed. Afterwards the
    default range is observed again and the marks moved past those logged changes (no sample
    changed: every window still holds a full recompute's rows), so --reuse reruns alike."""
    engine = _database_for(scale, reuse=True)
    _load(engine, scale)
    default = observed_days(TODAY, SETTINGS["observe_days"].default)
    for level in Level:  # a first observation (records) before anything is timed
        observe_changes(engine, level, default)
    for days_back in ranges:
        days = observed_days(TODAY, days_back)
        widening, observations = observation_tick(engine, days)
        logged = sum(o.changed_instance_days for o in observations.values())
        tick, observations = observation_tick(engine, days)
        assert not any(o.changed for o in observations.values()), "a sample changed during the bench"
        observed = sum(o.instance_days for o in observations.values())
        print(
            f"| {scale} | {days_back} | {days.days} ({days.start} to {days.end}) | {observed:,} | {tick:.2f} | "
            f"{widening:.2f} ({logged:,}) |",
            flush=True,
        )
    observation_tick(engine, default)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE capacity_window_marks SET changes_through = :last WHERE changes_through < :last"),
            {"last": last_change(connection)},
        )
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", action="append", help="INSTANCESxDATABASESxDAYS (repeatable)")
    parser.add_argument("--reuse", action="store_true", help="keep and reuse already loaded data")
    parser.add_argument("--freshness", action="store_true", help="also time observation and the automation's refreshes")
    parser.add_argument(
        "--observe-range",
        type=lambda raw: [int(part) for part in raw.split(",")],
        help="also time one observation tick per CAPACITY_OBSERVE_DAYS value, e.g. 62,124,186",
    )
    parser.add_argument("--no-engine", action="store_true", help="leave out the engine-against-the-floor table")
    args = parser.parse_args(argv)
    scales = args.scale or ["1000x100x100"]
    if not args.no_engine:
        print(HEADER)
        print("|---" * (HEADER.count("|") - 1) + "|")
        for scale in scales:
            bench_scale(scale, args.reuse)
    elif not args.reuse:
        for scale in scales:  # a fresh database per scale, as the engine table would have made
            _load(_database_for(scale, reuse=False), scale)
    if args.freshness:
        print()
        print(FRESHNESS_HEADER)
        print("|---" * (FRESHNESS_HEADER.count("|") - 1) + "|")
        for scale in scales:
            bench_freshness(scale)
    if args.observe_range:
        print()
        print(RANGE_HEADER)
        print("|---" * (RANGE_HEADER.count("|") - 1) + "|")
        for scale in scales:
            bench_observation_range(scale, args.observe_range)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
