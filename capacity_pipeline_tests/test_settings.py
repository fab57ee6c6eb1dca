"""The settings table: typed values from the environment, defaults, and errors that name the variable."""

from __future__ import annotations

import re
from dataclasses import fields
from datetime import date

import pytest

from capacity_pipeline.settings import SETTINGS, ApiToken, SettingError, Settings, read_setting, read_settings


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
        ("observe_days", "186", 186),
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
        ("observe_days", "0"),
        ("observe_days", "187"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_accepts(name, raw):
    setting = SETTINGS[name]
    with pytest.raises(SettingError) as raised:
        read_setting(name, {setting.env: raw})
    assert str(raised.value) == f"{setting.env}: {raw!r} is not {setting.accepts}"


@pytest.mark.parametrize(("name", "raw", "reason"), [("url", " \t ", ""), ("api_tokens", " {x ", " (not valid JSON)")])
def test_a_bad_secret_is_not_echoed(name, raw, reason):
    setting = SETTINGS[name]
    assert setting.secret
    with pytest.raises(SettingError) as raised:
        read_setting(name, {setting.env: raw})
    message = str(raised.value)
    assert message == f"{setting.env}: (hidden) is not {setting.accepts}{reason}"
    assert raw not in message and repr(raw) not in message


def _documented_settings_table() -> list[list[str]]:
    """The rows of the settings table in docs/operations.md (under "## Settings"), each a list of its cells."""
    from capacity_pipeline_tests.support import REPO

    section = (REPO / "docs" / "operations.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line[1:-1])] for line in lines]


def test_the_documented_settings_table_is_the_settings_table():
    header, separator, *rows = _documented_settings_table()
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


def test_the_settings_object_names_every_setting_of_the_table_once_in_order():
    assert [field.name for field in fields(Settings)] == list(SETTINGS)
    assert Settings() == Settings.from_env({})  # the defaults are the table's


def test_settings_are_read_from_the_given_environment_only():
    settings = Settings.from_env({"CAPACITY_BATCH_SIZE": "3", "CAPACITY_AUTOMATION": "off"})
    assert (settings.batch_size, settings.automation) == (3, False)


def test_api_tokens_parse_into_user_ids_and_roles():
    raw = '{"tok-a": {"user_id": 1, "role": "admin"}, "tok-b": {"user_id": 2147483647, "role": " viewer "}}'
    assert read_setting("api_tokens", {"CAPACITY_API_TOKENS": raw}) == {
        "tok-a": ApiToken(1, "admin"),
        "tok-b": ApiToken(2147483647, "viewer"),
    }


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not valid JSON"),
        ("{}", "expected a non-empty JSON object of tokens"),
        ('["s3cr3t"]', "expected a non-empty JSON object of tokens"),
        ('{"s3cr3t": {"role": "admin"}}', "token 1: expected exactly the keys user_id and role"),
        ('{"s3cr3t": {"user_id": 1, "role": "admin", "x": 1}}', "token 1: expected exactly the keys user_id and role"),
        (
            '{"s3cr3t": {"user_id": 2147483648, "role": "admin"}}',
            "token 1: user_id must be a whole number from 1 to 2147483647",
        ),
        (
            '{"s3cr3t": {"user_id": 1.9, "role": "admin"}}',
            "token 1: user_id must be a whole number from 1 to 2147483647",
        ),
        (
            '{"s3cr3t": {"user_id": true, "role": "admin"}}',
            "token 1: user_id must be a whole number from 1 to 2147483647",
        ),
        (
            '{"s3cr3t": {"user_id": "7", "role": "admin"}}',
            "token 1: user_id must be a whole number from 1 to 2147483647",
        ),
        ('{"s3cr3t": {"user_id": 0, "role": "admin"}}', "token 1: user_id must be a whole number from 1 to 2147483647"),
        (
            '{"s3cr3t-a": {"user_id": 1, "role": "admin"}, "s3cr3t-b": {"user_id": 2, "role": ""}}',
            "token 2: role must be a non-empty string",
        ),
        ('{" ": {"user_id": 1, "role": "admin"}}', "token 1 is blank"),
    ],
)
def test_a_bad_token_table_says_what_is_wrong_without_quoting_any_token(raw, reason):
    setting = SETTINGS["api_tokens"]
    with pytest.raises(SettingError) as raised:
        read_setting("api_tokens", {setting.env: raw})
    assert str(raised.value) == f"{setting.env}: (hidden) is not {setting.accepts} ({reason})"
    assert "s3cr3t" not in str(raised.value)
