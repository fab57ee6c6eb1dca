"""The forecast chart is well-formed SVG whatever the series, and says what it draws."""

from __future__ import annotations

import base64
import math
import xml.etree.ElementTree as ET
from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from capacity_pipeline.defs.forecast.chart import forecast_svg, markdown_image
from capacity_pipeline.domain.forecast.fleet import FleetEntry, SeriesChart
from capacity_pipeline.domain.forecast.model import ForecastRow, Quality, SeriesKey
from capacity_pipeline.domain.model import Level

AS_OF = date(2026, 6, 30)
SVG = "{http://www.w3.org/2000/svg}"
_COORDINATES = ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "width", "height")
sizes = st.floats(min_value=0, max_value=1e9, allow_nan=False)


def _row(horizon: int, p10: float, p50: float, p90: float, limit: int | None, days: tuple) -> ForecastRow:
    return ForecastRow(AS_OF, Level.DATABASE, 7, "db", horizon, p10, p50, p90, 1.5, limit, *days, Quality.OK, None, 60)


@given(
    history=st.lists(sizes, max_size=90),
    bands=st.lists(st.tuples(sizes, sizes, sizes), min_size=1, max_size=3),
    limit=st.none() | st.integers(min_value=1, max_value=10**10),
    days=st.tuples(*[st.none() | st.integers(min_value=0, max_value=730)] * 3),
    name=st.text(max_size=30),
)
def test_any_series_gives_a_well_formed_chart_with_its_title_escaped(history, bands, limit, days, name):
    key = SeriesKey(7, "db")
    rows = [_row(30 * (i + 1), *sorted(band), limit, days) for i, band in enumerate(bands)]
    chart = SeriesChart(
        key,
        limit,
        [(AS_OF - timedelta(days=len(history) - 1 - i), size) for i, size in enumerate(history)],
        [(AS_OF + timedelta(days=row.horizon_days), row.p10_mb, row.p50_mb, row.p90_mb) for row in rows],
    )
    title = "".join(char for char in name if char.isprintable())
    svg = forecast_svg(chart, FleetEntry(key, rows), title)

    root = ET.fromstring(svg)  # parses: every text escaped, every number finite
    texts = [element.text or "" for element in root.iter(f"{SVG}text")]
    assert texts[0] == title
    assert f"as of {AS_OF}" in texts
    if limit is not None:
        assert any(text.startswith("limit ") for text in texts)
    for element in root.iter():
        coordinates = [element.get(name) for name in _COORDINATES if element.get(name) is not None]
        coordinates += [v for point in (element.get("points") or "").split() for v in point.split(",")]
        assert all(math.isfinite(float(value)) for value in coordinates), element.attrib
    image = markdown_image(svg, f"forecast of [{name}]")
    assert base64.b64decode(image.split("base64,", 1)[1].rstrip(")")).decode() == svg
