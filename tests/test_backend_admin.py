"""`labdesk backends edit|enable|disable|remove` and the broker functions they share with the console
(broker.backend_registry, broker.backend_ops): an edit is validated by the connector and changes secrets by
name; the credential seed is safe from an edit while labs depend on it; a disabled backend refuses
launches (and starts no lab already asked for) but its labs are still suspended and deleted, and the
sweeps leave it alone; removal is refused while anything uses it. Every change is audited as `cli:<user>`.
Real rq queues with an in-process worker, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from app import cli

from broker import backend_ops, backend_registry, jobs, runtime, schedule, services
from broker.backend_registry import SecretChanges
from broker.lifecycle import LabState
from broker.models import AuditEvent, Backend, Lab
from broker.runtime import Runtime
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.world import World, add_learner
from tests.test_cli import Labdesk, cli_env, labdesk  # noqa: F401  (a fixture)

KEYSTONE = {"auth_url": "https://keystone.example.edu:5000/v3", "username": "labdesk", "project_name": "labs"}


def answering(rt: Runtime, answer: str, *args: str) -> Result:
    """`labdesk ARGS` with ANSWER typed at its prompt (the `labdesk` fixture types nothing)."""
    runtime.install(None)
    try:
        return CliRunner().invoke(cli, list(args), env=cli_env(rt.settings), input=answer)
    finally:
        runtime.install(rt)


def audited(rt: Runtime) -> list[tuple[str, str, str]]:
    with rt.session() as db:
        return [(e.action, e.target, e.detail) for e in
                db.scalars(select(AuditEvent).where(AuditEvent.action.startswith("backend.")).order_by(AuditEvent.id))]


def row(rt: Runtime, name: str) -> Backend | None:
    with rt.session() as db:
        found = db.scalar(select(Backend).where(Backend.name == name))
        if found is not None:
            db.expunge(found)
        return found


def test_the_cli_edits_config_and_secrets_as_the_console_does(rt: Runtime, labdesk: Labdesk) -> None:  # noqa: F811
    added = labdesk("backends", "add", "campus", "--kind", "heat", "--config", json.dumps(KEYSTONE), "--secret", "password=first")
    assert added.exit_code == 0, added.output
    seed = rt.vault.open(row(rt, "campus").secrets)["credential_seed"]

    refused = labdesk("backends", "edit", "campus", "--config", json.dumps({**KEYSTONE, "interface": "nope"}))
    assert refused.exit_code == 1
    assert refused.stderr == ("error: heat backend: providers[0] (default): interface: expected one of public, internal, "
                              "admin, got 'nope'\n")
    not_json = labdesk("backends", "edit", "campus", "--config", "{oops")
    assert not_json.exit_code == 2 and "Invalid value for --config: not valid JSON" in not_json.output
    no_password = labdesk("backends", "edit", "campus", "--remove-secret", "password")
    assert no_password.exit_code == 1 and "password authentication needs password" in no_password.stderr
    seedless = labdesk("backends", "edit", "campus", "--remove-secret", "credential_seed")
    assert seedless.exit_code == 2 and "credential_seed: cannot be removed" in seedless.output
    assert labdesk("backends", "edit", "nowhere").stderr == "error: no backend named 'nowhere'\n"
    assert audited(rt) == [("backend.add", "backend:campus",
                            "kind heat; secret keys: password (+ a generated credential_seed)")], "nothing refused is saved"

    saved = labdesk("backends", "edit", "campus", "--secret", "password=second", "--secret", "burst.password=third")
    assert saved.exit_code == 0, saved.output
    assert saved.output == ("backend campus saved: config unchanged; secrets replaced: password; "
                            "secrets added: burst.password\n")
    assert "second" not in saved.output and "third" not in saved.output
    assert rt.vault.open(row(rt, "campus").secrets) == {"credential_seed": seed, "password": "second", "burst.password": "third"}
    assert row(rt, "campus").config == KEYSTONE, "no --config keeps the config"

    moved = labdesk("backends", "edit", "campus", "--config", json.dumps({**KEYSTONE, "region": "north"}),
                    "--remove-secret", "burst.password")
    assert moved.output == "backend campus saved: config keys changed: region; secrets removed: burst.password\n"
    assert row(rt, "campus").config == {**KEYSTONE, "region": "north"}
    assert sorted(rt.vault.open(row(rt, "campus").secrets)) == ["credential_seed", "password"]
    assert [a for a, _, _ in audited(rt)] == ["backend.add", "backend.edit", "backend.edit"]
    with rt.session() as db:
        assert all(actor.startswith("cli:") for actor in db.scalars(select(AuditEvent.actor)))


def test_the_credential_seed_is_replaced_only_while_no_lab_depends_on_it(rt: Runtime, world: World) -> None:
    config = backend_registry.config_of(rt, "fake")
    backend_registry.edit(rt, "fake", config, SecretChanges({"credential_seed": "fresh"}), actor="admin:ann")
    lab_id = services.launch(rt, world.user_id, world.activity_id, "learner-1").id
    run_queued_jobs(rt)
    assert lab_state(rt, lab_id) == "running"
    with pytest.raises(backend_registry.InvalidBackendInput, match="credential_seed: can be replaced only while the backend holds no labs"):
        backend_registry.edit(rt, "fake", config, SecretChanges({"credential_seed": "other"}), actor="admin:ann")
    assert rt.vault.open(row(rt, "fake").secrets) == {"credential_seed": "fresh"}
    with pytest.raises(backend_registry.InvalidBackendInput, match="nope: no such secret is set"):
        backend_registry.edit(rt, "fake", config, SecretChanges({}, frozenset({"nope"})), actor="admin:ann")


def test_a_disabled_backend_takes_no_new_lab_but_its_labs_are_suspended_and_deleted(
    rt: Runtime, world: World, labdesk: Labdesk  # noqa: F811
) -> None:
    running = services.launch(rt, world.user_id, world.activity_id, "learner-1").id
    run_queued_jobs(rt)
    asked = services.launch(rt, add_learner(rt, "early"), world.activity_id, "early").id  # queued before the switch

    assert labdesk("backends", "disable", "fake").output == "backend fake is disabled: no new labs and no launches there\n"
    assert schedule.check_backends(rt) == 0 and schedule.reconcile(rt) == 0, "the sweeps leave it alone"
    assert "DISABLED" in labdesk("backends", "status").output
    with pytest.raises(services.LaunchRefused, match="its lab machines have been switched off by the administrators"):
        services.launch(rt, add_learner(rt, "late"), world.activity_id, "late")
    run_queued_jobs(rt)
    with rt.session() as db:
        waiting = db.get(Lab, asked)
        assert (waiting.state, waiting.waiting_for, waiting.message) == ("requested", "capacity", backend_ops.DISABLED_MESSAGE)

    services.request_state(rt, running, LabState.SUSPENDING, "admin:ann", "maintenance")
    run_queued_jobs(rt)
    assert lab_state(rt, running) == "suspended"
    with pytest.raises(services.LaunchRefused):
        services.launch(rt, world.user_id, world.activity_id, "learner-1")  # would resume it
    with pytest.raises(services.LaunchRefused):
        services.reset(rt, world.user_id, running)
    assert lab_state(rt, running) == "suspended", "a refused reset deleted nothing"
    services.request_state(rt, running, LabState.DELETING, "admin:ann", "maintenance")
    run_queued_jobs(rt)
    assert lab_state(rt, running) == "deleted"

    assert labdesk("backends", "enable", "fake").output == "backend fake is enabled\n"
    assert "DISABLED" not in labdesk("backends", "status").output
    assert schedule.check_backends(rt) == 1
    assert jobs.advance_lab(asked, "requested") is None, "its retry (which rq schedules) now starts it"
    assert lab_state(rt, asked) == "running"
    assert [a for a, _, _ in audited(rt)] == ["backend.disable", "backend.enable"]


def test_removal_is_confirmed_and_refused_while_anything_uses_the_backend(
    rt: Runtime, world: World, labdesk: Labdesk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray ./labdesk.toml
    services.launch(rt, world.user_id, world.activity_id, "learner-1")
    refused = labdesk("backends", "remove", "fake", "--yes")
    assert refused.exit_code == 1
    assert refused.stderr == "error: fake is in use: 1 live lab; 1 activity uses it: Test lab (Test course)\n"
    assert row(rt, "fake") is not None

    assert labdesk("backends", "add", "spare", "--kind", "fake", "--secret", "password=p").exit_code == 0
    asked = answering(rt, "n\n", "backends", "remove", "spare")
    assert asked.exit_code == 1 and "Remove backend spare and its sealed secrets?" in asked.output
    assert row(rt, "spare") is not None, "not confirmed: kept"
    done = answering(rt, "y\n", "backends", "remove", "spare")
    assert done.exit_code == 0 and done.output.endswith("backend spare removed\n")
    assert row(rt, "spare") is None
    assert labdesk("backends", "remove", "spare", "--yes").stderr == "error: no backend named 'spare'\n"
    assert [(a, t, d) for a, t, d in audited(rt) if a == "backend.remove"] == [
        ("backend.remove", "backend:spare", "kind fake; its sealed secrets are deleted")]
