"""Month partitions of the capacity tables, made before a write needs them (fixes compat Q16).

WhaleFall only creates partitions through an admin API, so a write into a month nobody prepared
fails. Before the pipeline writes a month it makes sure the partition exists, with WhaleFall's
name (`<table>_YYYY_MM`), bounds and comment; the catalog look-ups and the DDL are the dialect's
(dialects.PostgresDialect), and SQLite has no partitions to make.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from sqlalchemy import Engine

from capacity_pipeline.domain.periods import add_months
from capacity_pipeline.domain.storage.dialects import dialect_of
from capacity_pipeline.domain.storage.tables import PARTITIONED_TABLES


def partition_name(table: str, month: date) -> str:
    return f"{table}_{month.year:04d}_{month.month:02d}"


def ensure_month_partitions(engine: Engine, tables: Iterable[str], months: Iterable[date]) -> list[str]:
    """Create the missing month partitions; returns the names created (none where the dialect does
    not partition)."""
    first_days = {month.replace(day=1) for month in months}  # `months` may be a one-shot iterable
    wanted = sorted({(table, month) for table in tables for month in first_days})
    for table, _ in wanted:
        if table not in PARTITIONED_TABLES:
            raise ValueError(f"table: {table!r} is not partitioned; allowed: {sorted(PARTITIONED_TABLES)}")
    dialect = dialect_of(engine)
    with engine.connect() as connection:  # one connection for every look at the catalog
        missing = [
            (table, month)
            for table, month in wanted
            if dialect.needs_month_partition(connection, table, partition_name(table, month))
        ]
    created = []
    for table, month in missing:
        name = partition_name(table, month)
        _, display_name = PARTITIONED_TABLES[table]
        comment = f"{display_name}分区表 - {month.year:04d}-{month.month:02d}"  # WhaleFall's wording
        if dialect.create_month_partition(engine, table, name, month, add_months(month, 1), comment):
            created.append(name)
    return created
