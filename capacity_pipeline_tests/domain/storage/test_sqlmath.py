"""WhaleFall's Python arithmetic in SQL agrees with Python itself, value for value (compat 4, Q3)."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import pytest
from sqlalchemy import text

from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.dialects import dialect_of
from capacity_pipeline.domain.storage.sqlmath import postgres_numeric_avg_float


def _ties_and_neighbours() -> list[float]:
    """Values whose shortest repr ends in a 5 at the third decimal, and the doubles beside them."""
    values = []
    for thousandths in range(-20_005, 20_006, 10):  # ..., -0.005, 0.005, 0.015, ... 20.005
        tie = thousandths / 1000
        values += [tie, tie + 1e-15, tie - 1e-15, math.nextafter(tie, 1e9), math.nextafter(tie, -1e9)]
    values += [0.125, 0.375, 0.625, 0.875, 2.675, 1.005, 10.125, -2.675, 99999999.995, 12345678.125]
    return values


def _percent_like(seed: int, count: int) -> list[float]:
    """Numbers shaped like WhaleFall's percents: (current - previous) / previous * 100."""
    rng = random.Random(seed)
    values = []
    for _ in range(count):
        previous = rng.choice([rng.randint(1, 5000), rng.randint(1, 10**7) / rng.randint(1, 92)])
        current = rng.randint(0, 2 * 10**7) / rng.choice([1, 3, 7, 30, 90])
        values.append((float(int(current)) - previous) / previous * 100)
    return values


def _fresh_sample(connection, columns: str) -> None:
    connection.exec_driver_sql("DROP TABLE IF EXISTS sample")  # a pooled connection keeps temp tables
    connection.exec_driver_sql(f"CREATE TEMP TABLE sample ({columns})")


def _round_in_sql(engine, values: list[float]) -> list[Decimal]:
    sql = dialect_of(engine)
    with engine.begin() as connection:
        _fresh_sample(connection, "n INTEGER, x DOUBLE PRECISION")
        connection.execute(
            text("INSERT INTO sample (n, x) VALUES (:n, :x)"),
            [{"n": n, "x": x} for n, x in enumerate(values)],
        )
        rows = connection.execute(text(f"SELECT {sql.py_round2('x')} FROM sample ORDER BY n")).scalars()
        return [Decimal(str(value)).quantize(Decimal("0.01")) for value in rows]


@pytest.mark.parametrize("values", [_ties_and_neighbours(), _percent_like(7, 20_000)], ids=["ties", "percents"])
def test_postgresql_py_round2_matches_python_round(pg_engine, values):
    """PostgreSQL computes it in pure SQL; Python's own round is the independent reference."""
    expected = [Decimal(repr(round(x, 2))).quantize(Decimal("0.01")) for x in values]
    assert _round_in_sql(pg_engine, values) == expected


# Ties on the binary value, written out (compat Q3): what Python's round(x, 2) gives.
BINARY_TIES = [(0.125, "0.12"), (0.375, "0.38"), (2.675, "2.67"), (1.005, "1.0"), (-2.675, "-2.67"), (10.125, "10.12")]


def test_py_round2_rounds_the_binary_value_half_to_even_on_both_dialects(engine):
    assert _round_in_sql(engine, [x for x, _ in BINARY_TIES]) == [
        Decimal(v).quantize(Decimal("0.01")) for _, v in BINARY_TIES
    ]


def test_sqlite_needs_the_registered_function_its_own_round_would_be_wrong(tmp_path):
    """SQLite's built-in round() rounds decimal ties away from zero: using it would fail the test above."""
    engine = make_engine(f"sqlite:///{tmp_path / 'round.db'}")
    with engine.connect() as connection:
        builtin = [connection.execute(text("SELECT round(:x, 2)"), {"x": x}).scalar() for x, _ in BINARY_TIES]
    assert [Decimal(str(v)).quantize(Decimal("0.01")) for v in builtin] != [
        Decimal(v).quantize(Decimal("0.01")) for _, v in BINARY_TIES
    ]
    engine.dispose()


def test_pg_numeric2_rounds_half_away_from_zero_like_a_numeric_column(engine):
    sql = dialect_of(engine)
    values = [10.125, 10.135, 81 / 8, 413 / 40, 31 / 3, -10.125, 2.675, 0.005]
    with engine.begin() as connection:
        _fresh_sample(connection, "n INTEGER, x DOUBLE PRECISION")
        connection.execute(
            text("INSERT INTO sample (n, x) VALUES (:n, :x)"),
            [{"n": n, "x": x} for n, x in enumerate(values)],
        )
        got = connection.execute(text(f"SELECT {sql.pg_numeric2('x')} FROM sample ORDER BY n")).scalars()
        got = [Decimal(str(value)).quantize(Decimal("0.01")) for value in got]
    assert got == [Decimal(v) for v in ["10.13", "10.14", "10.13", "10.33", "10.33", "-10.13", "2.68", "0.01"]]


def test_postgresql_average_as_float_is_emulated_exactly(pg_engine):
    """SQLite's AVG must reproduce float(PostgreSQL's numeric AVG of bigint), double rounding and all."""
    rng = random.Random(11)
    groups = [[rng.randint(0, 10**12) for _ in range(rng.randint(1, 95))] for _ in range(3000)]
    groups += [[1000, 1010, 1020, 1030, 1041], [950, 960, 970], [0], [2**62, 2**62 - 1]]
    with pg_engine.begin() as connection:
        _fresh_sample(connection, "g INTEGER, v BIGINT")
        connection.execute(
            text("INSERT INTO sample (g, v) VALUES (:g, :v)"),
            [{"g": g, "v": v} for g, values in enumerate(groups) for v in values],
        )
        averages = dict(connection.execute(text("SELECT g, CAST(avg(v) AS float8) FROM sample GROUP BY g")).all())
    emulated = {g: postgres_numeric_avg_float(sum(values), len(values)) for g, values in enumerate(groups)}
    assert emulated == averages
