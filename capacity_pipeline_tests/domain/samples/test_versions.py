"""Which quarterly baselines an observation reads (compat 3, Q1), and only their days."""

from __future__ import annotations

from datetime import date

import pytest

from capacity_pipeline.domain.periods import Window
from capacity_pipeline.domain.samples.versions import baseline_days, observed_days, quarterly_baselines

D = date.fromisoformat


def W(start: str, end: str) -> Window:  # noqa: N802 - reads like the compatibility notes' notation
    return Window(D(start), D(end))


@pytest.mark.parametrize(
    ("days", "corrected", "expected"),
    [
        # The default range late in a quarter: Q3's baseline (Jul-Aug) starts before the range, and
        # Q4's (the whole quarter, before a Q1) feeds a quarter not begun: nothing to read.
        (observed_days(D("2026-11-28"), 62), False, {}),
        # Early in Q4: Q3's first two months feed the quarter in progress; Q4's own is not read.
        (W("2026-07-01", "2026-10-05"), False, {D("2026-07-01"): W("2026-07-01", "2026-08-31")}),
        # Corrected mode: the whole quarter before.
        (W("2026-04-01", "2026-07-02"), True, {D("2026-04-01"): W("2026-04-01", "2026-06-30")}),
        # Before a Q1 the whole quarter is compared with, once the Q1 has begun.
        (W("2026-10-01", "2027-01-01"), False, {D("2026-10-01"): W("2026-10-01", "2026-12-31")}),
    ],
)
def test_only_baselines_of_begun_quarters_inside_the_range_are_observed(days, corrected, expected):
    baselines = quarterly_baselines(days, corrected_quarter=corrected)
    assert baselines == expected
    spans = list(expected.values())
    assert baseline_days(baselines) == (Window(spans[0].start, spans[-1].end) if spans else None)


def test_the_days_read_span_every_baseline():
    baselines = quarterly_baselines(W("2026-01-01", "2026-10-05"), corrected_quarter=False)
    assert list(baselines) == [D("2026-01-01"), D("2026-04-01"), D("2026-07-01")]
    assert baseline_days(baselines) == W("2026-01-01", "2026-08-31")
