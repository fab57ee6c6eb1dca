"""WhaleFall's Python arithmetic, expressed in SQL so that aggregation stays inside the database.

WhaleFall computes change metrics in Python: `int()` truncation, IEEE doubles, and the built-in
`round(x, 2)`, which rounds the exact binary value half-to-even (spec Q2, Q3). Each helper here
returns a SQL fragment with exactly those semantics for one dialect:

* PostgreSQL: pure SQL on float8. `py_round2` rounds x*100 directly when it is clearly away
  from a half; near a half it finds the exact value of x*100 with Dekker's error-free product
  (a Veltkamp split of x; 100 needs no split) and rounds half-to-even.
* SQLite: Python functions registered on each connection, which are the reference semantics
  themselves (`round`, `float(Decimal)`), so the two dialects agree by construction.

Arguments are SQL expressions and are repeated in the output, so pass column references.
"""

from __future__ import annotations

import sqlite3
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

# PostgreSQL's numeric division keeps at least this many significant digits (NUMERIC_MIN_SIG_DIGITS).
_PG_MIN_SIG_DIGITS = 16
_PG_DEC_DIGITS = 4  # numeric digits are base 10000
_VELTKAMP_SPLITTER = "134217729::float8"  # 2**27 + 1


class SqlMath:
    """SQL fragments for one dialect."""

    def __init__(self, dialect: str) -> None:
        if dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"dialect: unsupported {dialect!r}; allowed: postgresql, sqlite")
        self.dialect = dialect
        self.is_postgresql = dialect == "postgresql"

    def as_float(self, expr: str) -> str:
        """Python float(expr) of an integer-valued expression."""
        return f"CAST({expr} AS {'float8' if self.is_postgresql else 'REAL'})"

    def trunc_int(self, expr: str) -> str:
        """Python int(x) of a float: truncation toward zero, as a bigint."""
        if self.is_postgresql:
            return f"CAST(trunc({expr}) AS bigint)"
        return f"CAST({expr} AS INTEGER)"

    def avg_truncated(self, column: str, where: str) -> str:
        """int(AVG(column)) over the rows `where` holds: PostgreSQL's numeric AVG, truncated
        (spec 4.1); NULL over no values."""
        if self.is_postgresql:
            return f"CAST(trunc(avg({column}) FILTER (WHERE {where})) AS bigint)"
        # SQLite's SUM of integers is exact and integer division truncates toward zero.
        return f"(sum({column}) FILTER (WHERE {where}) / count({column}) FILTER (WHERE {where}))"

    def avg_as_float(self, column: str, where: str) -> str:
        """float(AVG(column)) over the rows `where` holds, as WhaleFall's driver hands it over."""
        if self.is_postgresql:
            return f"CAST(avg({column}) FILTER (WHERE {where}) AS float8)"
        return f"pg_numeric_avg_float(sum({column}) FILTER (WHERE {where}), count({column}) FILTER (WHERE {where}))"

    def py_round2(self, x: str) -> str:
        """Python round(x, 2) of a float8, as a numeric with two decimals (spec Q3)."""
        if not self.is_postgresql:
            return f"py_round2({x})"
        scaled = f"({x} * 100::float8)"
        whole = f"floor({scaled})"
        # Fast path: x*100 is at least 0.001 away from a half, far more than its rounding error
        # (below 2**-11 for |x*100| < 1e12), so float rounding decides like exact rounding.
        clear_of_half = f"abs({scaled}) < 1e12::float8 AND abs(({scaled} - {whole}) - 0.5::float8) > 0.001::float8"
        # Near a half: x*100 == scaled + error exactly (Dekker); the error's sign decides.
        high = f"({_VELTKAMP_SPLITTER} * {x} - ({_VELTKAMP_SPLITTER} * {x} - {x}))"
        error = f"(({high} * 100::float8 - {scaled}) + ({x} - {high}) * 100::float8)"
        above_half = f"((({scaled} - {whole}) - 0.5::float8) + {error})"
        exact = (
            f"{whole} + CASE WHEN {above_half} > 0 THEN 1 WHEN {above_half} < 0 THEN 0 "
            f"WHEN {whole} = 2 * floor({whole} / 2) THEN 0 ELSE 1 END"
        )
        return f"(CAST(CASE WHEN {clear_of_half} THEN round({scaled}) ELSE {exact} END AS numeric) / 100)"

    def pg_numeric2(self, x: str) -> str:
        """A float8 stored into numeric(10,2): PostgreSQL rounds half away from zero (spec 4.2)."""
        if self.is_postgresql:
            return f"round(CAST({x} AS numeric), 2)"
        return f"pg_numeric2({x})"


def python_round2(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def postgres_numeric2(x: float | None) -> float | None:
    """PostgreSQL's float8 -> numeric cast (15 significant digits), then scale 2 half-up."""
    if x is None:
        return None
    return float(Decimal(f"{x:.15g}").quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def postgres_numeric_avg_float(total: int | None, count: int | None) -> float | None:
    """float(AVG(bigint)) as PostgreSQL computes it: numeric_div's scale rule, then to double."""
    if not count or total is None:
        return None
    scale = _postgres_division_scale(total, count)
    scaled = Fraction(total, count) * 10**scale
    magnitude = abs(scaled)
    rounded = int(magnitude) + (1 if magnitude - int(magnitude) >= Fraction(1, 2) else 0)
    signed = rounded if scaled >= 0 else -rounded
    return float(Decimal(signed).scaleb(-scale))


def _base10000_weight_and_first_digit(value: int) -> tuple[int, int]:
    """PostgreSQL numeric's weight (base-10000 digits before the point, minus one) and first digit."""
    leading = abs(value)
    weight = 0
    while leading >= 10_000:
        leading //= 10_000
        weight += 1
    return weight, leading


def _postgres_division_scale(dividend: int, divisor: int) -> int:
    """select_div_scale() of PostgreSQL's numeric.c, for two integers (display scale 0)."""
    weight1, first1 = _base10000_weight_and_first_digit(dividend)
    weight2, first2 = _base10000_weight_and_first_digit(divisor)
    quotient_weight = weight1 - weight2
    if first1 <= first2:
        quotient_weight -= 1
    scale = _PG_MIN_SIG_DIGITS - quotient_weight * _PG_DEC_DIGITS
    return min(max(scale, 0), 1000)


def register_sqlite_functions(connection: sqlite3.Connection) -> None:
    """Make the SQLite helpers above callable from SQL on this connection."""
    connection.create_function("py_round2", 1, python_round2, deterministic=True)
    connection.create_function("pg_numeric2", 1, postgres_numeric2, deterministic=True)
    connection.create_function("pg_numeric_avg_float", 2, postgres_numeric_avg_float, deterministic=True)
