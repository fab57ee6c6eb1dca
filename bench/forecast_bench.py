"""Benchmark: the capacity forecasts' accuracy against two baselines, back-tested on synthetic series
whose future is known.

Families: steady growth with noise, a purge, a one-off migration jump, accelerating growth, weekly
and month-end cycles, flat, shrinking, thin. Each family is many seeded series, each forecast at
several as-of days from the 365 days before it; the method and the baselines see the same days
(with the same missing samples) and are scored on the same cases, in the same run:

- `ls30`: least squares on the last 30 days (Prometheus predict_linear, Zabbix's linear forecast);
- `lsall`: least squares on the whole history the method sees.

The baselines have no band of their own; they are given the textbook one (the 80 % prediction
interval of the regression), so that their coverage and limit days can be scored too. Per family
and horizon: P10-P90 coverage of the actual size, P50 mean absolute percentage error, and the share
of cases whose true limit day fell inside [P10 day, P90 day] ("never" within 730 days counts as a
day beyond). Then the targets, each PASS or FAIL.

    python bench/forecast_bench.py [--series 300] [--seed 7]

With --speed, the speed benchmark on PostgreSQL: both levels computed and stored (a first run into
an empty table, then a re-run rewriting every row) on the synthetic data of bench/aggregation_bench.py
(its generator and loader, databases `capacity_forecast_bench_<N>x<M>x<D>` kept for --reuse), with
this process's peak resident memory; --reading also times reading the series as packed bytea
against plain rows. Targets at 1000x100x365: at most 60 s and 400 MiB.

    python bench/forecast_bench.py --speed [--scale 250x100x365 --scale 1000x100x365] [--reuse] [--reading]
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import aggregation_bench  # bench/: the loading and memory-sampling helpers
import numpy as np
from sqlalchemy import Engine, text

from capacity_pipeline.domain.forecast.compute import compute_forecasts
from capacity_pipeline.domain.forecast.method import MethodParams, project
from capacity_pipeline.domain.forecast.model import ForecastOptions
from capacity_pipeline.domain.forecast.series import instance_batches, read_series
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.storage.dialects import SqlDialect, dialect_of

HISTORY = 365  # days the method sees before (and including) each as-of day
HORIZONS = (30, 90, 180)
AS_OF_OFFSETS = (0, 15, 30, 45, 60, 75)  # as-of days, relative to the first one
FIRST_AS_OF = 400  # column of the first as-of day in a generated series
REACH = MethodParams().max_days_to_limit  # limit days later than this are "never"
LENGTH = FIRST_AS_OF + AS_OF_OFFSETS[-1] + REACH + 1
MISSING_SHARE = 0.02  # days without a sample, as WhaleFall's collection has them
NEVER = float(REACH + 1)


@dataclass
class Family:
    """Generated series: `actual` is every day's true size, `trend` its noise-free part (for limits)."""

    name: str
    actual: np.ndarray  # (series, LENGTH)
    trend: np.ndarray
    growing: bool
    thin: bool = False


