"""The `labdesk` command as an admin or a script uses it: settings from `LABDESK_*` variables, `--json`
output that parses, one-line `error: …` reasons with exit status 1, and click's usage errors (status 2).

Most commands run in-process through click's CliRunner (fast); a few run as real `python -m app` and
`labdesk` processes to prove the console entry point.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner, Result
from redis import Redis
from sqlalchemy import inspect, select

from app import cli
from broker import runtime, schedule, services
from broker.clock import utcnow
from broker.config import Settings
from broker.db import engine_for
from broker.models import Backend, Lab
from broker.runtime import Runtime
from tests.conftest import make_settings
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.workers import ROOT, settings_env
from tests.support.world import World, add_learner

Labdesk = Callable[..., Result]
CLOSED_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/labdesk"  # nothing listens on port 1
CLOSED_REDIS = "redis://127.0.0.1:1/0"
BIN = Path(sys.executable).parent


def cli_env(settings: Settings, **extra: str) -> dict[str, str | None]:
    """Exactly these settings for the command: every other LABDESK_* variable is unset."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LABDESK_")}
    env.update({k: v for k, v in settings_env(settings).items() if k.startswith("LABDESK_")})
    env.update(extra)
    return env


def invoke(env: dict[str, str | None], *args: str) -> Result:
    """Run `labdesk ARGS` in-process, building its runtime from `env` as a fresh process would."""
    runtime.install(None)
    try:
        return CliRunner().invoke(cli, list(args), env=env)
    finally:
        runtime.install(None)


@pytest.fixture
def labdesk(rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Labdesk]:
    """`labdesk(*args, **env)` on the test's database and Redis; the test's runtime is back afterwards."""
    monkeypatch.chdir(tmp_path)  # no stray ./labdesk.toml

    def run(*args: str, **env: str) -> Result:
        try:
            return invoke(cli_env(rt.settings, **env), *args)
        finally:
            runtime.install(rt)

    yield run


