"""Month partitions of the capacity tables, created on demand (fixes compat Q16).

WhaleFall only creates partitions through an admin API, so a write into a month nobody prepared
fails. Before the pipeline writes a month it makes sure the partition exists, with WhaleFall's
name (`<table>_YYYY_MM`), bounds and comment. Two processes racing to create the same partition are
serialised by an advisory lock, so neither fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from capacity_pipeline.domain.periods import add_months
from capacity_pipeline.domain.storage.dialects import dialect_of
from capacity_pipeline.domain.storage.tables import PARTITIONED_TABLES

_ALREADY_COVERED = re.compile(r"would overlap partition|default partition", re.IGNORECASE)


def partition_name(table: str, month: date) -> str:
    return f"{table}_{month.year:04d}_{month.month:02d}"


def ensure_month_partitions(engine: Engine, tables: Iterable[str], months: Iterable[date]) -> list[str]:
    """Create the missing month partitions; returns the names created. A no-op where tables are not
    partitioned (SQLite)."""
    if not dialect_of(engine).partitions_by_month:
        return []
    first_days = {month.replace(day=1) for month in months}  # `months` may be a one-shot iterable
    wanted = sorted({(table, month) for table in tables for month in first_days})
    for table, _ in wanted:
        if table not in PARTITIONED_TABLES:
            raise ValueError(f"table: {table!r} is not partitioned; allowed: {sorted(PARTITIONED_TABLES)}")
    with engine.connect() as connection:  # one connection for every look at the catalog
        missing = [
            (table, month, partition_name(table, month))
            for table, month in wanted
            if _needs_partition(connection, table, partition_name(table, month))
        ]
    created = []
    for table, month, name in missing:
        try:
            if _create_partition(engine, table, name, month):
                created.append(name)
        except DBAPIError as error:
            # The month is already covered by a differently named or DEFAULT partition: rows route.
            if not _ALREADY_COVERED.search(str(error.orig)):
                raise
    return created


def _create_partition(engine: Engine, table: str, name: str, month: date) -> bool:
    with engine.begin() as connection:
        dialect_of(engine).serialise(connection, f"capacity_pipeline.partition.{name}")
        if not _needs_partition(connection, table, name):
            return False  # another process created it while we waited for the lock
        _, display_name = PARTITIONED_TABLES[table]
        connection.exec_driver_sql(
            f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{table}" '
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{add_months(month, 1).isoformat()}')"
        )
        comment = f"{display_name}分区表 - {month.year:04d}-{month.month:02d}"
        connection.exec_driver_sql(f"COMMENT ON TABLE \"{name}\" IS '{comment}'")
    return True


def _needs_partition(connection: Connection, table: str, name: str) -> bool:
    """True when `table` is a partitioned parent and `name` does not exist yet."""
    row = connection.execute(
        text(
            "SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass(:parent)) = 'p', to_regclass(:child) IS NULL"
        ),
        {"parent": table, "child": name},
    ).one()
    return bool(row[0]) and bool(row[1])
