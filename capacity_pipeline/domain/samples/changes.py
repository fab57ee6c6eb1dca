"""Which instance's samples changed on which day: per-(instance, day) versions and a change log.

An observation computes, in one `GROUP BY` over the observed days, a version per (instance, day)
of a stats table: its row count, ids, last update and the sums of every value an aggregation
reads, so any insert, update or delete of a sample changes it. It compares them, in the database,
with the versions it recorded last time, appends one row per changed (instance, day) to
`capacity_sample_changes`, and records the new versions. The change log's ids grow in commit
order (observations are serialised by a lock), so "every change after id N" is an exact cursor:
a roll-up window remembers the id it was aggregated after (refresh.py) and re-aggregates only the
instances changed since.

The first observation of a level has nothing to compare with: it records the versions and logs no
change (the roll-ups already made, by WhaleFall, the nightly run or a demo, stand as they are), so
a first start, a new deployment or the demo leaves the automation with nothing to do until a
sample actually changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import Connection, Engine, text

from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import Window
from capacity_pipeline.domain.storage.database import in_transaction
from capacity_pipeline.domain.storage.dialects import dialect_of

STATS_TABLES = {Level.DATABASE: "database_size_stats", Level.INSTANCE: "instance_size_stats"}

# What a version of one instance's samples on one day is made of (every value an aggregation reads).
_VERSION_PARTS = {
    Level.DATABASE: (
        "count(*)",
        "sum(id)",
        "max(updated_at)",
        "sum(size_mb)",
        "sum(coalesce(data_size_mb, 0))",
        "count(data_size_mb)",
        "sum(coalesce(log_size_mb, 0))",
        "count(log_size_mb)",
        "sum({name_hash})",
    ),
    Level.INSTANCE: (
        "count(*)",
        "sum(id)",
        "max(updated_at)",
        "sum(total_size_mb)",
        "sum(database_count)",
        "sum(CASE WHEN is_deleted THEN 1 ELSE 0 END)",
        "max(deleted_at)",
    ),
}
_CURRENT = "capacity_observed_versions"  # a temporary table: this observation's versions


@dataclass(frozen=True)
class DayChanges:
    """The instances whose samples of one day changed in one observation."""

    day: date
    last_change: int  # the highest change id of the day: the day's new data version
    instance_ids: tuple[int, ...]


@dataclass(frozen=True)
class Observation:
    """What one observation of one level found."""

    level: Level
    days: Window
    instance_days: int  # (instance, day) pairs with samples in the observed days
    first: bool  # nothing was recorded before: versions recorded, no change logged
    changed: dict[date, DayChanges] = field(default_factory=dict)

    @property
    def changed_instance_days(self) -> int:
        return sum(len(day.instance_ids) for day in self.changed.values())

    def describe(self) -> str:
        """One line for the run's log."""
        table = STATS_TABLES[self.level]
        if self.first:
            return (
                f"{table}: first observation, {self.instance_days} instance-days recorded as they are; "
                "changes are followed from now on"
            )
        if not self.changed:
            return f"{table}: nothing changed in {self.days} ({self.instance_days} instance-days)"
        days = ", ".join(f"{d.day} ({len(d.instance_ids)} instance(s))" for d in list(self.changed.values())[:5])
        more = f" and {len(self.changed) - 5} more day(s)" if len(self.changed) > 5 else ""
        count = self.changed_instance_days
        return f"{table}: {count} instance-day(s) changed on {len(self.changed)} day(s): {days}{more}"


def observe_changes(engine: Engine, level: Level, days: Window) -> Observation:
    """Compare the samples of `days` with the versions recorded last time, log what changed, and
    record the new versions; in one transaction, serialised with other observations."""
    return in_transaction(engine, lambda connection: _observe(connection, level, days))


def _observe(connection: Connection, level: Level, days: Window) -> Observation:
    dialect = dialect_of(connection.engine)
    dialect.serialise(connection, "capacity_pipeline.observe_samples")  # change ids in commit order
    # The GROUP BY over the observed days in memory and without JIT compilation (at 1000 instances
    # x 100 databases over 62 days, JIT took 1.7 s of a 2.1 s statement and the hash spilled to
    # disk), and the comparisons by hash or merge, never a nested loop over two whole sets.
    dialect.begin_comparison(connection)
    parts = [p.format(name_hash=dialect.text_hash("database_name")) for p in _VERSION_PARTS[level]]
    version = " || ':' || ".join(f"coalesce(CAST({part} AS TEXT), '')" for part in parts)
    params = {"level": level.value, "first": days.start, "last": days.end}
    connection.execute(text(f"DROP TABLE IF EXISTS {_CURRENT}"))
    connection.execute(
        text(
            f"CREATE TEMPORARY TABLE {_CURRENT} AS "
            f"SELECT instance_id, collected_date, {version} AS version FROM {STATS_TABLES[level]} "
            "WHERE collected_date BETWEEN :first AND :last GROUP BY instance_id, collected_date"
        ),
        params,
    )
    observation = _compare_and_record(connection, level, days, params)
    connection.execute(text(f"DROP TABLE {_CURRENT}"))  # after a failure: rolled back, or dropped by the next
    return observation


