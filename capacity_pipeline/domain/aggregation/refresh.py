"""What a roll-up window must re-aggregate after its samples changed, and how far it has followed them.

Every window aggregated for every active instance remembers, per level, the latest sample change
(capacity_sample_changes.id) logged when its aggregation began: `capacity_window_marks`. A refresh
of the window re-aggregates only the instances with a change after that mark on a day the window
reads (its own days and its previous window's, which its change fields compare with: compat 3,
Q1), and moves the mark on. A window never aggregated since the change log began has no mark and
is re-aggregated whole. The rows are those of a full recompute, since an instance's rows depend on
that instance's samples only (compat 4.1, 4.2).

A window is stale while a change after its mark touches a day it reads: the staleness check says
which, until the window is aggregated again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import Connection, Engine, bindparam, text

from capacity_pipeline.domain.model import Level, WindowPlan
from capacity_pipeline.domain.periods import PeriodType, Window, refreshed_automatically, windows_fed_by_days
from capacity_pipeline.domain.samples.changes import as_date, changed_days_within, changes_after, last_change
from capacity_pipeline.domain.storage.database import in_transaction
from capacity_pipeline.domain.storage.dialects import dialect_of
from capacity_pipeline.domain.storage.tables import tables_for

_CHANGES_READ = """
    SELECT DISTINCT instance_id, collected_date FROM capacity_sample_changes
    WHERE level = :level AND id > :since AND id <= :through
      AND (collected_date BETWEEN :start AND :end OR collected_date BETWEEN :previous_start AND :previous_end)"""


@dataclass(frozen=True)
class Refresh:
    """What one window's refresh covers: the changes after each level's mark, up to `through`."""

    plan: WindowPlan
    through: int  # the latest change the window will have followed
    marks: dict[Level, int | None]  # where each level stood (None: never aggregated since the log began)
    # Per level: instance -> the changed days it reads.
    changed_at: dict[Level, dict[int, tuple[date, ...]]] = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        """Some level has no mark: every instance is re-aggregated."""
        return any(mark is None for mark in self.marks.values())

    @property
    def changed(self) -> dict[int, tuple[date, ...]]:
        """Instance -> the changed days it reads, at any level of the plan."""
        merged: dict[int, set[date]] = {}
        for changed in self.changed_at.values():
            for instance_id, days in changed.items():
                merged.setdefault(instance_id, set()).update(days)
        return {instance_id: tuple(sorted(days)) for instance_id, days in sorted(merged.items())}

    @property
    def instance_ids(self) -> frozenset[int] | None:
        """The instances the refresh concerns, at any of its levels; None for all of them."""
        return None if self.whole else frozenset(self.changed)

    def instance_ids_at(self, level: Level) -> frozenset[int] | None:
        """The instances to re-aggregate at one level; None for all of them."""
        if self.marks.get(level) is None:
            return None
        return frozenset(self.changed_at.get(level, {}))

    def describe(self, in_scope: int) -> str:
        """Why the window is re-aggregated, for people (the run's metadata and summary)."""
        if self.whole:
            never = ", ".join(level.value for level, mark in self.marks.items() if mark is None)
            return f"never aggregated since changes are followed ({never}): all {in_scope} instance(s)"
        if not self.changed:
            return "no sample it reads changed since it was last aggregated: nothing to re-aggregate"
        return (
            f"samples changed for {len(self.changed)} of {in_scope} instance(s) on "
            f"{len({day for days in self.changed.values() for day in days})} day(s) it reads: "
            + changed_days_text(self.changed)
        )


def changed_days_text(changed: dict[int, tuple[date, ...]], limit: int = 5) -> str:
    """A short list: "instance 3: 2026-11-02, 2026-11-04; instance 7: 2026-11-02 (and 4 more)"."""
    shown = [
        f"instance {instance_id}: {', '.join(day.isoformat() for day in days)}"
        for instance_id, days in list(sorted(changed.items()))[:limit]
    ]
    more = f" (and {len(changed) - limit} more instance(s))" if len(changed) > limit else ""
    return "; ".join(shown) + more


def plan_refresh(
    engine: Engine,
    plan: WindowPlan,
    *,
    through: int | None = None,
    marks: Mapping[Level, int | None] | None = None,
) -> Refresh:
    """The refresh of `plan`'s window at its levels: the instances changed after each level's mark
    (default: as recorded now), up to `through` (default: the latest change logged now)."""
    with engine.connect() as connection:
        through = last_change(connection) if through is None else through
        marks = dict(window_marks(connection, plan) if marks is None else marks)
        window, previous = plan.window, plan.previous  # the days its rows read (compat 3, Q1)
        changed: dict[Level, dict[int, set[date]]] = {}
        for level, mark in marks.items():
            if mark is None:
                continue
            at_level = changed.setdefault(level, {})
            rows = connection.execute(
                text(_CHANGES_READ),
                {
                    "level": level.value,
                    "since": mark,
                    "through": through,
                    "start": window.start,
                    "end": window.end,
                    "previous_start": previous.start,
                    "previous_end": previous.end,
                },
            ).all()
            for instance_id, day in rows:
                at_level.setdefault(instance_id, set()).add(as_date(day))
    changed_at = {
        level: {i: tuple(sorted(days)) for i, days in sorted(by_instance.items())}
        for level, by_instance in changed.items()
    }
    return Refresh(plan, through, marks, changed_at)


def window_marks(connection: Connection, plan: WindowPlan) -> dict[Level, int | None]:
    rows = connection.execute(
        text(
            "SELECT level, changes_through FROM capacity_window_marks "
            "WHERE period_type = :period AND period_start = :start"
        ),
        {"period": plan.period.value, "start": plan.window.start},
    ).all()
    found = {Level(level): int(mark) for level, mark in rows}
    return {level: found.get(level) for level in plan.levels}


def record_marks(engine: Engine, marks: Iterable[tuple[Level, WindowPlan]], through: int) -> None:
    """The windows have followed every change up to `through` (a mark only moves forward)."""
    rows = [
        {"level": level.value, "period_type": plan.period.value, "period_start": plan.window.start}
        for level, plan in marks
    ]
    if not rows:
        return
    table = tables_for(engine).tables["capacity_window_marks"]
    insert = dialect_of(engine).insert_ignoring_conflicts(table)
    now = datetime.now(UTC)

    def write(connection: Connection) -> None:
        connection.execute(insert.on_conflict_do_nothing(), [{**row, "changes_through": through} for row in rows])
        connection.execute(
            table.update()
            .where(
                table.c.level == bindparam("b_level"),
                table.c.period_type == bindparam("b_period_type"),
                table.c.period_start == bindparam("b_period_start"),
                table.c.changes_through < bindparam("through"),
            )
            .values(changes_through=bindparam("through"), refreshed_at=bindparam("now")),
            [{f"b_{key}": value for key, value in row.items()} | {"through": through, "now": now} for row in rows],
        )

    in_transaction(engine, write)


@dataclass(frozen=True)
class StaleWindow:
    """A window whose samples changed after it was last aggregated."""

    period_start: date
    instances: int
    days: tuple[date, ...]
    marked: bool  # False: never aggregated since changes are followed


def stale_windows(
    engine: Engine, level: Level, period: PeriodType, windows: Sequence[Window], *, corrected_quarter: bool = False
) -> list[StaleWindow]:
    """Of `windows`, the ones with a change after their mark (any change, without one) on a day
    they read. Two reads whatever the number of windows: their marks, and the changes after the
    lowest of them (usually few: most windows are fresh)."""
    plans = [WindowPlan(period, window, (level,), corrected_quarter) for window in windows]
    if not plans:
        return []
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT period_start, changes_through FROM capacity_window_marks "
                "WHERE level = :level AND period_type = :period AND period_start BETWEEN :first AND :last"
            ),
            {
                "level": level.value,
                "period": period.value,
                "first": min(window.start for window in windows),
                "last": max(window.start for window in windows),
            },
        ).all()
        marks = {as_date(start): int(mark) for start, mark in rows}
        changes = changes_after(
            connection,
            level,
            min(marks.get(plan.window.start, 0) for plan in plans),
            Window(min(plan.previous.start for plan in plans), max(plan.window.end for plan in plans)),
        )
    stale = []
    for plan in plans:
        mark = marks.get(plan.window.start)
        hits = [
            (instance_id, day)
            for instance_id, day, change_id in changes
            if change_id > (mark or 0) and (day in plan.window or day in plan.previous)
        ]
        if hits:
            days = tuple(sorted({day for _, day in hits}))
            stale.append(StaleWindow(plan.window.start, len({i for i, _ in hits}), days, mark is not None))
    return stale


def stale_windows_of_changed_days(
    engine: Engine,
    level: Level,
    period: PeriodType,
    days: Window,
    *,
    today: date,
    include_in_progress: bool,
    corrected_quarter: bool = False,
) -> list[StaleWindow]:
    """The stale windows among those the changed days of `days` feed (the only ones a change can
    have made stale) that the automation re-aggregates (periods.refreshed_automatically)."""
    with engine.connect() as connection:
        changed = changed_days_within(connection, level, days)
    candidates = [
        window
        for window in windows_fed_by_days(period, changed, corrected_quarter=corrected_quarter)
        if refreshed_automatically(period, window, today=today, current_periods=include_in_progress)
    ]
    return stale_windows(engine, level, period, candidates, corrected_quarter=corrected_quarter)
