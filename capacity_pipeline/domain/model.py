"""The vocabulary every layer shares: levels, scopes, statuses, instances, and what a run did.

Values are typed once at the edge (an HTTP body, argv, a Dagster tag) and travel as these types
down to the SQL; nothing below the edge re-parses a string.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from capacity_pipeline.domain.periods import PeriodType, Window, previous_window

SCOPE_ERROR = "scope 参数仅支持 instance、database 或 all"  # compat 7.1


class Level(StrEnum):
    """The two aggregation levels, each with its own output table (compat 4.1, 4.2)."""

    DATABASE = "database"
    INSTANCE = "instance"

    @property
    def table(self) -> str:
        return f"{self.value}_size_aggregations"


class InvalidScope(ValueError):
    """A scope outside instance / database / all; the message is WhaleFall's (compat 7.1)."""

    def __init__(self, requested: Any) -> None:
        super().__init__(SCOPE_ERROR)
        self.requested = requested


class Scope(StrEnum):
    """WhaleFall's scope names (compat 7.1): which levels a run aggregates."""

    ALL = "all"
    DATABASE = "database"
    INSTANCE = "instance"

    @property
    def levels(self) -> tuple[Level, ...]:
        # Database level first, as WhaleFall's manual run does (compat 6.2 step 4).
        if self is Scope.ALL:
            return (Level.DATABASE, Level.INSTANCE)
        return (Level(self.value),)

    @classmethod
    def of_levels(cls, levels: set[Level]) -> Scope:
        return cls.ALL if len(levels) != 1 else cls(next(iter(levels)).value)

    @classmethod
    def from_request(cls, value: Any) -> Scope:
        """Spec 7.1: a non-blank string is stripped and lowercased; anything else means `all`."""
        if isinstance(value, str) and value.strip():
            try:
                return cls(value.strip().lower())
            except ValueError:
                raise InvalidScope(value) from None
        return cls.ALL


class TaskStatus(StrEnum):
    """Run-center statuses (compat 6.1); the CHECK constraints allow exactly these."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"


IN_PROGRESS = (TaskStatus.PENDING, TaskStatus.RUNNING)


class Outcome(StrEnum):
    """What a runner did for one instance in one window (compat 4.3)."""

    COMPLETED = "completed"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True, order=True)
class ActiveInstance:
    id: int
    name: str


@dataclass(frozen=True)
class WindowPlan:
    """One window to aggregate, at some levels; the previous window is what the changes compare with."""

    period: PeriodType
    window: Window
    levels: tuple[Level, ...]
    corrected_quarter: bool = False

    @property
    def previous(self) -> Window:
        return previous_window(self.period, self.window, corrected_quarter=self.corrected_quarter)


@dataclass
class InstanceOutcome:
    """What one run did for one instance in one window."""

    instance: ActiveInstance
    rows_written: dict[Level, int] = field(default_factory=dict)
    # WhaleFall's processed_records (compat 4.3): database rows upserted; instance stats days read.
    records_read: dict[Level, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def status(self) -> Outcome:
        if self.error is not None:
            return Outcome.FAILED
        return Outcome.COMPLETED if any(self.rows_written.values()) else Outcome.SKIPPED

    def level_status(self, level: Level) -> Outcome:
        if self.error is not None:
            return Outcome.FAILED
        return Outcome.COMPLETED if self.rows_written.get(level, 0) else Outcome.SKIPPED


@dataclass
class AggregationReport:
    """The outcome of one window's aggregation, instance by instance, in the order they were run."""

    plan: WindowPlan
    instances_total: int
    outcomes: list[InstanceOutcome] = field(default_factory=list)
    batches_total: int = 0
    batches_done: int = 0
    stopped: bool = False
    seconds: float = 0.0  # listing the instances and writing this window (not the other windows of the run)

    @property
    def period_type(self) -> PeriodType:
        return self.plan.period

    @property
    def window(self) -> Window:
        return self.plan.window

    @property
    def previous_window(self) -> Window:
        return self.plan.previous

    @property
    def scope(self) -> Scope:
        return Scope.of_levels(set(self.plan.levels))

    def count(self, status: Outcome) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    def rows_written(self, level: Level) -> int:
        return sum(outcome.rows_written.get(level, 0) for outcome in self.outcomes)

    @property
    def failures(self) -> list[InstanceOutcome]:
        return [outcome for outcome in self.outcomes if outcome.error is not None]

    @property
    def instances_not_run(self) -> int:
        return self.instances_total - len(self.outcomes)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary for people and logs."""
        rows = {level.value: self.rows_written(level) for level in self.plan.levels}
        return {
            "period_type": self.period_type.value,
            "scope": self.scope.value,
            "window": {"start": self.window.start.isoformat(), "end": self.window.end.isoformat()},
            "previous_window": {
                "start": self.previous_window.start.isoformat(),
                "end": self.previous_window.end.isoformat(),
            },
            "instances": {
                "total": self.instances_total,
                "processed": self.count(Outcome.COMPLETED),
                "skipped": self.count(Outcome.SKIPPED),
                "failed": self.count(Outcome.FAILED),
                "not_run": self.instances_not_run,
            },
            "rows_written": {**rows, "total": sum(rows.values())},
            "failures": [
                {"instance_id": o.instance.id, "instance_name": o.instance.name, "error": o.error}
                for o in self.failures
            ],
            "batches": {"done": self.batches_done, "total": self.batches_total},
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


def merge_outcomes(outcome_lists: Iterable[Sequence[InstanceOutcome]]) -> dict[int, InstanceOutcome]:
    """One outcome per instance over several windows: rows and records summed, the first error kept
    (a run over a range of partitions shows one result per instance and level)."""
    merged: dict[int, InstanceOutcome] = {}
    for outcomes in outcome_lists:
        for outcome in outcomes:
            into = merged.setdefault(outcome.instance.id, InstanceOutcome(outcome.instance))
            for level, rows in outcome.rows_written.items():
                into.rows_written[level] = into.rows_written.get(level, 0) + rows
            for level, records in outcome.records_read.items():
                into.records_read[level] = into.records_read.get(level, 0) + records
            if into.error is None:
                into.error = outcome.error
    return merged