def _compare_and_record(connection: Connection, level: Level, days: Window, params: dict) -> Observation:
    previous = connection.execute(
        text("SELECT observed_from FROM capacity_sample_observations WHERE level = :level"), params
    ).first()
    first = previous is None
    previous_from = as_date(previous[0]) if previous is not None and previous[0] is not None else days.start
    params = {**params, "previous_from": previous_from}
    run = lambda sql: connection.execute(text(sql), params)  # noqa: E731
    instance_days = run(f"SELECT count(*) FROM {_CURRENT}").scalar_one()
    if first:
        run(
            "INSERT INTO capacity_sample_observations (level, observed_from) "
            "VALUES (CAST(:level AS VARCHAR(16)), :first)"
        )
    else:
        run(
            "UPDATE capacity_sample_observations SET last_observed_at = CURRENT_TIMESTAMP, observed_from = :first "
            "WHERE level = :level"
        )
    before = run("SELECT coalesce(max(id), 0) FROM capacity_sample_changes").scalar_one()
    same = "v.instance_id = c.instance_id AND v.collected_date = c.collected_date"
    if not first:
        # Inserted or updated: a version that is new or differs; deleted: a recorded one now without
        # samples. Days before the range observed last time (a wider CAPACITY_OBSERVE_DAYS) were never
        # seen: adopted as they are, like a first observation's.
        run(
            "INSERT INTO capacity_sample_changes (level, instance_id, collected_date) "
            f"SELECT CAST(:level AS VARCHAR(16)), c.instance_id, c.collected_date FROM {_CURRENT} c "
            "WHERE c.collected_date >= :previous_from "
            f"AND NOT EXISTS (SELECT 1 FROM capacity_sample_versions v WHERE v.level = :level AND {same} "
            "AND v.version = c.version) "
            "UNION ALL "
            "SELECT CAST(:level AS VARCHAR(16)), v.instance_id, v.collected_date FROM capacity_sample_versions v "
            "WHERE v.level = :level AND v.collected_date BETWEEN :first AND :last "
            f"AND NOT EXISTS (SELECT 1 FROM {_CURRENT} c WHERE {same}) "
            "ORDER BY 3, 2"
        )
    # The recorded versions become this observation's (and days before the range are forgotten).
    run(
        "DELETE FROM capacity_sample_versions WHERE level = :level AND (collected_date < :first OR "
        "(collected_date <= :last AND NOT EXISTS (SELECT 1 FROM "
        f"{_CURRENT} c WHERE c.instance_id = capacity_sample_versions.instance_id "
        "AND c.collected_date = capacity_sample_versions.collected_date "
        "AND c.version = capacity_sample_versions.version)))"
    )
    run(
        "INSERT INTO capacity_sample_versions (level, instance_id, collected_date, version) "
        f"SELECT CAST(:level AS VARCHAR(16)), c.instance_id, c.collected_date, c.version FROM {_CURRENT} c "
        f"WHERE NOT EXISTS (SELECT 1 FROM capacity_sample_versions v WHERE v.level = :level AND {same})"
    )
    rows = connection.execute(
        text(
            "SELECT collected_date, instance_id, id FROM capacity_sample_changes WHERE id > :before "
            "ORDER BY collected_date, instance_id"
        ),
        {"before": before},
    ).all()
    return Observation(level, days, instance_days, first, _by_day(rows))


def _by_day(rows: list) -> dict[date, DayChanges]:
    grouped: dict[date, tuple[int, list[int]]] = {}
    for day, instance_id, change_id in rows:
        day = as_date(day)
        last, instances = grouped.get(day, (0, []))
        instances.append(instance_id)
        grouped[day] = (max(last, change_id), instances)
    return {day: DayChanges(day, last, tuple(ids)) for day, (last, ids) in grouped.items()}


def last_change(connection: Connection | Engine, level: Level | None = None) -> int:
    """The id of the latest change logged (of one level, or of any), 0 when there is none."""
    where = " WHERE level = :level" if level is not None else ""
    sql = text(f"SELECT coalesce(max(id), 0) FROM capacity_sample_changes{where}")
    params = {"level": level.value} if level is not None else {}
    if isinstance(connection, Engine):
        with connection.connect() as bound:
            return int(bound.execute(sql, params).scalar_one())
    return int(connection.execute(sql, params).scalar_one())


def changed_days_within(connection: Connection, level: Level, days: Window) -> list[date]:
    """The days of `days` with a logged change, in order."""
    rows = connection.execute(
        text(
            "SELECT DISTINCT collected_date FROM capacity_sample_changes "
            "WHERE level = :level AND collected_date BETWEEN :first AND :last ORDER BY collected_date"
        ),
        {"level": level.value, "first": days.start, "last": days.end},
    ).scalars()
    return [as_date(day) for day in rows]


def changes_after(connection: Connection, level: Level, since: int, days: Window) -> list[tuple[int, date, int]]:
    """(instance, day, change id) of every change after id `since` on a day of `days`."""
    rows = connection.execute(
        text(
            "SELECT instance_id, collected_date, id FROM capacity_sample_changes "
            "WHERE level = :level AND id > :since AND collected_date BETWEEN :first AND :last"
        ),
        {"level": level.value, "since": since, "first": days.start, "last": days.end},
    ).all()
    return [(instance_id, as_date(day), int(change_id)) for instance_id, day, change_id in rows]


def last_changes_within(engine: Engine, level: Level, windows: Mapping[date, Window]) -> dict[date, int]:
    """Key -> the latest change id logged for a day of its window (keys without any are left out)."""
    found = {}
    with engine.connect() as connection:
        for key, window in windows.items():
            value = connection.execute(
                text(
                    "SELECT max(id) FROM capacity_sample_changes WHERE level = :level "
                    "AND collected_date BETWEEN :first AND :last"
                ),
                {"level": level.value, "first": window.start, "last": window.end},
            ).scalar_one()
            if value is not None:
                found[key] = int(value)
    return found


def as_date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
