"""The settings table: typed values from the environment, defaults, and errors that name the variable."""

from __future__ import annotations

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


def test_every_setting_is_in_the_readme_table():
    from capacity_pipeline_tests.support import REPO

    readme = (REPO / "README.md").read_text()
    missing = [setting.env for setting in SETTINGS.values() if f"`{setting.env}`" not in readme]
    assert missing == []
