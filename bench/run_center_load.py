"""Load benchmark: the run center under a burst of requests, through the real services.

Starts a real `dagster dev` (webserver and daemon, the production dagster.yaml, PostgreSQL storage)
and `capacity-pipeline serve-api`, loads 200 instances, then:

* idle: requests one at a time, each after the previous one finished, to measure the latency of a
  lone request;
* burst: 50 POSTs from 10 threads, half of them cancelled right after their POST.

It reports POST latency, POST -> started (the run claimed the request and snapshotted its items),
POST -> final (p50 / p99), the Dagster runs launched, and the consistency of every TaskRun with its
Dagster run: completed <=> SUCCESS, failed <=> FAILURE, cancelled <=> CANCELED (or, for a request
that shared a run with others, a run that went on for them without writing its items).

    python bench/run_center_load.py [--instances 200] [--burst 50] [--idle 5]

Everything is sent to 127.0.0.1 and bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: its test toolkit

from capacity_pipeline.defs.run_center.tags import CLAIM_TAG
from capacity_pipeline.domain.periods import china_today
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import (
    DagsterDev,
    database_url,
    free_port,
    scratch_database,
    stop_group,
    wait_until,
)

TOKEN = "bench-admin-token"
FINAL = {"completed", "failed", "cancelled"}
BURST_DEADLINE_SECONDS = 120


@dataclass
class Request:
    run_id: str
    posted_at: float
    post_seconds: float
    cancel: bool
    started_at: float | None = None
    final_at: float | None = None
    final: dict = field(default_factory=dict)


def _call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def _post(port: int, scope: str, cancel: bool) -> Request:
    started = time.monotonic()
    status, body = _call(port, "POST", "/api/v1/capacity/aggregations/current", {"scope": scope})
    elapsed = time.monotonic() - started
    assert status == 200, body
    request = Request(body["data"]["run_id"], started, elapsed, cancel)
    if cancel:
        status, body = _call(port, "POST", f"/api/v1/task-runs/{request.run_id}/actions/cancel", {})
        assert status in (200, 404), body  # 404: it had already finished
    return request


def _watch(center: RunCenter, requests: list[Request], deadline: float, expected: int | None = None) -> None:
    """Poll the run center until every request is final (or the deadline passes). `requests` may
    still be growing (a burst in progress) until it holds `expected` of them."""
    expected = len(requests) if expected is None else expected
    while time.monotonic() < deadline and (len(requests) < expected or any(r.final_at is None for r in requests)):
        for request in list(requests):
            if request.final_at is not None:
                continue
            run = center.get_run(request.run_id)
            now = time.monotonic()
            if request.started_at is None and run["progress_total"]:
                request.started_at = now
            if run["status"] in FINAL:
                request.final_at, request.final = now, run
        time.sleep(0.1)


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):.2f} s, p99 {p99:.2f} s (n={len(ordered)})"


def _consistency(instance: dg.DagsterInstance, claims: RunClaims, requests: list[Request]) -> list[str]:
    """What does not agree between a TaskRun and its Dagster run (empty when all is well)."""
    problems = []
    for request in requests:
        status = request.final.get("status")
        if status not in FINAL:
            problems.append(f"{request.run_id}: not final ({status})")
            continue
        claim_key = _claim_key(claims, request.run_id)
        runs = [] if claim_key is None else instance.get_runs(filters=dg.RunsFilter(tags={CLAIM_TAG: claim_key}))
        dagster = {run.status for run in runs}
        shared = bool(runs) and len(claims_of(claims, runs[0].run_id)) > 1
        expected = {
            "completed": {dg.DagsterRunStatus.SUCCESS},
            "failed": {dg.DagsterRunStatus.FAILURE},
            "cancelled": {dg.DagsterRunStatus.CANCELED} | ({dg.DagsterRunStatus.SUCCESS} if shared else set()),
        }[status]
        if status == "cancelled" and not runs:
            continue  # cancelled before any run was launched for it
        if not dagster <= expected:
            problems.append(f"{request.run_id}: {status} but Dagster {sorted(s.value for s in dagster)}")
        if status == "cancelled" and request.final["progress_completed"] and not shared:
            problems.append(f"{request.run_id}: cancelled with completed items")
    return problems


def _claim_key(claims: RunClaims, task_run_id: str) -> str | None:
    """The run a request was given to; None when it was cancelled before any launcher saw it."""
    links = claims.links
    with claims.engine.connect() as connection:
        row = connection.execute(links.select().where(links.c.task_run_id == task_run_id)).first()
    return None if row is None else row.claim_key


def claims_of(claims: RunClaims, dagster_run_id: str) -> list[str]:
    return claims.task_runs_of(dagster_run_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--idle", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        scratch_database("capacity_bench_load") as whalefall,
        scratch_database("capacity_bench_dagster") as storage,
    ):
        engine = make_engine(database_url(whalefall))
        create_schema(engine)
        spec = SyntheticSpec(args.instances, 20, 8, china_today(), seed=11, inactive_share=0, deleted_share=0)
        load_synthetic_data(engine, spec)
        env = {"CAPACITY_API_TOKENS": json.dumps({TOKEN: {"user_id": 1, "role": "admin"}})}
        os.environ["DAGSTER_POSTGRES_URL"] = database_url(storage, driver="postgresql+psycopg2")
        server = DagsterDev.prepared(Path(folder), os.environ["DAGSTER_POSTGRES_URL"], database_url(whalefall), **env)
        port = free_port()
        api = subprocess.Popen(
            [str(Path(sys.executable).parent / "capacity-pipeline"), "serve-api", "--port", str(port)],
            env={**server.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            server.start()
            wait_until(lambda: _health(port), 30, "the API")
            center, claims = RunCenter(engine), RunClaims(engine)
            # Warm up: the first run also loads the code location in a fresh worker.
            warm = _post(port, "all", cancel=False)
            _watch(center, [warm], time.monotonic() + 120)

            idle = []
            for _ in range(args.idle):
                request = _post(port, "all", cancel=False)
                _watch(center, [request], time.monotonic() + 120)
                idle.append(request)

            # The burst is watched while it is being posted, so a request's start and end are seen
            # when they happen, not after the last POST.
            burst: list[Request] = []
            burst_started = time.monotonic()
            watcher = threading.Thread(
                target=_watch, args=(center, burst, burst_started + BURST_DEADLINE_SECONDS, args.burst), daemon=True
            )
            watcher.start()
            scopes = ["all", "database", "instance"]
            with ThreadPoolExecutor(max_workers=10) as pool:
                posts = [pool.submit(_post, port, scopes[i % 3], i % 2 == 1) for i in range(args.burst)]
                for post in as_completed(posts):
                    burst.append(post.result())
            watcher.join()
            burst_final = max((r.final_at or float("inf")) for r in burst) - burst_started

            with server.instance() as instance:
                problems = _consistency(instance, claims, idle + burst)
                launched = len(
                    instance.get_runs(
                        filters=dg.RunsFilter(tags={CLAIM_TAG: [_claim_key(claims, r.run_id) for r in burst]})
                    )
                )
            kept = [r for r in burst if not r.cancel]
            print(
                f"instances: {args.instances}; burst: {args.burst} POSTs from 10 threads, {args.burst // 2} cancelled"
            )
            print(f"idle   POST -> started: {_percentiles([r.started_at - r.posted_at for r in idle if r.started_at])}")
            print(f"idle   POST -> final:   {_percentiles([r.final_at - r.posted_at for r in idle if r.final_at])}")
            print(f"burst  POST latency:    {_percentiles([r.post_seconds for r in burst])}")
            print(f"burst  POST -> started: {_percentiles([r.started_at - r.posted_at for r in kept if r.started_at])}")
            print(f"burst  POST -> final:   {_percentiles([r.final_at - r.posted_at for r in burst if r.final_at])}")
            print(f"burst  all final after: {burst_final:.1f} s (limit {BURST_DEADLINE_SECONDS} s)")
            print(f"burst  Dagster runs launched: {launched} for {args.burst} requests")
            statuses = {s: sum(1 for r in burst if r.final.get("status") == s) for s in sorted(FINAL)}
            print(f"burst  final statuses: {statuses}")
            print(f"consistency: {problems or 'all consistent'}")
            return 0 if not problems and burst_final <= BURST_DEADLINE_SECONDS else 1
        finally:
            stop_group(api)
            server.stop()
            engine.dispose()


def _health(port: int) -> bool:
    try:
        return _call(port, "GET", "/api/v1/health")[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
