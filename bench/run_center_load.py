"""Load benchmark: the run center under a burst of requests, through the real services.

Starts a real `dagster dev` (webserver and daemon, the production dagster.yaml, PostgreSQL storage)
and `capacity-pipeline serve-api`, loads 200 instances, then:

* idle: requests one at a time, each after the previous one finished, to measure the latency of a
  lone request;
* burst: 50 POSTs from 10 threads, half of them cancelled right after their POST;
* cancel while starting: requests cancelled over HTTP the moment their Dagster run has left the
  queue and its worker has not started yet (STARTING);
* cancel then kill: requests cancelled over HTTP while their run works, its worker killed
  (SIGKILL) 50 ms later, before it can see the cancel.

It reports POST latency, POST -> started (the run claimed the request and snapshotted its items),
POST -> final (p50 / p99), the Dagster runs launched, and the consistency of every TaskRun with its
items and its Dagster run (support.assert_run_center_consistent: completed <=> SUCCESS, failed <=>
FAILURE, cancelled <=> CANCELED, counters = items, no open item; a request that shared a run with
others ends as that run does; a killed worker's run ends FAILURE).

    python bench/run_center_load.py [--instances 200] [--burst 50] [--idle 5] [--starting 5] [--killed 3]

Everything is sent to 127.0.0.1 and bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from sqlalchemy import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: its test toolkit

from capacity_pipeline.defs.run_center.tags import CLAIM_TAG, TASK_RUN_TAG
from capacity_pipeline.domain.periods import china_today
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import (
    DagsterDev,
    assert_run_center_consistent,
    database_url,
    free_port,
    scratch_database,
    spawn,
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


def _consistency(
    engine: Engine, instance: dg.DagsterInstance, requests: list[Request], killed: Iterable[str] = ()
) -> list[str]:
    """What does not agree between a TaskRun, its items and its Dagster run (empty when all is well)."""
    problems = []
    for request in requests:
        try:
            assert_run_center_consistent(engine, instance, [request.run_id], killed=killed)
        except AssertionError as error:
            problems.append(f"{request.run_id}: {error}")
    return problems


def _cancelled_with_work_done(claims: RunClaims, requests: list[Request]) -> list[str]:
    """Burst requests are cancelled right after their POST: a run of their own must not have
    finished any of their items."""
    problems = []
    for request in requests:
        final = request.final
        if final.get("status") != "cancelled" or not final.get("progress_completed"):
            continue
        claim_key = _claim_key(claims, request.run_id)
        runs = claims_of_key(claims, claim_key)
        if len(runs) <= 1:
            problems.append(f"{request.run_id}: cancelled at once, yet {final['progress_completed']} item(s) done")
    return problems


def claims_of_key(claims: RunClaims, claim_key: str | None) -> list[str]:
    if claim_key is None:
        return []
    links = claims.links
    with claims.engine.connect() as connection:
        return [row.task_run_id for row in connection.execute(links.select().where(links.c.claim_key == claim_key))]


def _claim_key(claims: RunClaims, task_run_id: str) -> str | None:
    """The run a request was given to; None when it was cancelled before any launcher saw it."""
    links = claims.links
    with claims.engine.connect() as connection:
        row = connection.execute(links.select().where(links.c.task_run_id == task_run_id)).first()
    return None if row is None else row.claim_key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--idle", type=int, default=5)
    parser.add_argument("--starting", type=int, default=5, help="requests cancelled while their run is STARTING")
    parser.add_argument("--killed", type=int, default=3, help="requests cancelled, then their worker killed")
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
        api = spawn(
            [str(Path(sys.executable).parent / "capacity-pipeline"), "serve-api", "--port", str(port)],
            env={**server.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
                starting, starting_states = _cancel_while_starting(port, center, instance, args.starting)
                killed, killed_runs, kill_notes = _cancel_then_kill(port, center, instance, args.killed)
                problems = _consistency(engine, instance, idle + burst + starting)
                problems += _cancelled_with_work_done(claims, burst)
                kill_problems = _consistency(engine, instance, killed, killed_runs)
                launched = len(
                    instance.get_runs(
                        filters=dg.RunsFilter(tags={CLAIM_TAG: [_claim_key(claims, r.run_id) for r in burst]})
                    )
                )
                canceled = [_dagster_status(instance, r.run_id) for r in starting]
                killed_status = [_dagster_status(instance, r.run_id) for r in killed]
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
            print(f"cancel while starting: run state when the cancel landed {_tally(starting_states)}")
            starting_final = _tally(r.final.get("status") for r in starting)
            print(f"cancel while starting: Dagster {_tally(canceled)}, TaskRuns {starting_final}")
            ended = _percentiles([r.final_at - r.posted_at for r in starting])
            print(f"cancel while starting: cancel -> run ended {ended}")
            print(f"cancel then kill: {'; '.join(kill_notes)}")
            killed_final = _tally(r.final.get("status") for r in killed)
            print(f"cancel then kill: Dagster {_tally(killed_status)}, TaskRuns {killed_final}")
            print(f"consistency: {problems or 'all consistent'}")
            print(f"consistency (killed workers): {kill_problems or 'all consistent'}")
            ok = not problems and not kill_problems and burst_final <= BURST_DEADLINE_SECONDS
            return 0 if ok else 1
        finally:
            stop_group(api)
            server.stop()
            engine.dispose()


def _tally(values: Iterable[object]) -> str:
    counts = Counter(getattr(value, "value", value) for value in values)
    return ", ".join(f"{count} {value}" for value, count in sorted(counts.items(), key=str)) or "-"


def _dagster_run(instance: dg.DagsterInstance, task_run_id: str) -> dg.DagsterRun | None:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={TASK_RUN_TAG: task_run_id}), limit=1)
    return runs[0] if runs else None


def _dagster_status(instance: dg.DagsterInstance, task_run_id: str) -> dg.DagsterRunStatus | None:
    run = _dagster_run(instance, task_run_id)
    return None if run is None else run.status


def _cancel(port: int, run_id: str) -> int:
    return _call(port, "POST", f"/api/v1/task-runs/{run_id}/actions/cancel", {})[0]


def _run_ended(center: RunCenter, instance: dg.DagsterInstance, request: Request, run_id: str) -> None:
    wait_until(lambda: instance.get_run_by_id(run_id).is_finished, 180, f"Dagster run {run_id} ending", interval=0.1)
    request.final_at, request.final = time.monotonic(), center.get_run(request.run_id)


def _cancel_while_starting(
    port: int, center: RunCenter, instance: dg.DagsterInstance, count: int
) -> tuple[list[Request], list[dg.DagsterRunStatus]]:
    """Each request cancelled over HTTP the moment its run is seen STARTING (dequeued, its worker not
    up yet); `posted_at` is reset to the cancel, so POST -> final reads cancel -> run ended."""
    requests, states = [], []
    for _ in range(count):
        request = _post(port, "database", cancel=False)

        def left_the_queue(request: Request = request) -> dg.DagsterRun | None:
            run = _dagster_run(instance, request.run_id)
            waiting = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED)
            return run if run is not None and run.status not in waiting else None

        run = wait_until(left_the_queue, 120, "a run leaving the queue", interval=0.01)
        request.posted_at = time.monotonic()
        states.append(run.status if _cancel(port, request.run_id) == 200 else "finished before the cancel")
        _run_ended(center, instance, request, run.run_id)
        requests.append(request)
    return requests, states


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id):
        found = re.search(r"Started process for run \(pid: (\d+)\)", entry.message or "")
        if found:
            return int(found.group(1))
    return None


def _cancel_then_kill(
    port: int, center: RunCenter, instance: dg.DagsterInstance, count: int
) -> tuple[list[Request], set[str], list[str]]:
    """Each request (scope all) cancelled over HTTP once its run has written the database phase,
    its worker killed 50 ms later, before its watch or its next batch can see the cancel."""
    requests, killed, notes = [], set(), Counter()
    for _ in range(count):
        request = _post(port, "all", cancel=False)

        def working(request: Request = request) -> bool:
            items = center.get_items(request.run_id)
            return bool(items) and any(item["details_json"] for item in items)

        wait_until(working, 180, "the run writing its first phase", interval=0.02)
        run = _dagster_run(instance, request.run_id)
        pid = _worker_pid(instance, run.run_id)
        if _cancel(port, request.run_id) != 200:
            notes["finished before the cancel"] += 1
        else:
            time.sleep(0.05)  # the scenario: the worker dies 50 ms after the cancel
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(run.run_id)
                notes["worker killed 50 ms after the cancel"] += 1
            except (ProcessLookupError, TypeError):
                notes["worker gone before the kill"] += 1
        _run_ended(center, instance, request, run.run_id)
        requests.append(request)
    return requests, killed, [f"{n} {what}" for what, n in notes.items()]


def _health(port: int) -> bool:
    try:
        return _call(port, "GET", "/api/v1/health")[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
