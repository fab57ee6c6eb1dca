"""WhaleFall's Python arithmetic, as the reference the SQL fragments must equal.

WhaleFall computes change metrics in Python: `int()` truncation, IEEE doubles, and the built-in
`round(x, 2)`, which rounds the exact binary value half-to-even (compat Q2, Q3). The SQL fragments
live with each dialect (storage/dialects.py): PostgreSQL's are pure SQL; SQLite's call the functions
below, registered on each connection, so the two dialects agree by construction. The functions
that emulate PostgreSQL (numeric AVG, numeric(10,2) rounding) let SQLite give PostgreSQL's numbers.
"""

from __future__ import annotations

import sqlite3
import zlib
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

# PostgreSQL's numeric division keeps at least this many significant digits (NUMERIC_MIN_SIG_DIGITS).
_PG_MIN_SIG_DIGITS = 16
_PG_DEC_DIGITS = 4  # numeric digits are base 10000


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


def text_hash(value: str | None) -> int | None:
    """A 32-bit hash of a text (SQLite's stand-in for PostgreSQL's hashtext, for data versions)."""
    return None if value is None else zlib.crc32(value.encode())


def register_sqlite_functions(connection: sqlite3.Connection) -> None:
    """Make the SQLite helpers above callable from SQL on this connection."""
    connection.create_function("py_round2", 1, python_round2, deterministic=True)
    connection.create_function("pg_numeric2", 1, postgres_numeric2, deterministic=True)
    connection.create_function("pg_numeric_avg_float", 2, postgres_numeric_avg_float, deterministic=True)
    connection.create_function("text_hash", 1, text_hash, deterministic=True)
