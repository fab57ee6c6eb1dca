"""Benchmark: one evaluation of the roll-ups' automation (`capacity_automation`) with two years of
daily partitions on all eight aggregation assets, on a real Dagster instance with a history.

The definitions are the code location's own (`build_defs`), from default settings with
CAPACITY_PARTITIONS_START two years back, the `whalefall` resource pointed at a database the
evaluation never opens. The history, recorded before anything is timed: a data version observed
for every day of both stats sources (and every quarterly baseline), a few more versions on some
days (late samples over two years), every partition of the eight aggregation assets materialized
after that, and a run history of finished background runs plus a few waiting in the queue (below
CAPACITY_AUTOMATION_MAX_QUEUED), which `BackgroundQueueHasRoom` counts. Then it times
`dg.evaluate_automation_conditions` over the sensor's target (the aggregation assets): a first
tick (no cursor), a tick after a few changed days (new data versions observed on them), one
more tick with nothing new, and a tick after 90 changed days at both levels (what raising
CAPACITY_OBSERVE_DAYS from 62 to 124 makes the next observation log). Target (issue 15): at most 10 s a tick.

    python bench/automation_bench.py [--storage postgres|sqlite] [--years 2] [--runs 2000]

--storage postgres (default, as in production: dagster.yaml) makes a scratch database
`capacity_bench_dagster` on CAPACITY_BENCH_POSTGRES_URL's server (default: the local one) and
drops it after; sqlite is `dg.instance_for_test()`'s.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta

import dagster as dg
from sqlalchemy import create_engine, make_url, text

from capacity_pipeline.defs.aggregation.assets import aggregation_selection, asset_key
from capacity_pipeline.defs.definitions import build_defs
from capacity_pipeline.defs.partitions import partitions_by_period
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center.tags import TRIGGER_SOURCE_TAG
from capacity_pipeline.defs.samples.sources import baseline_key, change_version, stats_key
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, china_today, windows_fed_by
from capacity_pipeline.settings import SETTINGS, Settings

SERVER_URL = os.environ.get("CAPACITY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DAGSTER_DATABASE = "capacity_bench_dagster"
TARGET_SECONDS = 10.0


@contextmanager
def dagster_instance(storage: str) -> Iterator[dg.DagsterInstance]:
    if storage == "sqlite":
        with dg.instance_for_test() as instance:
            yield instance
        return
    server = make_url(SERVER_URL).set(drivername="postgresql+psycopg")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{DAGSTER_DATABASE}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{DAGSTER_DATABASE}"'))
    url = server.set(drivername="postgresql+psycopg2", database=DAGSTER_DATABASE).render_as_string(hide_password=False)
    try:
        with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
            yield instance
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{DAGSTER_DATABASE}" WITH (FORCE)'))
        admin.dispose()


@dg.op
def _noop() -> None:
    pass


@dg.job
def _background_job() -> None:
    _noop()


class History:
    """What two years of the pipeline leave in Dagster's storage."""

    def __init__(self, instance: dg.DagsterInstance, settings: Settings, today: date) -> None:
        self.instance = instance
        self.partitions = partitions_by_period(settings.partitions_start)
        self.today = today
        self.change = 0
        self.events = 0

    def observe(self, level: Level, day: date) -> None:
        """A new data version of one day of a stats source, as the observation job records it."""
        self.change += 1
        self._report(
            dg.AssetObservation(
                asset_key=stats_key(level),
                partition=day.isoformat(),
                tags={"dagster/data_version": change_version(self.change).value},
            )
        )

    def observe_baseline(self, level: Level, quarter_start: str) -> None:
        self.change += 1
        self._report(
            dg.AssetObservation(
                asset_key=baseline_key(level),
                partition=quarter_start,
                tags={"dagster/data_version": change_version(self.change).value},
            )
        )

    def materialize_all(self) -> int:
        """Every partition of the eight aggregation assets, once (the nightly run and backfills)."""
        count = 0
        for period in PeriodType:
            keys = self.partitions[period].get_partition_keys()
            for level in Level:
                for key in keys:
                    self._report(dg.AssetMaterialization(asset_key=asset_key(level, period), partition=key))
                    count += 1
        return count

    def materialize_fed(self, level: Level, day: date) -> None:
        """The partitions one changed day fed, re-aggregated (the automation's runs of the past)."""
        for period in PeriodType:
            for window in windows_fed_by(period, day):
                key = window.start.isoformat()
                if self.partitions[period].has_partition_key(key):
                    self._report(dg.AssetMaterialization(asset_key=asset_key(level, period), partition=key))

    def runs(self, finished: int, queued: int) -> None:
        tags = {TRIGGER_SOURCE_TAG: c.TRIGGER_SCHEDULED}
        for _ in range(finished):
            run = self.instance.create_run_for_job(_background_job, tags=tags)
            self.instance.report_run_canceled(run)  # a finished run: not counted by the queue bound
        for _ in range(queued):
            self.instance.create_run_for_job(_background_job, tags=tags)  # NOT_STARTED: waiting

    def _report(self, event: dg.AssetObservation | dg.AssetMaterialization) -> None:
        self.instance.report_runless_asset_event(event)
        self.events += 1


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _timed(definitions: dg.Definitions, instance: dg.DagsterInstance, cursor: object) -> tuple[float, object]:
    started = time.perf_counter()
    result = dg.evaluate_automation_conditions(
        defs=definitions, instance=instance, asset_selection=aggregation_selection(), cursor=cursor
    )
    return time.perf_counter() - started, result


