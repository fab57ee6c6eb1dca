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

import pytest

from capacity_pipeline.domain.periods import china_today
from capacity_pipeline.domain.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline_tests.e2e.conftest import _free_port, wait_until

TOKEN = "e2e-admin-token-5d1c"
TOKENS = json.dumps({TOKEN: {"user_id": 42, "role": "admin"}})


@pytest.fixture
def api_server(tmp_path, postgres_url):
    port, log = _free_port(), tmp_path / "api.log"
    cli = Path(sys.executable).parent / "capacity-pipeline"
    env = {**os.environ, "WHALEFALL_DATABASE_URL": postgres_url, "CAPACITY_API_TOKENS": TOKENS}
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(cli), "serve-api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _call(port, "GET", "/api/v1/task-runs/none")
            break
        except OSError:
            time.sleep(0.2)
    yield port
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=10)
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


def test_post_runs_to_completion_and_a_cancelled_request_ends_cancelled(dagster_dev, api_server, pg_engine):
    spec = SyntheticSpec(
        instances=6, databases=2, days=10, end_date=china_today(), seed=4, inactive_share=0, deleted_share=0
    )
    load_synthetic_data(pg_engine, spec)

    status, body = _call(api_server, "POST", "/api/v1/capacity/aggregations/current", {"scope": "all"})
    assert status == 200 and body["message"] == "任务已在后台启动,请稍后在运行中心查看进度."
    run_id = body["data"]["run_id"]
    posted = time.monotonic()
    _wait_for_status(api_server, run_id, {"running", "completed", "failed", "cancelled"}, timeout=60)
    picked_up = time.monotonic() - posted
    done = _wait_for_status(api_server, run_id, {"completed", "failed", "cancelled"}, timeout=90)

    assert done["run"]["status"] == "completed", (done, dagster_dev.log.read_text()[-3000:])
    assert (done["run"]["created_by"], done["run"]["progress_total"], done["run"]["progress_completed"]) == (42, 6, 6)
    assert [item["status"] for item in done["items"]] == ["completed"] * 6
    assert [item["instance_id"] for item in done["items"]] == [1, 2, 3, 4, 5, 6]
    assert picked_up < 30  # the first run also waits for the code location to load

    status, body = _call(api_server, "POST", "/api/v1/capacity/aggregations/current", {"scope": "database"})
    second = body["data"]["run_id"]
    status, cancelled = _call(api_server, "POST", f"/api/v1/task-runs/{second}/actions/cancel", {})
    assert (status, cancelled["message"]) == (200, "任务已取消")
    time.sleep(8)  # give the sensor time to (not) launch it
    final = _wait_for_status(api_server, second, {"cancelled"}, timeout=5)
    assert final["run"]["completed_at"] is not None


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
