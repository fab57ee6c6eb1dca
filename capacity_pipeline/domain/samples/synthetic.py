"""Synthetic WhaleFall capacity data for demos, tests and benchmarks.

N instances x M databases x D days, reproducible from a seed, with the awkward cases the
aggregation must handle: inactive and soft-deleted instances, NULL data sizes, SQL Server log
sizes, missing days, databases that shrink, and soft-deleted instance stats rows. Rows are made
with numpy a day at a time and bulk-loaded: COPY on PostgreSQL, executemany on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, func, insert, select

from capacity_pipeline.domain.periods import months_between
from capacity_pipeline.domain.storage.dialects import dialect_of
from capacity_pipeline.domain.storage.month_partitions import ensure_month_partitions
from capacity_pipeline.domain.storage.tables import tables_for

DB_TYPES = ("mysql", "postgresql", "sqlserver", "oracle")

_DATABASE_COLUMNS = [
    "instance_id",
    "database_name",
    "size_mb",
    "data_size_mb",
    "log_size_mb",
    "collected_date",
]
_INSTANCE_COLUMNS = ["instance_id", "total_size_mb", "database_count", "collected_date", "is_deleted"]


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Dates run for `days` days ending at `end_date` (inclusive)."""

    instances: int
    databases: int
    days: int
    end_date: date
    seed: int = 42
    inactive_share: float = 0.05
    deleted_share: float = 0.03
    missing_day_share: float = 0.02
    shrinking_share: float = 0.15
    null_data_share: float = 0.05

    def __post_init__(self) -> None:
        for name in ("instances", "databases", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")

    @property
    def start_date(self) -> date:
        return self.end_date - timedelta(days=self.days - 1)


@dataclass(frozen=True)
class LoadedCounts:
    instances: int
    database_size_stats: int
    instance_size_stats: int


def load_synthetic_data(
    engine: Engine, spec: SyntheticSpec, *, on_day: Callable[[int], object] | None = None
) -> LoadedCounts:
    """Generate and bulk-load the data. Refuses to load into a database that already has instances.
    `on_day(1)` is called after each day is loaded (a progress bar's update)."""
    metadata = tables_for(engine)
    instances_table = metadata.tables["instances"]
    with engine.connect() as connection:
        existing = connection.execute(select(func.count()).select_from(instances_table)).scalar_one()
    if existing:
        raise ValueError(
            f"instances: the target database already has {existing} instances; "
            "synthetic data only goes into an empty database"
        )
    ensure_month_partitions(
        engine,
        ["database_size_stats", "instance_size_stats"],
        months_between(spec.start_date, spec.end_date),
    )
    generator = _Generator(spec)
    with engine.begin() as connection:
        connection.execute(insert(instances_table), generator.instance_rows())
    database_rows = instance_rows = 0
    for day_databases, day_instances in generator.days():
        database_rows += len(day_databases)
        instance_rows += len(day_instances)
        _bulk_load(engine, "database_size_stats", day_databases, _DATABASE_COLUMNS)
        _bulk_load(engine, "instance_size_stats", day_instances, _INSTANCE_COLUMNS)
        if on_day is not None:
            on_day(1)
    dialect_of(engine).analyze(engine, ["instances", "database_size_stats", "instance_size_stats"])
    return LoadedCounts(spec.instances, database_rows, instance_rows)


def seeded_through(engine: Engine) -> date | None:
    """The last day the database has samples for; None when it has no instances (never seeded)."""
    tables = tables_for(engine).tables
    with engine.connect() as connection:
        if not connection.execute(select(func.count()).select_from(tables["instances"])).scalar_one():
            return None
        last = connection.execute(select(func.max(tables["instance_size_stats"].c.collected_date))).scalar_one()
    return date.fromisoformat(last) if isinstance(last, str) else last


def clear_synthetic_data(engine: Engine) -> None:
    """Delete the instances, their samples and their aggregations (a demo re-seeding itself), and
    what was observed of them (the new samples are a first observation's, not changes); the run
    center's tables are left as they are."""
    tables = tables_for(engine).tables
    with engine.begin() as connection:
        for name in (
            "capacity_sample_versions",
            "capacity_sample_observations",
            "capacity_sample_changes",
            "capacity_window_marks",
            "database_size_aggregations",
            "instance_size_aggregations",
            "database_size_stats",
            "instance_size_stats",
            "instances",
        ):
            connection.execute(delete(tables[name]))


class _Generator:
    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        n, m = spec.instances, spec.databases
        self.rng = rng
        self.db_types = rng.choice(DB_TYPES, size=n)
        self.inactive = rng.random(n) < spec.inactive_share
        self.deleted = rng.random(n) < spec.deleted_share
        # Per database: a starting size, a daily growth (some negative), a data share, a log share.
        self.base_size = np.exp(rng.normal(7.0, 1.6, size=(n, m))).clip(1, 400_000)
        growth = rng.normal(0.004, 0.004, size=(n, m))
        shrinking = rng.random((n, m)) < spec.shrinking_share
        self.daily_growth = np.where(shrinking, -np.abs(growth) - 0.002, growth)
        self.data_share = rng.uniform(0.6, 0.95, size=(n, m))
        self.null_data = rng.random((n, m)) < spec.null_data_share
        self.log_share = rng.uniform(0.02, 0.2, size=(n, m))
        # Databases are born and dropped during the range, so counts change from day to day.
        self.first_day = np.where(rng.random((n, m)) < 0.1, rng.integers(0, spec.days, (n, m)), 0)
        self.last_day = np.where(rng.random((n, m)) < 0.05, rng.integers(0, spec.days, (n, m)), spec.days - 1)
        self.instance_ids = np.arange(1, n + 1)
        self.database_names = np.array([f"db_{j:03d}" for j in range(m)], dtype=object)

    def instance_rows(self) -> list[dict]:
        deleted_at = datetime(2020, 1, 1, tzinfo=UTC)
        return [
            {
                "id": int(instance_id),
                "name": f"instance-{instance_id:05d}",
                "db_type": str(self.db_types[index]),
                "is_active": not bool(self.inactive[index]),
                "deleted_at": deleted_at if self.deleted[index] else None,
            }
            for index, instance_id in enumerate(self.instance_ids)
        ]

    def days(self) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
        spec, rng = self.spec, self.rng
        n, m = spec.instances, spec.databases
        sqlserver = (self.db_types == "sqlserver")[:, None]
        for offset in range(spec.days):
            day = spec.start_date + timedelta(days=offset)
            noise = rng.normal(1.0, 0.002, size=(n, m))
            size = np.maximum(self.base_size * (1 + self.daily_growth) ** offset * noise, 1)
            size_mb = np.floor(size).astype(np.int64)
            data_mb = np.floor(size * self.data_share).astype(np.int64)
            log_mb = np.floor(size * self.log_share).astype(np.int64)
            present = (self.first_day <= offset) & (self.last_day >= offset)
            present &= (rng.random(n) >= spec.missing_day_share)[:, None]  # whole-instance gaps
            null_data = self.null_data | (rng.random((n, m)) < 0.01)

            rows, cols = np.nonzero(present)
            databases = pd.DataFrame(
                {
                    "instance_id": self.instance_ids[rows],
                    "database_name": self.database_names[cols],
                    "size_mb": size_mb[rows, cols],
                    "data_size_mb": pd.array(np.where(null_data[rows, cols], 0, data_mb[rows, cols]), dtype="Int64"),
                    "log_size_mb": pd.array(log_mb[rows, cols], dtype="Int64"),
                    "collected_date": day,
                }
            )
            databases.loc[null_data[rows, cols], "data_size_mb"] = pd.NA
            databases.loc[~sqlserver[rows, 0], "log_size_mb"] = pd.NA

            totals = databases.groupby("instance_id", sort=True)["size_mb"].agg(["sum", "count"])
            instances = pd.DataFrame(
                {
                    "instance_id": totals.index.to_numpy(),
                    "total_size_mb": totals["sum"].to_numpy(),
                    "database_count": totals["count"].to_numpy(),
                    "collected_date": day,
                    "is_deleted": False,
                }
            )
            # A few superseded rows, soft-deleted: the aggregation must not see them.
            ghosts = instances[rng.random(len(instances)) < 0.01].copy()
            ghosts["total_size_mb"] = ghosts["total_size_mb"] * 3
            ghosts["is_deleted"] = True
            yield databases, pd.concat([instances, ghosts], ignore_index=True)


def _bulk_load(engine: Engine, table: str, frame: pd.DataFrame, columns: list[str]) -> None:
    if frame.empty:
        return
    dialect_of(engine).bulk_insert(engine, tables_for(engine).tables[table], frame[columns])
