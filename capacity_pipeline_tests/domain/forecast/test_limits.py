"""Capacity limits: set, replace, unset, list; bad input names the field and writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from capacity_pipeline.domain.forecast.limits import MAX_LIMIT_MB, list_limits, set_limit, unset_limit
from capacity_pipeline.domain.forecast.model import InvalidForecastInput, Limit

NOW = datetime(2026, 7, 1, 9, 30, tzinfo=UTC)


def test_a_limit_is_set_replaced_and_unset(engine, whalefall):
    whalefall.instance(7)
    first = set_limit(engine, 7, None, 500_000, note="SAN LUN 3", updated_by=12, now=NOW)
    assert first == Limit(7, None, 500_000, "SAN LUN 3", 12, NOW)
    set_limit(engine, 7, "orders", 20_000, now=NOW)
    later = datetime(2026, 7, 2, tzinfo=UTC)
    replaced = set_limit(engine, 7, None, 600_000, updated_by=13, now=later)  # the instance's own, replaced
    assert replaced == Limit(7, None, 600_000, None, 13, later)
    assert list_limits(engine) == [replaced, Limit(7, "orders", 20_000, None, None, NOW)]

    assert unset_limit(engine, 7, "orders") is True
    assert unset_limit(engine, 7, "orders") is False
    assert list_limits(engine) == [replaced]


def test_limits_are_listed_by_instance_with_the_instance_itself_first(engine, whalefall):
    for instance_id in (3, 1):
        whalefall.instance(instance_id)
        set_limit(engine, instance_id, "b", 2, now=NOW)
        set_limit(engine, instance_id, None, 1, now=NOW)
        set_limit(engine, instance_id, "a", 3, now=NOW)
    keys = [(limit.instance_id, limit.database_name) for limit in list_limits(engine)]
    assert keys == [(1, None), (1, "a"), (1, "b"), (3, None), (3, "a"), (3, "b")]
    assert [limit.database_name for limit in list_limits(engine, 3)] == [None, "a", "b"]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ((7, None, 0), "limit_mb"),
        ((7, None, -5), "limit_mb"),
        ((7, None, MAX_LIMIT_MB + 1), "limit_mb"),
        ((7, None, 1.5), "limit_mb"),
        ((7, None, True), "limit_mb"),
        ((7, "  ", 10), "database_name"),
        ((7, "x" * 256, 10), "database_name"),
        ((0, None, 10), "instance_id"),
        ((99, None, 10), "instance_id"),  # no such instance
    ],
)
def test_a_bad_limit_names_the_field_and_writes_nothing(engine, whalefall, arguments, field):
    whalefall.instance(7)
    with pytest.raises(InvalidForecastInput, match=f"^{field}: "):
        set_limit(engine, *arguments)
    assert list_limits(engine) == []


def test_a_note_and_a_user_are_checked_too(engine, whalefall):
    whalefall.instance(7)
    with pytest.raises(InvalidForecastInput, match="^note: "):
        set_limit(engine, 7, None, 10, note="x" * 1001)
    with pytest.raises(InvalidForecastInput, match="^updated_by: "):
        set_limit(engine, 7, None, 10, updated_by=0)
    assert list_limits(engine) == []
