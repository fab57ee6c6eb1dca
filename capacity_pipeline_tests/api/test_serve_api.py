"""`capacity-pipeline serve-api` as a real process: port validation, binding before "serving",
one-line bind errors, bodies refused before they are read."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import default_stop_signals, free_port

TOKEN = "serve-api-token-8c2f"
CLI = [sys.executable, "-m", "capacity_pipeline.cli", "serve-api"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    database = tmp_path / "whalefall.db"
    engine = make_engine(f"sqlite:///{database}")
    create_schema(engine)
    engine.dispose()
    return {
        **os.environ,
        "WHALEFALL_DATABASE_URL": f"sqlite:///{database}",
        "CAPACITY_API_TOKENS": json.dumps({TOKEN: {"user_id": 7, "role": "admin"}}),
    }


def _ignoring_stop_signals() -> None:
    """What a background job of a non-interactive shell inherits (`cmd &` in a script, nohup with
    some shells, CI runners): SIGINT ignored, and here SIGTERM too."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)


@contextmanager
def serving(env: dict[str, str], port: int, *, inherited_ignored: bool = False) -> Iterator[subprocess.Popen]:
    """The server on `port`, answering; stopped (SIGINT, as Ctrl-C) when the block ends."""
    process = subprocess.Popen(
        [*CLI, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Default SIGINT whatever pytest inherited, unless the test asks for them ignored.
        preexec_fn=_ignoring_stop_signals if inherited_ignored else default_stop_signals,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "serve-api did not start listening"
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()  # never leave a server behind, even when the test fails
            process.wait(timeout=10)
            raise


@pytest.mark.parametrize("port", ["70000", "65536", "0", "-1", "http"])
def test_a_port_outside_1_to_65535_is_a_usage_error_naming_the_option_and_range(env, port):
    result = subprocess.run([*CLI, "--port", port], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"capacity-pipeline serve-api: error: argument --port: '{port}' is not a port number; allowed: 1..65535\n"
    )


def test_a_port_in_use_is_one_line_on_stderr_and_exit_1_without_saying_serving(env):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run([*CLI, "--port", str(port)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"capacity-pipeline serve-api: failed: port {port} on 127.0.0.1 is in use\n"


def test_a_host_that_is_not_local_is_one_line_too(env):
    result = subprocess.run(
        [*CLI, "--host", "192.0.2.1", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "capacity-pipeline serve-api: failed: 192.0.2.1 is not an address of this machine\n"


def test_it_says_serving_once_bound_answers_logs_each_request_and_stops_quietly_on_ctrl_c(env):
    port, secret = free_port(), "qs-secret-0d4e"
    with serving(env, port) as process:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(
            "GET", f"/api/v1/task-runs/nope?token={secret}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())["message"]) == (404, "任务运行不存在")
    stdout, stderr = process.communicate()
    assert stdout == f"serving the capacity API on http://127.0.0.1:{port}\n"
    assert process.returncode == 0
    assert re.search(
        r" INFO capacity_pipeline\.api\.access: GET /api/v1/task-runs/nope 404 user=7 \d+\.\dms req_", stderr
    )
    assert "Traceback" not in stderr and TOKEN not in stderr and secret not in stderr


def _exchange(port: int, request: bytes) -> tuple[int, dict]:
    """Send raw bytes, read one HTTP answer (within 5 s); returns the status and the JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request)
        response = http.client.HTTPResponse(client)
        response.begin()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())


def _post(headers: str) -> bytes:
    return f"POST /api/v1/capacity/aggregations/current HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()


def test_a_body_over_4_kb_is_refused_before_it_is_read_and_before_authentication(env):
    port, huge = free_port(), 200 * 1024 * 1024
    with serving(env, port) as process:
        # Only the headers are sent: the answer comes without the server waiting for 200 MB.
        status, body = _exchange(port, _post(f"Content-Type: application/json\r\nContent-Length: {huge}\r\n"))
        assert (status, body["message_code"], body["message"]) == (
            413,
            "PAYLOAD_TOO_LARGE",
            "request body is larger than 4096 bytes",
        )
        assert (body["context"]["url"], body["context"]["method"]) == ("/api/v1/capacity/aggregations/current", "POST")
        # A chunked body is cut off once it passes 4 KB, whatever it announces next.
        chunked = _post("Transfer-Encoding: chunked\r\n") + b"%x\r\n%s\r\n" % (5000, b"x" * 5000)
        assert _exchange(port, chunked)[0] == 413
        assert _exchange(port, _post("X-Padding: " + "p" * 20_000 + "\r\n"))[0] == 431
        # 4096 bytes exactly are read and answered by the API itself.
        payload = json.dumps({"scope": "all", "x": ""}).encode()
        payload = payload[:-2] + b"x" * (4096 - len(payload)) + b'"}'
        headers = f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n"
        status, body = _exchange(port, _post(headers) + payload)
        assert status == 200, body
    _, stderr = process.communicate()
    assert " POST /api/v1/capacity/aggregations/current 413 user=- " in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_it_stops_quietly_on_sigint_and_sigterm_even_when_it_inherited_them_ignored(env, stop):
    port = free_port()
    with serving(env, port, inherited_ignored=True) as process:
        process.send_signal(stop)
        process.wait(timeout=10)
    stdout, stderr = process.communicate()
    assert (process.returncode, stdout) == (0, f"serving the capacity API on http://127.0.0.1:{port}\n")
    assert "Traceback" not in stderr
