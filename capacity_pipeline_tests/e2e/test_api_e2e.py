"""End to end: the standalone API server and a real `dagster dev` (daemon, PostgreSQL storage).

A POST over HTTP writes the trigger, the sensor launches the run, the run center shows it done;
a second POST cancelled over HTTP ends cancelled.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from capacity_pipeline.defs.run_center.tags import TASK_RUN_TAG
from capacity_pipeline.domain.periods import china_today
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline_tests.support import assert_run_center_consistent, free_port, spawn, stop_group, wait_until

TOKEN = "e2e-admin-token-5d1c"
TOKENS = json.dumps({TOKEN: {"user_id": 42, "role": "admin"}})


@pytest.fixture
def api_server(tmp_path, postgres_url):
    port, log = free_port(), tmp_path / "api.log"
    cli = Path(sys.executable).parent / "capacity-pipeline"
    env = {**os.environ, "WHALEFALL_DATABASE_URL": postgres_url, "CAPACITY_API_TOKENS": TOKENS}
    with log.open("w") as output:
        process = spawn(
            [str(cli), "serve-api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )

    def answering() -> bool:
        assert process.poll() is None, f"serve-api exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            _call(port, "GET", "/api/v1/task-runs/none")
        except OSError:
            return False
        return True

    try:
        wait_until(answering, 30, "serve-api answering")
        yield port
    finally:
        stop_group(process, sig=signal.SIGTERM, grace=10)
    assert TOKEN not in log.read_text()  # never logged


def _call(port: int, method: str, path: str, body: dict | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def _wait_for_status(port: int, run_id: str, wanted: set[str], timeout: float) -> dict:
    def in_wanted_state() -> dict | None:
        status, body = _call(port, "GET", f"/api/v1/task-runs/{run_id}")
        assert status == 200, body
        return body["data"] if body["data"]["run"]["status"] in wanted else None

    return wait_until(in_wanted_state, timeout, f"TaskRun {run_id} reaching {sorted(wanted)}", interval=0.3)


def _post(port: int, body: dict) -> str:
    status, answer = _call(port, "POST", "/api/v1/capacity/aggregations/current", body)
    assert status == 200 and answer["message"] == "任务已在后台启动,请稍后在运行中心查看进度.", answer
    return answer["data"]["run_id"]


def test_post_runs_to_completion_and_a_request_cancelled_at_once_never_runs(dagster_dev, api_server, pg_engine):
    spec = SyntheticSpec(
        instances=6, databases=2, days=10, end_date=china_today(), seed=4, inactive_share=0, deleted_share=0
    )
    load_synthetic_data(pg_engine, spec)

    run_id = _post(api_server, {"scope": "all"})
    posted = time.monotonic()
    status, body = _call(api_server, "GET", f"/api/v1/task-runs/{run_id}")
    assert (status, body["data"]["run"]["status"]) == (200, "running")  # as WhaleFall's start_run writes it
    done = _wait_for_status(api_server, run_id, {"completed", "failed", "cancelled"}, timeout=90)
    finished_after = time.monotonic() - posted

    assert done["run"]["status"] == "completed", (done, dagster_dev.tail())
    assert (done["run"]["created_by"], done["run"]["progress_total"], done["run"]["progress_completed"]) == (42, 6, 6)
    assert [item["status"] for item in done["items"]] == ["completed"] * 6
    assert [item["instance_id"] for item in done["items"]] == [1, 2, 3, 4, 5, 6]
    assert finished_after < 60  # the first run also waits for the code location to load

    cancelled = _post(api_server, {"scope": "database"})
    status, answer = _call(api_server, "POST", f"/api/v1/task-runs/{cancelled}/actions/cancel", {})
    assert (status, answer["message"]) == (200, "任务已取消")
    # A request made after the cancel is launched by a later sensor tick than the cancelled one
    # (oldest first), so once it is done the sensor has certainly dealt with the cancelled request.
    later = _post(api_server, {"scope": "database"})
    _wait_for_status(api_server, later, {"completed"}, timeout=90)

    status, answer = _call(api_server, "GET", f"/api/v1/task-runs/{cancelled}")
    assert status == 200, answer
    final = answer["data"]
    assert final["run"]["status"] == "cancelled" and final["run"]["completed_at"] is not None
    assert final["items"] == []  # no run ever worked for it
    with dagster_dev.instance() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={TASK_RUN_TAG: cancelled}))
        # Launched before the cancel landed, or never launched: either way never more than CANCELED.
        assert {run.status for run in runs} <= {dg.DagsterRunStatus.CANCELED}
        assert_run_center_consistent(pg_engine, instance, [run_id, cancelled, later])


def test_the_real_server_rejects_an_oversized_chunked_body(api_server):
    connection = http.client.HTTPConnection("127.0.0.1", api_server, timeout=10)
    connection.putrequest("POST", "/api/v1/capacity/aggregations/current")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    chunk = b"{" * 10_000
    connection.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 413 and body["success"] is False
