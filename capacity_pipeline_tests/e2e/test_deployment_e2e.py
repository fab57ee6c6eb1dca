"""The deployment in deploy/, as Dagster deploys it: one process per role.

The files first (no Docker on a test machine): docker-compose.yaml, workspace.yaml, the images, the
systemd units and env.example parse, name the same roles and commands, and pass each service only
known settings or Dagster's own variables; the README's settings table is the generated one.

Then the topology itself, as plain processes, each in its own process group on 127.0.0.1 (the
systemd variant): the code server serving capacity_pipeline.defs over gRPC, dagster-webserver and
dagster-daemon loading it through deploy/workspace.yaml (host and port rewritten) with only
Dagster's variables in their environment, and `capacity-pipeline serve-api`. The rollout's
`init-db` runs against the same databases (no observation first: the first one adopts the samples
as they are); a request posted
to the API runs to completion (run center and Dagster storage), and after the code server restarts
(an upgrade) the daemon reloads it and the next request completes too.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import dagster as dg
import yaml

from capacity_pipeline.defs.run_center.tags import TASK_RUN_TAG
from capacity_pipeline.settings import SETTINGS
from capacity_pipeline_tests.support import (
    CURRENT,
    HEALTH,
    REPO,
    dagster_instance_at,
    database_url,
    free_port,
    scratch_database,
    spawn,
    stop_group,
    wait_until,
)

DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
SETTING_VARIABLES = {setting.env for setting in SETTINGS.values()}
DAGSTER_VARIABLES = {"DAGSTER_HOME", "DAGSTER_POSTGRES_URL"}
POSTGRES_IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}  # the postgres image's own
ROLES = ("capacity-code-server", "dagster-webserver", "dagster-daemon", "capacity-api")
LOCATION = "capacity_pipeline"
TOKEN = "deploy-e2e-admin-token-8c41f0"


def role_commands(host: str, code_port: int, webserver_port: int, api_port: int, workspace: str) -> dict:
    """The command of each role: what the compose file, the images and the units run, and this test."""
    return {
        "capacity-code-server": [
            *("dagster", "code-server", "start", "-m", "capacity_pipeline.defs", "-a", "defs"),
            *("-h", host, "-p", str(code_port), "--log-level", "warning"),
        ],
        "dagster-webserver": ["dagster-webserver", "-w", workspace, "-h", host, "-p", str(webserver_port)],
        "dagster-daemon": ["dagster-daemon", "run", "-w", workspace, "--log-level", "warning"],
        "capacity-api": ["capacity-pipeline", "serve-api", "--host", host, "--port", str(api_port)],
    }


# -- the files --------------------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def _env_example() -> dict[str, str | None]:
    """Every variable env.example names: its value, or None when it is only shown commented out."""
    named: dict[str, str | None] = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            (value,) = shlex.split(match[2])  # one word once quoted: Compose, systemd and sh read it alike
            named[match[1]] = value
        elif match := re.fullmatch(r"# ([A-Z][A-Z0-9_]*)=\S*", line):
            named.setdefault(match[1], None)
    return named


def _dockerfile_cmd(name: str) -> list[str]:
    (cmd,) = re.findall(r"^CMD (\[.*\])$", (DEPLOY / name).read_text(), flags=re.MULTILINE)
    return json.loads(cmd)


def _unit(name: str) -> dict[str, list[str]]:
    """A systemd unit's assignments (a key may repeat), sections merged."""
    assignments: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            assignments.setdefault(key, []).append(value)
    return assignments


