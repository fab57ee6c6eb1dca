"""The `forecast` and `limits` commands, driven through `main(argv)` against real databases."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from capacity_pipeline.cli import main
from capacity_pipeline.domain.forecast.model import JSON_KEYS
from capacity_pipeline.domain.periods import china_today
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import WhaleFallData, url_of

AS_OF = date(2026, 6, 30)
FORECAST = ["forecast", "--as-of", AS_OF.isoformat()]


@pytest.fixture(autouse=True)
def no_ambient_settings(monkeypatch):
    """Tests decide for themselves which settings are set."""
    for variable in ("WHALEFALL_DATABASE_URL", "CAPACITY_FORECAST_HORIZONS", "CAPACITY_FORECAST_MIN_USABLE_DAYS"):
        monkeypatch.delenv(variable, raising=False)


def _seed(whalefall: WhaleFallData) -> None:
    """Instance 7 (database orders) and instance 8 (database app), 60 days each, 10 MB a day."""
    days = [AS_OF - timedelta(days=59 - i) for i in range(60)]
    for instance_id, database in ((7, "orders"), (8, "app")):
        whalefall.instance(instance_id)
        whalefall.database_stats(instance_id, database, [(day, 1000 + 10 * i, None) for i, day in enumerate(days)])
        whalefall.instance_stats(instance_id, [(day, 1000 + 10 * i, 1) for i, day in enumerate(days)])


@pytest.fixture
def seeded_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    engine = make_engine(url)
    create_schema(engine)
    whalefall = WhaleFallData(engine)
    _seed(whalefall)
    yield url, whalefall
    engine.dispose()


def _stored(whalefall: WhaleFallData) -> int:
    with whalefall.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(whalefall.tables["capacity_forecasts"])).scalar_one()


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert stderr.endswith("\n") and len(lines) == 1, stderr
    return lines[0]


def test_forecast_computes_stores_and_prints_one_json_array(engine, whalefall, capsys):
    _seed(whalefall)

    exit_code = main([*FORECAST, "--db-url", url_of(engine), "--format", "json"])

    captured = capsys.readouterr()
    assert exit_code == 0 and captured.err == ""
    rows = json.loads(captured.out)
    assert all(list(row) == list(JSON_KEYS) for row in rows)
    # Both levels, instance level first; two series each, three horizons each.
    assert [(row["level"], row["instance_id"], row["database_name"], row["horizon_days"]) for row in rows] == [
        (level, instance_id, database, horizon)
        for level, names in (("instance", (None, None)), ("database", ("orders", "app")))
        for instance_id, database in zip((7, 8), names, strict=True)
        for horizon in (30, 90, 180)
    ]
    assert {row["p50_mb"] for row in rows if row["horizon_days"] == 30} == {1890.0}
    assert _stored(whalefall) == len(rows) == 12


def test_forecast_of_one_instance_one_level_and_other_horizons(seeded_sqlite, capsys):
    url, whalefall = seeded_sqlite

    arguments = [*FORECAST, "--db-url", url, "--level", "database", "--instance", "8", "--horizons", "7,14"]
    exit_code = main([*arguments, "--format", "json"])

    rows = json.loads(capsys.readouterr().out)
    assert exit_code == 0
    assert [(row["database_name"], row["horizon_days"], row["p50_mb"]) for row in rows] == [
        ("app", 7, 1660.0),
        ("app", 14, 1730.0),
    ]
    assert _stored(whalefall) == 2


def test_forecast_prints_a_table_by_default(seeded_sqlite, capsys):
    url, _ = seeded_sqlite

    assert main([*FORECAST, "--db-url", url, "--level", "instance", "--instance", "7"]) == 0

    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == [
        *("level", "instance", "database", "horizon", "p10_mb", "p50_mb", "p90_mb", "growth/day", "limit_mb"),
        *("days_p10", "days_p50", "days_p90", "quality", "change_point", "samples"),
    ]
    assert [line.split()[:6] for line in lines] == [
        ["instance", "7", "-", "30", "1,890.00", "1,890.00"],
        ["instance", "7", "-", "90", "2,490.00", "2,490.00"],
        ["instance", "7", "-", "180", "3,390.00", "3,390.00"],
    ]


def test_limits_are_set_listed_used_and_unset(seeded_sqlite, capsys):
    url, _ = seeded_sqlite

    assert main(["limits", "set", "--db-url", url, "--instance", "7", "--database", "orders", "--mb", "2000"]) == 0
    assert json.loads(capsys.readouterr().out)["limit_mb"] == 2000
    assert main(["limits", "set", "--db-url", url, "--instance", "7", "--mb", "9000", "--note", "LUN 3"]) == 0
    capsys.readouterr()
    assert main(["limits", "list", "--db-url", url, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(limit["database_name"], limit["limit_mb"], limit["note"]) for limit in listed] == [
        (None, 9000, "LUN 3"),
        ("orders", 2000, None),
    ]

    assert main([*FORECAST, "--db-url", url, "--level", "database", "--instance", "7", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(row["limit_mb"], row["days_to_limit_p50"]) for row in rows} == {(2000, 41)}  # 1590 + 10 * 41

    assert main(["limits", "unset", "--db-url", url, "--instance", "7", "--database", "orders"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] is True
    assert main(["limits", "list", "--db-url", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["instance", "database", "limit_mb", "note", "updated_by", "updated_at"]
    assert [line.split()[:3] for line in table[1:]] == [["7", "-", "9000"]]


def _tomorrow() -> str:
    return (china_today() + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param(
            ["forecast", "--as-of", "tomorrow"], "forecast: error: argument --as-of: 'tomorrow'", id="as-of-word"
        ),
        pytest.param(["forecast", "--as-of", None], "in Asia/Shanghai)", id="as-of-after-today"),
        pytest.param(
            ["forecast", "--level", "cluster"], "forecast: error: argument --level: invalid choice", id="level"
        ),
        pytest.param(["forecast", "--horizons", "0"], "forecast: error: argument --horizons: '0' is not", id="zero"),
        pytest.param(["forecast", "--horizons", "30,30"], "argument --horizons: '30,30' is not", id="twice"),
        pytest.param(["forecast", "--horizons", "1000"], "forecast: error: --horizons: at most", id="beyond-reach"),
        pytest.param(["forecast", "--instance", "99"], "forecast: error: --instance: no active instance 99", id="inst"),
        pytest.param(["forecast", "--format", "xml"], "forecast: error: argument --format: invalid choice", id="fmt"),
        pytest.param(
            ["limits", "set", "--instance", "99", "--mb", "5"],
            "limits set: error: --instance: no instance 99",
            id="limit-of-no-instance",
        ),
        pytest.param(
            ["limits", "set", "--instance", "7", "--mb", "0"],
            "limits set: error: argument --mb: '0' is not a positive whole number",
            id="limit-zero",
        ),
        pytest.param(
            ["limits", "set", "--instance", "7", "--database", " ", "--mb", "5"],
            "limits set: error: --database: expected a non-blank name",
            id="limit-blank-database",
        ),
        pytest.param(["limits", "set", "--instance", "7"], "the following arguments are required: --mb", id="no-mb"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_the_argument_and_write_nothing(
    seeded_sqlite, capsys, arguments, expected
):
    url, whalefall = seeded_sqlite

    try:
        exit_code = main([*(_tomorrow() if argument is None else argument for argument in arguments), "--db-url", url])
    except SystemExit as raised:  # argparse's own errors
        exit_code = raised.code

    captured = capsys.readouterr()
    assert exit_code == 2
    line = _one_line(captured.err)
    assert line.startswith("capacity-pipeline ") and expected in line
    if None in arguments:
        assert f"forecast: error: --as-of: {_tomorrow()} is after today" in line
    assert captured.out == ""
    assert _stored(whalefall) == 0
    with whalefall.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(whalefall.tables["capacity_limits"])).scalar() == 0


def test_an_unreachable_database_fails_without_showing_the_password(capsys):
    for command in (FORECAST, ["limits", "list"]):
        exit_code = main([*command, "--db-url", "postgresql://postgres:s3cret@127.0.0.1:1/nowhere"])
        captured = capsys.readouterr()
        assert exit_code == 1
        assert "cannot use postgresql://postgres:***@127.0.0.1:1/nowhere" in _one_line(captured.err)
        assert "s3cret" not in captured.err + captured.out
