"""Operable logs: the standalone server's access log, and who requested and cancelled a task run.
Never a token, an Authorization header, a cookie or a query string."""

from __future__ import annotations

import logging
import re

from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline_tests.support import ADMIN_TOKEN, CURRENT, VIEWER_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ACCESS = "capacity_pipeline.api.access"
LINE = re.compile(
    r"(?P<method>\S+) (?P<path>\S+) (?P<status>\d{3}) user=(?P<user>\S+) \d+\.\dms (?P<request_id>req_[0-9a-f]{32})"
)


def _access_lines(caplog) -> list[re.Match]:
    lines = [record.getMessage() for record in caplog.records if record.name == ACCESS]
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    return matches


def test_one_access_line_per_request_without_secrets(bearer_client, caplog):
    caplog.set_level(logging.INFO, logger="capacity_pipeline")
    secret = "qs-secret-51ac0e"
    headers = {**ADMIN, "Cookie": f"session=cookie-{secret}", "X-Request-ID": f"rid-{secret}"}
    bearer_client.post(f"{CURRENT}?token={secret}&x=1", json={"scope": "all"}, headers=headers, buffered=True)
    bearer_client.get(f"/api/v1/task-runs/nope?token={secret}", buffered=True)
    bearer_client.get(
        "/api/v1/task-runs/%0Afake%20line?x=1", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}, buffered=True
    )

    lines = _access_lines(caplog)
    assert [(m["method"], m["path"], m["status"], m["user"]) for m in lines] == [
        ("POST", CURRENT, "200", "9"),
        ("GET", "/api/v1/task-runs/nope", "401", "-"),
        ("GET", "/api/v1/task-runs/%0Afake%20line", "404", "10"),  # a newline cannot forge a log line
    ]
    for forbidden in (secret, ADMIN_TOKEN, VIEWER_TOKEN, "Bearer", "cookie-", "token=", "?"):
        assert forbidden not in caplog.text


def test_the_access_line_carries_the_request_id_of_the_error_envelope(bearer_client, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    response = bearer_client.get("/api/v1/task-runs/nope", headers=ADMIN, buffered=True)
    (line,) = _access_lines(caplog)
    assert response.get_json()["context"]["request_id"] == line["request_id"]


def test_requests_and_cancels_name_the_user_and_reach_the_domain(bearer_client, engine, caplog):
    caplog.set_level(logging.INFO, logger="capacity_pipeline.api")
    run_id = bearer_client.post(CURRENT, json={"scope": "database"}, headers=ADMIN).get_json()["data"]["run_id"]
    assert bearer_client.post(f"/api/v1/task-runs/{run_id}/actions/cancel", headers=ADMIN).status_code == 200

    run = RunCenter(engine).get_run(run_id)  # the admin token's user (9) is stored as who cancelled
    assert (run["status"], run["created_by"], run["summary_json"]["ext"]["data"]["cancelled_by"]) == (
        "cancelled",
        9,
        9,
    )
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name == "capacity_pipeline.api"]
    assert messages == [
        ("capacity_pipeline.api", logging.INFO, f"task run {run_id} requested by user 9 (scope database)"),
        ("capacity_pipeline.api", logging.INFO, f"task run {run_id} cancelled by user 9"),
    ]
    assert ADMIN_TOKEN not in caplog.text