def _common(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Start sizes, daily growth, day-to-day growth variability and measurement noise, per series."""
    start = np.exp(rng.normal(8.0, 1.2, n))  # about 3 GB, from a few hundred MB to tens of GB
    growth = start * rng.uniform(0.0005, 0.004, n)  # 0.05 %..0.4 % of the start size per day
    walk = growth * rng.uniform(0.2, 1.0, n)  # the daily increments vary around the growth
    noise = start * rng.uniform(0.0005, 0.005, n)  # what a sample adds on top (temp space, stats)
    return start, growth, walk, noise


def _walk(rng: np.random.Generator, n: int, scale: np.ndarray) -> np.ndarray:
    return np.cumsum(rng.normal(0.0, 1.0, (n, LENGTH)) * scale[:, None], axis=1)


def _linear(rng: np.random.Generator, n: int, sign: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    start, growth, walk, noise = _common(rng, n)
    t = np.arange(LENGTH)[None, :]
    trend = start[:, None] + sign * growth[:, None] * t
    if sign < 0:  # shrinking: start larger so the series stays positive for the whole length
        trend = trend + growth[:, None] * LENGTH * 1.2
    smooth = trend + _walk(rng, n, walk)
    return trend, smooth, noise


def _observe(rng: np.random.Generator, smooth: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.maximum(np.round(smooth + rng.normal(0.0, 1.0, smooth.shape) * noise[:, None]), 1.0)


def _steady(rng, n):
    trend, smooth, noise = _linear(rng, n)
    return Family("steady", _observe(rng, smooth, noise), trend, growing=True)


def _step(rng, n, name, low, high):
    """A one-off change of level (a purge: a share removed; a migration: a share added)."""
    trend, smooth, noise = _linear(rng, n)
    day = FIRST_AS_OF - rng.integers(5, 90, n)  # 5..165 days before the as-of days
    after = np.arange(LENGTH)[None, :] >= day[:, None]
    share = rng.uniform(low, high, n)[:, None]
    size = share * smooth[np.arange(n), day][:, None]
    return Family(
        name,
        _observe(rng, smooth + np.where(after, size, 0.0), noise),
        trend + np.where(after, size, 0.0),
        growing=True,
    )


def _accelerating(rng, n):
    start, _, _, noise = _common(rng, n)
    rate = rng.uniform(0.0005, 0.002, n)  # compound growth: 20 %..107 % a year
    t = np.arange(LENGTH)[None, :]
    trend = start[:, None] * np.exp(rate[:, None] * t)
    wobble = np.exp(_walk(rng, n, rate * rng.uniform(0.2, 1.0, n)))
    return Family("accelerating", _observe(rng, trend * wobble, noise), trend, growing=True)


def _weekly(rng, n):
    trend, smooth, noise = _linear(rng, n)
    amplitude = smooth[:, :1] * rng.uniform(0.01, 0.05, n)[:, None]  # a log or temp space reset weekly
    phase = rng.integers(0, 7, n)[:, None]
    cycle = amplitude * (((np.arange(LENGTH)[None, :] + phase) % 7) / 6 - 0.5)
    return Family("weekly", _observe(rng, smooth + cycle, noise), trend, growing=True)


def _month_end(rng, n):
    trend, smooth, noise = _linear(rng, n)
    day_of_month = np.arange(LENGTH) % 30
    spike = (day_of_month >= 28)[None, :] * smooth[:, :1] * rng.uniform(0.03, 0.10, n)[:, None]
    return Family("month_end", _observe(rng, smooth + spike, noise), trend, growing=True)


def _flat(rng, n):
    start, growth, walk, noise = _common(rng, n)
    trend = np.repeat(start[:, None], LENGTH, axis=1)
    smooth = trend + _walk(rng, n, walk * 0.1)
    return Family("flat", _observe(rng, smooth, noise), trend, growing=False)


def _shrinking(rng, n):
    trend, smooth, noise = _linear(rng, n, sign=-1.0)
    return Family("shrinking", _observe(rng, smooth, noise), trend, growing=False)


def _thin(rng, n):
    family = _steady(rng, n)
    return Family("thin", family.actual, family.trend, growing=True, thin=True)


FAMILIES: list[Callable[[np.random.Generator, int], Family]] = [
    _steady,
    lambda rng, n: _step(rng, n, "purge", -0.6, -0.2),
    lambda rng, n: _step(rng, n, "jump", 0.3, 1.0),
    _accelerating,
    _weekly,
    _month_end,
    _flat,
    _shrinking,
    _thin,
]


@dataclass
class Forecast:
    """One method's forecasts of a batch: sizes (series, horizons) and limit days (series,)."""

    ok: np.ndarray
    p10: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    early: np.ndarray
    late: np.ndarray


def _t90(df: np.ndarray) -> np.ndarray:
    """Student's t 90th percentile (Cornish-Fisher; no scipy needed)."""
    z = 1.2815516
    df = np.maximum(df, 1.0)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def least_squares(window: np.ndarray, limit: np.ndarray) -> Forecast:
    """Ordinary least squares over the window's samples and its 80 % prediction interval."""
    n, days = window.shape
    x = np.arange(days, dtype=np.float64)[None, :] - (days - 1)
    seen = ~np.isnan(window)
    count = seen.sum(axis=1).astype(np.float64)
    xs, ys = np.where(seen, x, 0.0), np.where(seen, window, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x, mean_y = xs.sum(1) / count, ys.sum(1) / count
        dx = np.where(seen, x - mean_x[:, None], 0.0)
        sxx = (dx**2).sum(1)
        slope = (dx * (ys - mean_y[:, None])).sum(1) / sxx
        fitted = mean_y[:, None] + slope[:, None] * (x - mean_x[:, None])
        s2 = (np.where(seen, window - fitted, 0.0) ** 2).sum(1) / (count - 2)
        t = _t90(count - 2)

        def band(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            centre = mean_y[:, None] + slope[:, None] * (h[None, :] - mean_x[:, None])
            half = t[:, None] * np.sqrt(
                s2[:, None] * (1 + 1 / count[:, None] + (h[None, :] - mean_x[:, None]) ** 2 / sxx[:, None])
            )
            return centre, half

        centre, half = band(np.asarray(HORIZONS, dtype=np.float64))
        reach = np.arange(REACH + 1, dtype=np.float64)
        path, spread = band(reach)
    ok = count >= 3
    early = _first_day(path + spread, limit)
    late = _first_day(path - spread, limit)
    return Forecast(ok, np.maximum(centre - half, 0), np.maximum(centre, 0), centre + half, early, late)


def _first_day(path: np.ndarray, limit: np.ndarray) -> np.ndarray:
    reached = path >= limit[:, None]
    return np.where(reached.any(axis=1), np.argmax(reached, axis=1), NEVER).astype(np.float64)


def ours(window: np.ndarray, limit: np.ndarray) -> Forecast:
    result = project(window, HORIZONS, limit)
    never = lambda days: np.where(np.isnan(days), NEVER, days)  # noqa: E731
    return Forecast(
        result.ok, result.p10, result.p50, result.p90, never(result.days_to_limit_p10), never(result.days_to_limit_p90)
    )


METHODS = {"ours": ours, "ls30": lambda w, lim: least_squares(w[:, -30:], lim), "lsall": least_squares}


@dataclass
class Scores:
    """Per method: coverage and MAPE per horizon, limit-day hits, over the cases where ours is ok."""

    cases: int = 0
    refused: int = 0
    covered: dict | None = None
    error: dict | None = None
    hits: dict | None = None
    limit_cases: int = 0

    def __post_init__(self) -> None:
        self.covered = {m: np.zeros(len(HORIZONS)) for m in METHODS}
        self.error = {m: np.zeros(len(HORIZONS)) for m in METHODS}
        self.hits = {m: 0 for m in METHODS}


def evaluate(family: Family, rng: np.random.Generator) -> tuple[Scores, float]:
    scores = Scores()
    n = family.actual.shape[0]
    rows = np.arange(n)
    seconds = 0.0
    for offset in AS_OF_OFFSETS:
        as_of = FIRST_AS_OF + offset
        window = family.actual[:, as_of - HISTORY + 1 : as_of + 1].copy()
        window[rng.random(window.shape) < MISSING_SHARE] = np.nan
        if family.thin:  # 1..13 samples: a new database, or one sampled rarely
            keep = rng.integers(1, 14, n)
            new = rng.random(n) < 0.5
            rank = np.argsort(rng.random(window.shape), axis=1).argsort(axis=1)
            age = HISTORY - 1 - np.arange(HISTORY)[None, :]
            kept = np.where(new[:, None], age < keep[:, None], rank < keep[:, None])
            window = np.where(kept, family.actual[:, as_of - HISTORY + 1 : as_of + 1], np.nan)
        if family.growing:
            ahead = rng.integers(15, 271, n)  # the trend reaches the limit this many days later
            limit = family.trend[rows, as_of + ahead]
        else:
            limit = family.trend[:, as_of] * rng.uniform(1.1, 1.5, n)
        future = family.actual[:, as_of : as_of + REACH + 1]
        reached = future >= limit[:, None]
        true_day = np.where(reached.any(axis=1), np.argmax(reached, axis=1), NEVER)
        actual = family.actual[:, [as_of + h for h in HORIZONS]]

        started = time.perf_counter()
        forecasts = {name: method(window, limit) for name, method in METHODS.items()}
        seconds += time.perf_counter() - started
        ok = forecasts["ours"].ok
        scores.cases += n
        scores.refused += int((~ok).sum())
        scores.limit_cases += int(ok.sum())
        for name, f in forecasts.items():
            good = ok[:, None]
            inside = (f.p10 <= actual) & (actual <= f.p90)
            scores.covered[name] += (inside & good).sum(axis=0)
            scores.error[name] += np.where(good, np.abs(f.p50 - actual) / actual * 100, 0.0).sum(axis=0)
            scores.hits[name] += int(((f.early <= true_day) & (true_day <= f.late) & ok).sum())
    return scores, seconds


def _share(part: float, whole: int) -> float:
    return 100.0 * part / whole if whole else float("nan")


def accuracy(series: int, seed: int) -> tuple[list[str], list[tuple[str, bool]]]:
    lines = [
        "| family | horizon | forecast cases | refused % | coverage % ours | ls30 | lsall "
        "| P50 MAPE % ours | ls30 | lsall | limit day in band % ours | ls30 | lsall |",
        "|---" * 13 + "|",
    ]
    targets: list[tuple[str, bool]] = []
    for index, make in enumerate(FAMILIES):
        rng = np.random.default_rng([seed, index])
        family = make(rng, series)
        scores, _ = evaluate(family, rng)
        ok_cases = scores.cases - scores.refused
        refused = _share(scores.refused, scores.cases)
        hit = {m: _share(scores.hits[m], scores.limit_cases) for m in METHODS}
        for k, h in enumerate(HORIZONS):
            cov = {m: _share(scores.covered[m][k], ok_cases) for m in METHODS}
            mape = {m: scores.error[m][k] / ok_cases if ok_cases else float("nan") for m in METHODS}
            lines.append(
                f"| {family.name} | {h} | {ok_cases} | {refused:.1f} | {cov['ours']:.1f} | {cov['ls30']:.1f} "
                f"| {cov['lsall']:.1f} | {mape['ours']:.2f} | {mape['ls30']:.2f} | {mape['lsall']:.2f} "
                f"| {hit['ours']:.1f} | {hit['ls30']:.1f} | {hit['lsall']:.1f} |"
            )
            if family.thin:
                continue
            targets.append((f"{family.name} {h} d: coverage {cov['ours']:.1f} % in 70..90", 70 <= cov["ours"] <= 90))
            if h == 30:
                better = min(mape["ls30"], mape["lsall"])
                factor = 0.5 if family.name in ("purge", "jump") else 1.1
                targets.append(
                    (
                        f"{family.name} 30 d: P50 error {mape['ours']:.2f} <= {factor} x better baseline {better:.2f}",
                        mape["ours"] <= factor * better,
                    )
                )
        if family.thin:
            targets.append((f"thin: refused {refused:.1f} % of cases (target 100)", scores.refused == scores.cases))
        else:
            targets.append((f"{family.name}: limit day in [P10, P90] {hit['ours']:.1f} % >= 70", hit["ours"] >= 70))
    return lines, targets


# -- speed (--speed) ----------------------------------------------------------------------------------

SPEED_AS_OF = aggregation_bench.TODAY - timedelta(days=1)  # the last day the bench's data has
SPEED_SECONDS, SPEED_MIB = 60.0, 400.0  # issue 14: both levels, 1000 x 100 x 365, this 2-core machine
SPEED_HEADER = (
    "| scale | level | run | samples read | series | forecast | rows written | seconds | read | fit | write "
    "| peak RSS MiB |"
)


def _set_limits(engine: Engine) -> None:
    """Limits on every instance and on one database in ten, a little above their last size, so that
    the limit days are computed too (once: kept with the loaded data)."""
    with engine.begin() as connection:
        if connection.execute(text("SELECT count(*) FROM capacity_limits")).scalar_one():
            return
        connection.execute(
            text(
                """INSERT INTO capacity_limits (instance_id, database_name, limit_mb, updated_at)
                SELECT instance_id, NULL, max(total_size_mb) * 3 / 2 + 1, now() FROM instance_size_stats
                WHERE collected_date = :day AND is_deleted IS FALSE GROUP BY instance_id"""
            ),
            {"day": SPEED_AS_OF},
        )
        connection.execute(
            text(
                """INSERT INTO capacity_limits (instance_id, database_name, limit_mb, updated_at)
                SELECT instance_id, database_name, max(size_mb) * 3 / 2 + 1, now() FROM database_size_stats
                WHERE collected_date = :day AND hashtext(database_name || instance_id) % 10 = 0
                GROUP BY instance_id, database_name"""
            ),
            {"day": SPEED_AS_OF},
        )


def _samples_read(engine: Engine, level: Level, history_days: int) -> int:
    table = "instance_size_stats" if level is Level.INSTANCE else "database_size_stats"
    live = " AND is_deleted IS FALSE" if level is Level.INSTANCE else ""
    with engine.connect() as connection:
        return connection.execute(
            text(f"SELECT count(*) FROM {table} WHERE collected_date BETWEEN :first AND :day{live}"),
            {"first": SPEED_AS_OF - timedelta(days=history_days - 1), "day": SPEED_AS_OF},
        ).scalar_one()


def bench_speed(scale: str, reuse: bool) -> list[str]:
    engine = aggregation_bench._database_for(scale, reuse, prefix="capacity_forecast_bench")
    aggregation_bench._load(engine, scale)  # creates the schema, the forecasts' tables included
    _set_limits(engine)
    options = ForecastOptions()
    lines, total_seconds, peak = [], 0.0, 0.0
    for run in ("first run", "re-run"):
        with engine.begin() as connection:
            if run == "first run":
                connection.execute(text("DELETE FROM capacity_forecasts WHERE as_of_date = :day"), {"day": SPEED_AS_OF})
        run_seconds = 0.0
        for level in (Level.INSTANCE, Level.DATABASE):
            samples = _samples_read(engine, level, options.history_days)  # also warms the cache
            with aggregation_bench._PeakRss() as rss:
                started = time.perf_counter()
                report = compute_forecasts(engine, level, SPEED_AS_OF, options)
                seconds = time.perf_counter() - started
            run_seconds += seconds
            peak = max(peak, rss.peak / 2**20)
            split = report.seconds
            lines.append(
                f"| {scale} | {level.value} | {run} | {samples:,} | {report.series:,} | {report.forecast:,} "
                f"| {report.rows_written:,} | {seconds:.1f} | {split['read']:.1f} | {split['fit']:.1f} "
                f"| {split['write']:.1f} | {rss.peak / 2**20:.0f} |"
            )
            print(lines[-1], flush=True)
        total_seconds = max(total_seconds, run_seconds)
        lines.append(f"| {scale} | both | {run} | | | | | {run_seconds:.1f} | | | | {peak:.0f} |")
        print(lines[-1], flush=True)
    engine.dispose()
    if scale == "1000x100x365":
        print(
            f"- {'PASS' if total_seconds <= SPEED_SECONDS else 'FAIL'} {scale}: both levels in "
            f"{total_seconds:.1f} s (target <= {SPEED_SECONDS:.0f})\n"
            f"- {'PASS' if peak <= SPEED_MIB else 'FAIL'} {scale}: peak RSS {peak:.0f} MiB (target <= {SPEED_MIB:.0f})",
            flush=True,
        )
    return lines


def bench_reading(scale: str) -> str:
    """The database level's series read both ways on PostgreSQL: one packed bytea per series (what
    the pipeline does) and plain rows (one Python tuple per sample), same batches, same arrays."""
    engine = aggregation_bench._database_for(scale, reuse=True, prefix="capacity_forecast_bench")
    options = ForecastOptions()
    postgres = dialect_of(engine)
    cells = []
    for plain in (False, True):
        if plain:  # the base class's reader, on this very dialect object, for this measurement only
            postgres.daily_series = types.MethodType(SqlDialect.daily_series, postgres)
        try:
            with aggregation_bench._PeakRss() as rss:
                started = time.perf_counter()
                for batch in instance_batches(engine, options.batch_size):
                    with engine.connect() as connection:
                        read_series(connection, Level.DATABASE, batch, SPEED_AS_OF, options.history_days)
                seconds = time.perf_counter() - started
        finally:
            if plain:
                del postgres.daily_series
        cells.append(f"{seconds:.1f} s, {rss.peak / 2**20:.0f} MiB")
    engine.dispose()
    return f"| {scale} | database | {cells[0]} | {cells[1]} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=300, help="series per family (default 300)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--speed", action="store_true", help="also the speed benchmark on PostgreSQL")
    parser.add_argument("--scale", action="append", help="INSTANCESxDATABASESxDAYS for --speed (repeatable)")
    parser.add_argument("--reuse", action="store_true", help="--speed: keep and reuse already loaded data")
    parser.add_argument("--reading", action="store_true", help="--speed: also time both ways of reading")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    lines, targets = accuracy(args.series, args.seed)
    print("\n".join(lines))
    print()
    for line, passed in targets:
        print(f"- {'PASS' if passed else 'FAIL'} {line}")
    print(f"\n# accuracy: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.speed:
        print()
        print(SPEED_HEADER)
        print("|---" * (SPEED_HEADER.count("|") - 1) + "|")
        scales = args.scale or ["250x100x365", "1000x100x365"]
        for scale in scales:
            bench_speed(scale, args.reuse)
        if args.reading:
            print()
            print("| scale | level | packed bytea (seconds, peak RSS) | plain rows (seconds, peak RSS) |")
            print("|---|---|---|---|")
            for scale in scales:
                print(bench_reading(scale), flush=True)
    return 0 if all(passed for _, passed in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