def test_compose_file_runs_every_role_with_known_variables_only():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"postgresql", *ROLES}
    commands = role_commands("0.0.0.0", 4000, 3000, 8080, "/opt/dagster/dagster_home/workspace.yaml")
    for role in ROLES:
        assert services[role]["command"] == commands[role], role
    assert services["capacity-code-server"]["command"] == _dockerfile_cmd("Dockerfile")
    assert services["dagster-webserver"]["command"] == _dockerfile_cmd("Dockerfile.dagster")
    images = {role: (services[role]["build"]["dockerfile"], services[role]["image"]) for role in ROLES}
    assert (
        images["capacity-code-server"]
        == images["capacity-api"]
        == ("deploy/Dockerfile", "capacity-pipeline-code:latest")
    )
    assert (
        images["dagster-webserver"]
        == images["dagster-daemon"]
        == (
            "deploy/Dockerfile.dagster",
            "capacity-pipeline-dagster:latest",
        )
    )

    environments = {name: _environment(service) for name, service in services.items()}
    assert set(environments["postgresql"]) == POSTGRES_IMAGE_VARIABLES
    for role in ROLES:
        unknown = set(environments[role]) - SETTING_VARIABLES - DAGSTER_VARIABLES
        assert not unknown, f"{role} is passed variables that are neither settings nor Dagster's: {unknown}"
    # The webserver and the daemon import no user code: Dagster's storage is all they are given.
    assert set(environments["dagster-webserver"]) == set(environments["dagster-daemon"]) == {"DAGSTER_POSTGRES_URL"}
    assert "CAPACITY_API_TOKENS" not in environments["capacity-code-server"]
    assert set(environments["capacity-code-server"]) == SETTING_VARIABLES - {"CAPACITY_API_TOKENS"} | {
        "DAGSTER_POSTGRES_URL"
    }
    assert {"WHALEFALL_DATABASE_URL", "CAPACITY_API_TOKENS"} <= set(environments["capacity-api"])
    # Every value comes from deploy/.env, and env.example names each one.
    example = _env_example()
    for name, environment in environments.items():
        for variable, value in environment.items():
            assert re.fullmatch(rf"\$\{{{variable}(:[-?].*)?\}}", value), (name, variable, value)
            assert variable in example, f"env.example does not name {variable}"

    for name, service in services.items():
        assert service["networks"] == ["capacity"], name
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
    assert "ports" not in services["capacity-code-server"]  # gRPC launches runs: never published
    assert services["dagster-webserver"]["ports"] == ["127.0.0.1:3000:3000"]
    assert services["capacity-api"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["capacity-code-server"]["healthcheck"]["test"] == [
        *("CMD", "dagster", "api", "grpc-health-check", "-h", "127.0.0.1", "-p", "4000")
    ]
    assert services["dagster-daemon"]["healthcheck"]["test"] == ["CMD", "dagster-daemon", "liveness-check"]
    for role in ("dagster-webserver", "dagster-daemon"):
        assert services[role]["depends_on"]["capacity-code-server"] == {"condition": "service_healthy"}


def test_workspaces_load_the_code_server_over_grpc():
    compose = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    systemd = yaml.safe_load((DEPLOY / "systemd" / "workspace.yaml").read_text())
    development = yaml.safe_load((REPO / "workspace.yaml").read_text())
    entry = {"host": "capacity-code-server", "port": 4000, "location_name": LOCATION}
    assert compose == {"load_from": [{"grpc_server": entry}]}
    assert systemd == {"load_from": [{"grpc_server": {**entry, "host": "127.0.0.1"}}]}
    assert entry["host"] in _compose()["services"]
    assert development["load_from"][0]["python_module"]["location_name"] == LOCATION  # one name everywhere


def test_images_pin_the_project_dagster_and_hold_no_secret():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["pipeline"]
    pinned = {requirement for requirement in pyproject if requirement.startswith("dagster")}
    assert pinned == {"dagster==1.13.27", "dagster-webserver==1.13.27", "dagster-postgres==0.29.27"}
    for name in ("Dockerfile", "Dockerfile.dagster"):
        text = (DEPLOY / name).read_text()
        assert re.search(r"^FROM python:3\.11-slim$", text, flags=re.MULTILINE), name
        assert "ENV PYTHONDONTWRITEBYTECODE=1" in text and "DAGSTER_HOME=/opt/dagster/dagster_home" in text
        assert "COPY dagster.yaml /opt/dagster/dagster_home/dagster.yaml" in text
        assert re.search(r"^USER dagster$", text, flags=re.MULTILINE), name
        for variable in ("WHALEFALL_DATABASE_URL", "CAPACITY_API_TOKENS", "DAGSTER_POSTGRES_URL", "PASSWORD"):
            assert not re.search(rf"^(ENV|ARG)\b.*{variable}", text, flags=re.MULTILINE), (name, variable)
    (install,) = re.findall(r"^RUN pip install (.*)$", (DEPLOY / "Dockerfile.dagster").read_text(), re.MULTILINE)
    assert set(install.split()) == pinned  # the Dagster services image: Dagster alone, same versions


def test_systemd_units_one_per_role():
    commands = role_commands("127.0.0.1", 4000, 3000, 8080, "/etc/capacity_pipeline/workspace.yaml")
    for role in ROLES:
        unit = _unit(f"{role}.service")
        program, *arguments = commands[role]
        assert unit["ExecStart"] == [shlex.join([f"/opt/capacity_pipeline/venv/bin/{program}", *arguments])], role
        assert unit["EnvironmentFile"] == ["/etc/capacity_pipeline/env"], role
        assert (unit["User"], unit["Restart"], unit["WantedBy"]) == (
            ["capacity"],
            ["on-failure"],
            ["multi-user.target"],
        )
        if role != "capacity-api":
            assert "DAGSTER_HOME=/var/lib/capacity_pipeline/dagster_home" in unit["Environment"], role
        if role in ("dagster-webserver", "dagster-daemon"):
            for key in ("After", "Wants"):
                assert "capacity-code-server.service" in " ".join(unit[key]).split(), (role, key)


def test_env_example_names_every_setting_with_placeholders():
    example = _env_example()
    assert set(example) <= SETTING_VARIABLES | DAGSTER_VARIABLES | POSTGRES_IMAGE_VARIABLES
    assert set(example) >= SETTING_VARIABLES
    required = {"DAGSTER_POSTGRES_URL", "WHALEFALL_DATABASE_URL", "CAPACITY_API_TOKENS", "DAGSTER_WEBSERVER_URL"}
    assert {name for name, value in example.items() if value is not None} == required | POSTGRES_IMAGE_VARIABLES
    assert example["DAGSTER_POSTGRES_URL"].startswith("postgresql+psycopg2://")
    assert example["WHALEFALL_DATABASE_URL"].startswith("postgresql://")
    tokens = json.loads(example["CAPACITY_API_TOKENS"])
    assert all(set(caller) == {"user_id", "role"} for caller in tokens.values())
    for setting in SETTINGS.values():  # the optional ones are shown with their default
        if example[setting.env] is None:
            line = next(
                line for line in (DEPLOY / "env.example").read_text().splitlines() if f" {setting.env}=" in line
            )
            assert setting.parse(line.split("=", 1)[1]) == setting.default, line


def test_deploy_readme_settings_table_is_generated():
    sys.path.insert(0, str(DEPLOY))
    try:
        import settings_table
    finally:
        sys.path.remove(str(DEPLOY))
    assert settings_table.readme_table((DEPLOY / "README.md").read_text()) == settings_table.table(), (
        "run .venv/bin/python deploy/settings_table.py --write"
    )


# -- the topology, as plain processes ---------------------------------------------------------------


class Topology:
    """Processes started in their own process groups, logs in a folder; stopped in reverse order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, role: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        with (self.folder / f"{role}.log").open("a") as log:
            process = spawn(
                [str(BIN / command[0]), *command[1:]],
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[role] = process
        return process

    def stop(self, role: str) -> None:
        stop_group(self.processes.pop(role))

    def stop_all(self) -> None:
        for role in reversed(list(self.processes)):
            self.stop(role)

    def log(self, role: str, characters: int = 3000) -> str:
        path = self.folder / f"{role}.log"
        return path.read_text(errors="replace")[-characters:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {role}.log ---\n{self.log(role)}" for role in ROLES)

    def check_alive(self) -> None:
        for role, process in self.processes.items():
            assert process.poll() is None, f"{role} exited with {process.returncode}:\n{self.log(role)}"


@contextmanager
def topology(folder: Path) -> Iterator[Topology]:
    processes = Topology(folder)
    try:
        yield processes
    finally:
        processes.stop_all()


def _request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def _answers(url: str) -> bool:
    host, port, path = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _run_command(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_deployed_topology_serves_a_request_end_to_end_and_survives_a_code_server_restart(tmp_path):
    began = time.monotonic()
    with (
        scratch_database("capacity_deploy_dagster") as storage,
        scratch_database("capacity_deploy_whalefall") as whalefall,
        topology(tmp_path) as processes,
    ):
        storage_url = database_url(storage, driver="postgresql+psycopg2")
        whalefall_url = database_url(whalefall, driver="postgresql")  # the plain scheme, as in env.example
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
        code_port, webserver_port, api_port = free_port(), free_port(), free_port()
        workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=code_port)
        (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        commands = role_commands("127.0.0.1", code_port, webserver_port, api_port, str(tmp_path / "workspace.yaml"))

        # Each role gets what the compose file gives it, nothing inherited from this process.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CAPACITY_", "WHALEFALL_", "DAGSTER_"))}
        dagster_env = {**base, "DAGSTER_HOME": str(home), "DAGSTER_POSTGRES_URL": storage_url}
        code_env = {
            **dagster_env,
            "WHALEFALL_DATABASE_URL": whalefall_url,
            "DAGSTER_WEBSERVER_URL": f"http://127.0.0.1:{webserver_port}",
            "CAPACITY_AUTOMATION": "off",
        }
        tokens = json.dumps({TOKEN: {"user_id": 7, "role": "admin"}})
        api_env = {**base, "WHALEFALL_DATABASE_URL": whalefall_url, "CAPACITY_API_TOKENS": tokens}

        # Rollout: WhaleFall's schema (only what is missing) and a little data, then the code server.
        for arguments in (["init-db"], ["generate", "--instances", "4", "--databases", "2", "--days", "5"]):
            done = _run_command(["capacity-pipeline", *arguments, "--db-url", whalefall_url], base, timeout=60)
            assert done.returncode == 0, done.stderr
        processes.start("capacity-code-server", commands["capacity-code-server"], code_env)
        processes.start("dagster-webserver", commands["dagster-webserver"], dagster_env)
        processes.start("dagster-daemon", commands["dagster-daemon"], dagster_env)
        processes.start("capacity-api", commands["capacity-api"], api_env)

        def serving() -> bool:
            processes.check_alive()
            return _answers(f"http://127.0.0.1:{webserver_port}/server_info") and _answers(
                f"http://127.0.0.1:{api_port}{HEALTH}"
            )

        wait_until(serving, 45, "the webserver's /server_info and the API's health answering 200", interval=0.5)
        _wait_for_code_server(processes, code_port, base)

        with dagster_instance_at(home, storage_url) as instance:
            first = _post_and_wait(processes, api_port, instance)

            # An upgrade: the code server restarts (once no run is in progress: the runs execute in
            # its process group); the daemon and the webserver reload it by themselves.
            processes.stop("capacity-code-server")
            processes.start("capacity-code-server", commands["capacity-code-server"], code_env)
            _wait_for_code_server(processes, code_port, base)
            second = _post_and_wait(processes, api_port, instance)

            assert first != second
        alive = _run_command(["dagster-daemon", "liveness-check"], dagster_env, timeout=30)
        assert (alive.returncode, alive.stdout.strip()) == (0, "Daemon live"), alive.stderr  # compose's healthcheck
        processes.check_alive()
    assert TOKEN not in (tmp_path / "capacity-api.log").read_text()  # tokens are never logged
    assert time.monotonic() - began < 300  # a bound on the test (a loaded machine took 128 s), not a speed target


def _wait_for_code_server(processes: Topology, port: int, env: dict[str, str]) -> None:
    """Until the code server answers the command the compose healthcheck runs (bounded)."""
    command = ["dagster", "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)]

    def healthy() -> bool:
        processes.check_alive()
        return _run_command(command, env, timeout=30).returncode == 0

    wait_until(healthy, 60, "the code server passing `dagster api grpc-health-check`", interval=0.5)


def _finished_run(instance: dg.DagsterInstance, task_run_id: str) -> dg.DagsterRun | None:
    """The one Dagster run working for this TaskRun, once it has ended."""
    (run,) = instance.get_runs(filters=dg.RunsFilter(tags={TASK_RUN_TAG: task_run_id}))
    return run if run.is_finished else None


def _post_and_wait(processes: Topology, api_port: int, instance: dg.DagsterInstance) -> str:
    """POST a request for scope all; wait (bounded) until the run center shows it completed and its
    Dagster run, found by its tag, ended SUCCESS in the code location loaded over gRPC."""
    status, answer = _request(api_port, "POST", CURRENT, {"scope": "all"})
    assert status == 200, answer
    run_id = answer["data"]["run_id"]

    def finished() -> dict | None:
        processes.check_alive()
        status, body = _request(api_port, "GET", f"/api/v1/task-runs/{run_id}")
        assert status == 200, body
        run = body["data"]["run"]
        return run if run["status"] in {"completed", "failed", "cancelled"} else None

    run = wait_until(finished, 120, f"TaskRun {run_id} finishing", interval=0.5)
    assert run["status"] == "completed", (run, processes.logs())
    assert run["progress_completed"] == run["progress_total"] == 4 and run["progress_failed"] == 0, run
    # The run center is settled by the run's hooks, a moment before Dagster records the run's end.
    dagster_run = wait_until(partial(_finished_run, instance, run_id), 30, f"the Dagster run of {run_id} ending")
    assert dagster_run.status == dg.DagsterRunStatus.SUCCESS, (run_id, dagster_run.status, processes.logs())
    assert dagster_run.remote_job_origin.location_name == LOCATION  # launched through the grpc_server entry
    assert run["summary_json"]["ext"]["data"]["dagster_run_id"] == dagster_run.run_id
    return run_id
