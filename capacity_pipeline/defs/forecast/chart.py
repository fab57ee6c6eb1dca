"""One series' chart for the Dagster UI: its recent samples, its P10-P90 band and P50 line to the
last horizon, and its limit with the P10..P90 days it is reached.

Dagster 1.13 has no chart metadata type, but its Markdown renderer (react-markdown with
rehype-sanitize, `data:` allowed as an image source) shows an image whose source is a data URI. So
the chart is a hand-written SVG (no plotting library), embedded as `data:image/svg+xml;base64`.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from datetime import date, timedelta
from xml.sax.saxutils import escape

from capacity_pipeline.domain.forecast.fleet import FleetEntry, SeriesChart
from capacity_pipeline.domain.forecast.model import ForecastRow

WIDTH, HEIGHT = 720, 320
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 48, 40
HISTORY_COLOUR, BAND_COLOUR, LIMIT_COLOUR, AXIS_COLOUR = "#4f43dd", "#4f43dd", "#d1242f", "#8c959f"
# A limit far above the series would flatten it: it is drawn only while it stays this close.
LIMIT_IN_VIEW = 2.0


@dataclass(frozen=True)
class _Scale:
    first: date
    last: date
    low: float
    high: float

    def x(self, day: date) -> float:
        span = max((self.last - self.first).days, 1)
        return LEFT + (WIDTH - LEFT - RIGHT) * (day - self.first).days / span

    def y(self, value: float) -> float:
        span = self.high - self.low or 1.0
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - (value - self.low) / span)


def series_label(entry: FleetEntry, names: dict[int, str]) -> str:
    key = entry.key
    instance = f"instance {key.instance_id}" + (f" ({names[key.instance_id]})" if key.instance_id in names else "")
    return instance if key.database_name is None else f"{instance}, database {key.database_name}"


def headline(entry: FleetEntry) -> str:
    """What the chart says in one line: when the limit is reached, else how fast the series grows."""
    row = entry.first
    if row.limit_mb is None:
        return f"no limit set; grows {_mb(row.growth_mb_per_day or 0.0)} MB a day"
    if row.days_to_limit_p50 is None and row.days_to_limit_p10 is None:
        return f"limit {_mb(row.limit_mb)} MB not reached within the forecast's reach"
    days = ", ".join(
        f"{name} {'-' if value is None else f'{value} d'}"
        for name, value in (
            ("P10", row.days_to_limit_p10),
            ("P50", row.days_to_limit_p50),
            ("P90", row.days_to_limit_p90),
        )
    )
    return f"reaches its {_mb(row.limit_mb)} MB limit in {days}"


def forecast_svg(chart: SeriesChart, entry: FleetEntry, title: str) -> str:
    """The SVG text of one series' chart (history, band, P50, limit)."""
    as_of = entry.first.as_of_date
    row = entry.first
    level0 = _level_on_as_of(chart, entry)
    band = [(as_of, level0, level0, level0), *sorted(chart.band)]
    values = [size for _, size in chart.history] + [v for _, p10, _, p90 in band for v in (p10, p90) if v is not None]
    limit = chart.limit_mb
    limit_in_view = limit is not None and values and limit <= LIMIT_IN_VIEW * max(values)
    if limit_in_view:
        values.append(float(limit))
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (high - low) * 0.06 or max(abs(high) * 0.05, 1.0)
    first = chart.history[0][0] if chart.history else as_of
    scale = _Scale(first, band[-1][0], max(low - pad, 0.0) if low >= 0 else low - pad, high + pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold" fill="#1f2328">{escape(title)}</text>',
        f'<text x="{LEFT}" y="34" fill="#57606a">{escape(headline(entry))}</text>',
        *_axes(scale),
    ]
    # The band (P10..P90, joined by straight lines between horizons) and the P50 line.
    upper = " ".join(f"{scale.x(day):.1f},{scale.y(p90):.1f}" for day, _, _, p90 in band if p90 is not None)
    lower = " ".join(f"{scale.x(day):.1f},{scale.y(p10):.1f}" for day, p10, _, _ in reversed(band) if p10 is not None)
    parts.append(f'<polygon points="{upper} {lower}" fill="{BAND_COLOUR}" fill-opacity="0.16" stroke="none"/>')
    median = " ".join(f"{scale.x(day):.1f},{scale.y(p50):.1f}" for day, _, p50, _ in band if p50 is not None)
    parts.append(
        f'<polyline points="{median}" fill="none" stroke="{BAND_COLOUR}" stroke-width="1.5" stroke-dasharray="5 3"/>'
    )
    for day, _, p50, _ in band[1:]:
        if p50 is not None:
            horizon = (day - as_of).days
            parts.append(f'<circle cx="{scale.x(day):.1f}" cy="{scale.y(p50):.1f}" r="2.5" fill="{BAND_COLOUR}"/>')
            parts.append(
                f'<text x="{scale.x(day) - 4:.1f}" y="{scale.y(p50) - 6:.1f}" text-anchor="end" fill="#57606a">'
                f"{horizon} d: {_mb(p50)}</text>"
            )
    # The samples.
    if chart.history:
        points = " ".join(f"{scale.x(day):.1f},{scale.y(size):.1f}" for day, size in chart.history)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{HISTORY_COLOUR}" stroke-width="1.8"/>')
    # Today's line.
    x_as_of = scale.x(as_of)
    parts.append(
        f'<line x1="{x_as_of:.1f}" y1="{TOP}" x2="{x_as_of:.1f}" y2="{HEIGHT - BOTTOM}" stroke="{AXIS_COLOUR}" '
        'stroke-dasharray="2 3"/>'
    )
    parts.append(f'<text x="{x_as_of + 4:.1f}" y="{TOP + 10}" fill="#57606a">as of {as_of.isoformat()}</text>')
    parts.extend(_limit(scale, row, limit, limit_in_view, as_of))
    parts.extend(_legend())
    parts.append("</svg>")
    return "\n".join(parts)