def one_error_line(result: Result) -> str:
    """The single `error: …` line a failed command printed on stderr."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def as_json(result: Result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def running_lab(rt: Runtime, world: World) -> int:
    lab = services.launch(rt, world.user_id, world.activity_id, actor="test")
    run_queued_jobs(rt)
    assert lab_state(rt, lab.id) == "running"
    return lab.id


# -- db --------------------------------------------------------------------------------------------------
def test_db_upgrade_creates_the_schema_and_is_repeatable(tmp_path: Path, redis_client: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    env = cli_env(make_settings(url, tmp_path / "data"))
    for _ in range(2):
        result = invoke(env, "db", "upgrade")
        assert (result.exit_code, result.stdout) == (0, "database is up to date\n")
    assert {"labs", "lab_events", "backends", "activities", "users"} <= set(inspect(engine_for(url)).get_table_names())
    check = invoke(env, "db", "check")
    assert (check.exit_code, check.stdout) == (0, "no drift between models and migrations\n")


def test_the_console_entry_points_upgrade_a_database_and_list_backends(tmp_path: Path, redis_client: Redis) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    env = settings_env(make_settings(url, tmp_path / "data"))
    upgrade = subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=60)
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout == "database is up to date\n"
    listed = subprocess.run([str(BIN / "labdesk"), "backends", "list", "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


# -- configuration ---------------------------------------------------------------------------------------
def test_malformed_settings_stop_the_command_naming_the_key(labdesk: Labdesk, tmp_path: Path) -> None:
    result = labdesk("labs", "list", LABDESK_KEEPALIVE_INTERVAL="abc")
    assert one_error_line(result) == "error: LABDESK_KEEPALIVE_INTERVAL: expected a positive whole number, got 'abc'"

    config = tmp_path / "etc" / "labdesk.toml"
    config.parent.mkdir()
    config.write_text("keepalive_intervall = 30\n")
    result = labdesk("labs", "list", LABDESK_CONFIG=str(config))
    assert one_error_line(result) == f"error: {config}: keepalive_intervall: unknown setting 'keepalive_intervall'"

    helped = labdesk("--help", LABDESK_KEEPALIVE_INTERVAL="abc")  # the help still shows, under a one-line reason
    assert "Traceback" not in helped.output
    assert "Error: configuration: LABDESK_KEEPALIVE_INTERVAL: expected a positive whole number" in helped.stderr
    assert "Commands:" in helped.stdout


def test_malformed_settings_stop_a_real_process_naming_the_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABDESK_")}
    env.update(LABDESK_DATA_DIR=str(tmp_path), LABDESK_KEEPALIVE_INTERVAL="abc", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "app", "labs", "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "LABDESK_KEEPALIVE_INTERVAL" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_or_redis_is_a_one_line_reason(labdesk: Labdesk, rt: Runtime, world: World, tmp_path: Path) -> None:
    line = one_error_line(labdesk("labs", "list", LABDESK_DATABASE_URL=CLOSED_DATABASE))
    assert line.startswith("error: database: connection failed") and "Connection refused" in line
    line = one_error_line(labdesk("labs", "list", LABDESK_DATABASE_URL=f"sqlite:///{tmp_path / 'never-upgraded.sqlite3'}"))
    assert line == "error: database: no such table: labs"
    line = one_error_line(labdesk("sweep", "suspend", LABDESK_REDIS_URL=CLOSED_REDIS))
    assert line.startswith("error: redis: ") and "Connection refused" in line
    lab_id = running_lab(rt, world)
    line = one_error_line(labdesk("labs", "suspend", str(lab_id), LABDESK_REDIS_URL=CLOSED_REDIS))
    assert line.startswith("error: the job queue is unavailable: ")
    assert lab_state(rt, lab_id) == "running"


# -- backends --------------------------------------------------------------------------------------------
def test_adding_a_backend_of_an_unknown_kind_names_the_installed_ones(labdesk: Labdesk) -> None:
    line = one_error_line(labdesk("backends", "add", "cloud", "--kind", "nope"))
    assert re.fullmatch(r"error: no connector kind 'nope' is installed \(installed: [a-z, ]+\)", line)
    assert {"fake", "local"} <= set(line.split("(installed: ")[1].rstrip(")").split(", "))


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--config", "{not json", "not valid JSON"),
        ("--config", "[1, 2]", "must be a JSON object"),
        ("--secret", "no-equals-sign", "expected KEY=VALUE"),
    ],
)
def test_bad_backend_options_are_usage_errors_with_the_reason(labdesk: Labdesk, rt: Runtime, option: str, value: str, reason: str) -> None:
    result = labdesk("backends", "add", "cloud", "--kind", "fake", option, value)
    assert result.exit_code == 2
    assert option in result.stderr and reason in result.stderr
    with rt.session() as session:
        assert session.scalars(select(Backend)).all() == []


def test_a_duplicate_backend_name_is_refused_unless_if_missing(labdesk: Labdesk, world: World) -> None:
    assert one_error_line(labdesk("backends", "add", "fake", "--kind", "fake")) == "error: a backend named 'fake' already exists"
    again = labdesk("backends", "add", "fake", "--kind", "fake", "--if-missing")
    assert (again.exit_code, again.stdout) == (0, "backend fake exists\n")


def test_secrets_are_stored_encrypted_and_never_listed(labdesk: Labdesk, rt: Runtime) -> None:
    added = labdesk("backends", "add", "cloud", "--kind", "fake", "--config", '{"region": "north"}',
                    "--secret", "password=hunter2-secret", "--secret", "token=t0k=en")
    assert (added.exit_code, added.stdout) == (0, "backend cloud (fake) registered\n")
    with rt.session() as session:
        backend = session.scalar(select(Backend).where(Backend.name == "cloud"))
        assert b"hunter2" not in backend.secrets and b"t0k" not in backend.secrets
        opened = rt.vault.open(backend.secrets)
        assert opened.pop("credential_seed")  # generated: each lab's credentials derive from it
        assert opened == {"password": "hunter2-secret", "token": "t0k=en"}
        assert rt.connector(backend).config["password"] == "hunter2-secret"  # usable in memory, server-side

    listed = labdesk("backends", "list", "--json")
    assert "hunter2" not in listed.output and "t0k" not in listed.output
    assert as_json(listed) == [{"name": "cloud", "kind": "fake", "enabled": True, "queue": "labdesk-backend-cloud",
                                "config": {"region": "north"}, "has_secrets": True}]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"providers": [{"name": "a", "endpoint": "http://h/v1/p", "capacity": "5"}]}',
         "error: heat backend: providers[0] (a): capacity: expected -1 (unlimited), 0 (disabled) or a maximum, got '5'"),
        ('{"auth_url": "https://keystone/v3", "username": "labdesk"}',
         "error: heat backend: providers[0] (default): password authentication needs password, project_name"),
        ('{"endpoint": "http://h/v1/p", "token": "t", "providers": [{"name": "a"}, {"name": "a"}]}',
         "error: heat backend: providers: names repeat: ['a', 'a']"),
    ],
)
def test_a_heat_backend_with_bad_settings_is_refused_with_the_key_at_fault(labdesk: Labdesk, rt: Runtime, config: str, message: str) -> None:
    assert one_error_line(labdesk("backends", "add", "cloud", "--kind", "heat", "--config", config)) == message
    with rt.session() as session:
        assert session.scalars(select(Backend)).all() == []


def test_a_heat_backend_takes_its_password_as_a_secret(labdesk: Labdesk, rt: Runtime) -> None:
    config = '{"auth_url": "https://keystone/v3", "username": "labdesk", "project_name": "labs", "region": "R1"}'
    added = labdesk("backends", "add", "cloud", "--kind", "heat", "--config", config, "--secret", "password=s3cret")
    assert added.exit_code == 0, added.output
    with rt.session() as session:
        backend = session.scalar(select(Backend).where(Backend.name == "cloud"))
        [cloud] = rt.connector(backend).providers
        assert (cloud.name, cloud.auth_kind, cloud.region, cloud.auth["password"]) == ("default", "password", "R1", "s3cret")


def test_backends_check_reports_each_answer_and_fails_if_one_is_down(labdesk: Labdesk, world: World, rt: Runtime) -> None:
    assert as_json(labdesk("backends", "check", "--json")) == {"fake": True}
    assert b"fake" in rt.redis.hkeys(schedule.HEALTH_KEY)  # /healthz now knows

    assert labdesk("backends", "add", "down", "--kind", "fake", "--config", '{"down": true}').exit_code == 0
    result = labdesk("backends", "check", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"down": False, "fake": True}
    assert one_error_line(labdesk("backends", "check", "nowhere")) == "error: no backend named 'nowhere'"


# -- labs ------------------------------------------------------------------------------------------------
def test_labs_list_and_show_print_json_with_the_event_history(labdesk: Labdesk, rt: Runtime, world: World) -> None:
    lab_id = running_lab(rt, world)

    listed = as_json(labdesk("labs", "list", "--json"))
    assert [(r["id"], r["state"], r["user"], r["activity"], r["backend"]) for r in listed] == [
        (lab_id, "running", "learner-1", "Test lab", "fake")]
    assert as_json(labdesk("labs", "list", "--state", "suspended", "--json")) == []
    assert labdesk("labs", "list", "--state", "sleeping").exit_code == 2

    shown = as_json(labdesk("labs", "show", str(lab_id), "--json"))
    assert shown["state"] == "running" and shown["progress"] == 100
    assert [(e["from"], e["to"], e["actor"]) for e in shown["events"]] == [
        ("", "requested", "test"), ("requested", "provisioning", "worker"), ("provisioning", "running", "worker")]
    assert all(e["job"] for e in shown["events"][1:])
    text = labdesk("labs", "show", str(lab_id))
    assert "state: running" in text.stdout and "provisioning -> running" in text.stdout
    assert one_error_line(labdesk("labs", "show", "424242")) == "error: no lab 424242"


def test_lab_actions_on_the_wrong_state_fail_with_a_one_line_reason(labdesk: Labdesk, rt: Runtime, world: World) -> None:
    lab_id = running_lab(rt, world)
    assert one_error_line(labdesk("labs", "resume", str(lab_id))) == f"error: lab {lab_id} is running; it cannot go to resuming now"

    suspended = labdesk("labs", "suspend", str(lab_id))
    assert (suspended.exit_code, suspended.stdout) == (0, f"lab {lab_id} is now suspending\n")
    assert one_error_line(labdesk("labs", "suspend", str(lab_id))) == f"error: lab {lab_id} is suspending; it cannot go to suspending now"
    run_queued_jobs(rt)
    assert labdesk("labs", "resume", str(lab_id)).stdout == f"lab {lab_id} is now resuming\n"
    run_queued_jobs(rt)
    assert labdesk("labs", "delete", str(lab_id)).stdout == f"lab {lab_id} is now deleting\n"
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "deleted"
    for verb in ("suspend", "resume", "delete"):
        target = {"suspend": "suspending", "resume": "resuming", "delete": "deleting"}[verb]
        assert one_error_line(labdesk("labs", verb, str(lab_id))) == f"error: lab {lab_id} is deleted; it cannot go to {target} now"
    assert one_error_line(labdesk("labs", "delete", "424242")) == "error: no lab 424242"


# -- sweeps ----------------------------------------------------------------------------------------------
def test_each_sweep_runs_once_and_prints_its_count_as_json(labdesk: Labdesk, rt: Runtime, world: World) -> None:
    now = utcnow()
    states = {
        "idle": dict(state="running", idle_deadline=now - timedelta(minutes=1)),
        "stuck": dict(state="provisioning", deadline=now - timedelta(minutes=1)),
        "forgotten": dict(state="suspended", last_active_at=now - timedelta(days=30)),
    }
    users = {learner: add_learner(rt, learner) for learner in states}
    ids = {}
    with rt.session() as session:
        for learner, fields in states.items():
            lab = Lab(user_id=users[learner], activity_id=world.activity_id, backend_id=world.backend_id, **fields)
            session.add(lab)
            session.flush()
            ids[learner] = lab.id
        session.commit()

    assert as_json(labdesk("sweep", "suspend", "--json")) == {"suspended": 1}
    assert as_json(labdesk("sweep", "expire", "--json")) == {"expired": 1}
    assert as_json(labdesk("sweep", "reap", "--json")) == {"deleting": 1}
    assert as_json(labdesk("sweep", "reconcile", "--json")) == {"reconciled": {"fake": {"orphans_deleted": 0, "vanished": 0}}}
    assert as_json(labdesk("sweep", "limits", "--json")) == {"suspended": 0}  # no activity has a weekly limit
    assert as_json(labdesk("sweep", "classes", "--json")) == {"classes": {"pre-warmed": 0, "let go": 0}}
    assert as_json(labdesk("sweep", "suspend", "--json")) == {"suspended": 0}
    assert [lab_state(rt, ids[n]) for n in ("idle", "stuck", "forgotten")] == ["suspending", "provisioning", "deleting"]
    with rt.session() as session:
        assert session.get(Lab, ids["stuck"]).recoveries == 1
    assert labdesk("sweep", "suspend").stdout == "suspended: 0\n"
