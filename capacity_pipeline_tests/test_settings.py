"""The settings table: typed values from the environment, defaults, and errors that name the variable."""

from __future__ import annotations

import re
from datetime import date

import pytest

from capacity_pipeline.settings import SETTINGS, SettingError, read_setting, read_settings


def test_defaults_apply_when_nothing_is_set():
    values = read_settings(environ={})
    assert values["url"] is None  # required: the places that connect say so
    assert (values["batch_size"], values["batch_pause_seconds"]) == (250, 0.0)
    assert (values["connect_timeout_seconds"], values["statement_timeout_seconds"]) == (10.0, 600.0)
    assert (values["lock_timeout_seconds"], values["heartbeat_timeout_seconds"]) == (60.0, 120.0)
    assert values["corrected_quarter"] is False
    assert values["partitions_start"] == date(2025, 7, 1)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("corrected_quarter", "true", True),
        ("corrected_quarter", " ON ", True),
        ("corrected_quarter", "0", False),
        ("batch_size", "17", 17),
        ("lock_timeout_seconds", "2.5", 2.5),
        ("partitions_start", "2026-01-01", date(2026, 1, 1)),
        ("webserver_url", "https://dagster.example/", "https://dagster.example/"),
    ],
)
def test_values_are_typed(name, raw, expected):
    assert read_setting(name, {SETTINGS[name].env: raw}) == expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("batch_size", "0"),
        ("batch_size", "many"),
        ("lock_timeout_seconds", "-1"),
        ("lock_timeout_seconds", "nan"),
        ("heartbeat_seconds", "0"),
        ("corrected_quarter", "maybe"),
        ("partitions_start", "2026-13-01"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_accepts(name, raw):
    setting = SETTINGS[name]
    with pytest.raises(SettingError) as raised:
        read_setting(name, {setting.env: raw})
    assert str(raised.value) == f"{setting.env}: {raw!r} is not {setting.accepts}"


@pytest.mark.parametrize("name", ["url", "api_tokens"])
def test_a_bad_secret_is_not_echoed(name):
    setting = SETTINGS[name]
    raw = " \t "  # blank: the only value these settings refuse
    assert setting.secret
    with pytest.raises(SettingError) as raised:
        read_setting(name, {setting.env: raw})
    message = str(raised.value)
    assert message == f"{setting.env}: (hidden) is not {setting.accepts}"
    assert raw not in message and repr(raw) not in message


def _readme_settings_table() -> list[list[str]]:
    """The rows of the README's settings table (under "## Settings"), each a list of its cells."""
    from capacity_pipeline_tests.support import REPO

    section = (REPO / "README.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line[1:-1])] for line in lines]


def test_the_readme_settings_table_is_the_settings_table():
    header, separator, *rows = _readme_settings_table()
    assert header == ["variable", "default", "accepts", "meaning", "read by"]
    assert set(separator) == {"---"}
    assert [row[0] for row in rows] == [f"`{setting.env}`" for setting in SETTINGS.values()]  # each once, in order
    by_variable = {row[0]: row for row in rows}
    for setting in SETTINGS.values():
        _variable, default, accepts, meaning, read_by = by_variable[f"`{setting.env}`"]
        assert (accepts, meaning) == (setting.accepts, setting.meaning), setting.env
        assert read_by, setting.env
        if setting.default is None:  # required (its meaning says so), or simply unset
            assert default == ("(required)" if setting.meaning.endswith(" Required.") else "-"), setting.env
        else:
            assert setting.parse(default) == setting.default, setting.env