def _days_to_limit(row: ForecastRow) -> tuple[int | None, int | None, int | None]:
    return row.days_to_limit_p10, row.days_to_limit_p50, row.days_to_limit_p90


def markdown_image(svg: str, alt: str) -> str:
    """The SVG as a Markdown image the Dagster UI shows inline."""
    encoded = base64.b64encode(svg.encode()).decode("ascii")
    safe_alt = "".join(char for char in alt if char not in "[]\\\n")
    return f"![{safe_alt}](data:image/svg+xml;base64,{encoded})"


def _level_on_as_of(chart: SeriesChart, entry: FleetEntry) -> float:
    """Where the band starts: P50 carried back to the as-of day by the growth (P50(h) = level + drift h)."""
    row = entry.first
    if row.p50_mb is not None and row.growth_mb_per_day is not None:
        return max(row.p50_mb - row.growth_mb_per_day * row.horizon_days, 0.0)
    return chart.history[-1][1] if chart.history else 0.0


def _axes(scale: _Scale) -> list[str]:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [
        f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="{AXIS_COLOUR}"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="{AXIS_COLOUR}"/>',
        f'<text x="12" y="{TOP - 4}" fill="#57606a">MB</text>',
    ]
    for value in _ticks(scale.low, scale.high):
        y = scale.y(value)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#57606a">{_mb(value)}</text>')
    month = date(scale.first.year, scale.first.month, 1)
    while month <= scale.last:
        if month >= scale.first:
            x = scale.x(month)
            parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="{AXIS_COLOUR}"/>')
            parts.append(
                f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#57606a">{month:%Y-%m}</text>'
            )
        month = (month + timedelta(days=32)).replace(day=1)
    return parts


def _limit(scale: _Scale, row: ForecastRow, limit: int | None, in_view: bool, as_of: date) -> list[str]:
    if limit is None:
        return []
    if not in_view:
        return [
            f'<text x="{WIDTH - RIGHT}" y="{TOP + 10}" text-anchor="end" fill="{LIMIT_COLOUR}">'
            f"limit {_mb(limit)} MB (above the chart)</text>"
        ]
    y = scale.y(float(limit))
    parts = [
        f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{LIMIT_COLOUR}" '
        'stroke-dasharray="6 3"/>',
        f'<text x="{WIDTH - RIGHT}" y="{y - 5:.1f}" text-anchor="end" fill="{LIMIT_COLOUR}">'
        f"limit {_mb(limit)} MB</text>",
    ]
    early, median, late = _days_to_limit(row)
    if early is not None:  # P10..P90 days on the limit line (to the chart's end when P90 is beyond it)
        end = min(as_of + timedelta(days=late), scale.last) if late is not None else scale.last
        start = min(as_of + timedelta(days=early), scale.last)
        parts.append(
            f'<line x1="{scale.x(start):.1f}" y1="{y:.1f}" x2="{scale.x(end):.1f}" y2="{y:.1f}" '
            f'stroke="{LIMIT_COLOUR}" stroke-width="5" stroke-opacity="0.45"/>'
        )
    if median is not None and as_of + timedelta(days=median) <= scale.last:
        day = as_of + timedelta(days=median)
        parts.append(f'<circle cx="{scale.x(day):.1f}" cy="{y:.1f}" r="4" fill="{LIMIT_COLOUR}"/>')
        parts.append(
            f'<text x="{scale.x(day):.1f}" y="{y + 16:.1f}" text-anchor="middle" fill="{LIMIT_COLOUR}">'
            f"P50 full {day.isoformat()}</text>"
        )
    return parts


def _legend() -> list[str]:
    x, y = WIDTH - RIGHT - 250, HEIGHT - 8
    return [
        f'<line x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{HISTORY_COLOUR}" stroke-width="1.8"/>',
        f'<text x="{x + 22}" y="{y}" fill="#57606a">samples</text>',
        f'<line x1="{x + 75}" y1="{y - 4}" x2="{x + 93}" y2="{y - 4}" stroke="{BAND_COLOUR}" stroke-dasharray="5 3"/>',
        f'<text x="{x + 97}" y="{y}" fill="#57606a">P50</text>',
        f'<rect x="{x + 130}" y="{y - 9}" width="18" height="9" fill="{BAND_COLOUR}" fill-opacity="0.16"/>',
        f'<text x="{x + 152}" y="{y}" fill="#57606a">P10-P90</text>',
    ]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values between low and high, about `count` of them."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _mb(value: float) -> str:
    """Sizes as people read them: thousands separated, decimals only where they matter."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}".rstrip("0").rstrip(".")