def bench(storage: str, years: int, finished_runs: int, changed_days: int) -> list[str]:
    today = china_today()
    start = today.replace(year=today.year - years)
    settings = Settings(partitions_start=start)
    resources = {"whalefall": WhaleFallDatabase(url="postgresql+psycopg://nobody@127.0.0.1:1/unused")}
    definitions = build_defs(settings, resources=resources)
    rows = []
    with dagster_instance(storage) as instance:
        history = History(instance, settings, today)
        started = time.perf_counter()
        days = _days(start, today)
        rng = random.Random(15)
        late = rng.sample(days[:-62], 200)  # days whose samples changed again later, over two years
        for level in Level:
            for day in days:
                history.observe(level, day)
            for key in partitions_by_period(start)[PeriodType.QUARTERLY].get_partition_keys():
                history.observe_baseline(level, key)
        materialized = history.materialize_all()
        for level in Level:
            for day in late:
                history.observe(level, day)
                history.materialize_fed(level, day)
        history.runs(finished_runs, queued=SETTINGS["automation_max_queued"].default - 2)
        print(
            f"# {storage}: {len(days)} days, {materialized} partitions materialized, {history.events} events, "
            f"{finished_runs} finished runs recorded in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        partitions = sum(len(p.get_partition_keys()) for p in partitions_by_period(start).values()) * len(Level)

        first, result = _timed(definitions, instance, None)
        rows.append(_row(storage, years, partitions, "first tick (no cursor)", first, result.total_requested))
        changed = rng.sample(days[-62:-1], changed_days)  # late samples in the observed range
        for day in changed:
            history.observe(Level.DATABASE, day)
        for day in changed[:2]:
            history.observe(Level.INSTANCE, day)
        after, result = _timed(definitions, instance, result.cursor)
        label = f"after {changed_days} changed days (database level; 2 also instance level)"
        rows.append(_row(storage, years, partitions, label, after, result.total_requested))
        quiet, result = _timed(definitions, instance, result.cursor)
        rows.append(_row(storage, years, partitions, "next tick, nothing new", quiet, result.total_requested))
        wide = days[-152:-62]  # CAPACITY_OBSERVE_DAYS raised to 124: every day new to the range changed
        for level in Level:
            for day in wide:
                history.observe(level, day)
        flood, result = _timed(definitions, instance, result.cursor)
        label = f"after {len(wide)} changed days at both levels (the range widened)"
        rows.append(_row(storage, years, partitions, label, flood, result.total_requested))
    return rows


HEADER = "| storage | partitions (8 assets, years) | tick | seconds | partitions requested | target <= 10 s |"


def _row(storage: str, years: int, partitions: int, tick: str, seconds: float, requested: int) -> str:
    verdict = "pass" if seconds <= TARGET_SECONDS else "FAIL"
    line = f"| {storage} | {partitions:,} ({years} years) | {tick} | {seconds:.2f} | {requested} | {verdict} |"
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", choices=("postgres", "sqlite"), action="append")
    parser.add_argument("--years", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2000, help="finished background runs in the run history")
    parser.add_argument("--changed-days", type=int, default=5)
    args = parser.parse_args(argv)
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    for storage in args.storage or ["postgres"]:
        bench(storage, args.years, args.runs, args.changed_days)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
