"""Shared constants and assertions of the API tests."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from capacity_pipeline.domain.tables import tables_for

CURRENT = "/api/v1/capacity/aggregations/current"
HEALTH = "/api/v1/health"
SUCCESS_KEYS = {"success", "error", "message", "timestamp"}  # and "data" when there is data
ERROR_KEYS = {
    "success", "error", "error_id", "category", "severity", "message_code", "message",
    "timestamp", "recoverable", "suggestions", "context",
}  # fmt: skip
ADMIN_TOKEN, VIEWER_TOKEN = "tok-admin-7f3a9c", "tok-viewer-22b1"


def task_runs(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(tables_for(engine).tables["task_runs"])).scalar()


def task_run_rows(engine: Engine) -> list[tuple]:
    """Every task run as (run_id, status, updated_at): a snapshot to compare before and after."""
    runs = tables_for(engine).tables["task_runs"]
    with engine.connect() as connection:
        query = select(runs.c.run_id, runs.c.status, runs.c.updated_at).order_by(runs.c.id)
        return [tuple(row) for row in connection.execute(query)]


def error(response, status: int, code: str, message: str, category: str) -> dict:  # noqa: ANN001
    """Assert WhaleFall's error envelope with these values; returns the body."""
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == ERROR_KEYS
    assert (body["success"], body["error"], body["message_code"], body["message"], body["category"]) == (
        False,
        True,
        code,
        message,
        category,
    )
    assert len(body["error_id"]) == 32 and body["timestamp"].endswith("+00:00")
    assert body["recoverable"] is (body["severity"] in ("low", "medium"))
    assert body["context"]["method"] == response.request.method
    return body
