"""The console's Backends section over real HTTP: admins only (and CSRF) on every page and action; adding a
backend validates exactly as `labdesk backends add` (the error names the key, nothing is stored) and seals
its secrets, which no page shows afterwards; test connection queues the health check on the backend's
queue; capacity, draining and prices are saved; an edit changes the config and secrets by name (validated
as on add, values never shown); a disabled backend refuses learners' launches while its labs can still be
suspended and deleted; removal is confirmed and refused while anything uses the backend; every action is
audited."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from rq import Queue
from sqlalchemy import select

from broker import schedule, services
from broker.models import AuditEvent, Backend, Lab
from broker.runtime import Runtime
from tests.support.http import Learner, LiveServer
from tests.support.inline import lab_state, run_queued_jobs
from tests.support.redis_down import serve_without_redis
from tests.support.world import World
from tests.support.admin_browser import Browser, signed_in_root

SECRET = "hunter2-very-secret"
ACTIONS = ("/admin/backends", "/admin/backends/cloud/check", "/admin/backends/cloud/drain",
           "/admin/backends/cloud/capacity", "/admin/backends/cloud/prices", "/admin/backends/cloud/edit",
           "/admin/backends/cloud/enabled", "/admin/backends/cloud/remove")


@pytest.fixture
def admin(rt: Runtime, server: LiveServer) -> Browser:
    """A browser signed in as the local admin `root`."""
    return signed_in_root(rt, server.url)


def add(browser: Browser, **fields: str) -> requests.Response:
    form = {"name": "cloud", "kind": "fake", "config": "{}", "secrets": "", **fields}
    return browser.post("/admin/backends", data={**form, "csrf_token": browser.token("/admin/backends")})


def form_token(person: Learner) -> str:
    """A valid CSRF token of this browser's session (from the sign-in form, which anyone may load)."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', person.get("/admin/login").text)
    assert found
    return found.group(1)


def stored(rt: Runtime) -> dict[str, Backend]:
    with rt.session() as db:
        return {b.name: b for b in db.scalars(select(Backend))}


def audit_rows(rt: Runtime, prefix: str = "backend.") -> list[tuple[str, str, str, str]]:
    with rt.session() as db:
        return [(e.action, e.actor, e.target, e.address) for e in
                db.scalars(select(AuditEvent).where(AuditEvent.action.startswith(prefix)).order_by(AuditEvent.id))]


def test_backends_need_an_admin(rt: Runtime, server: LiveServer, learner: Callable[[str], Learner]) -> None:
    nobody = Browser(server.url)
    page = nobody.get("/admin/backends", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"].startswith("/admin/login?next=/admin/backends")
    ada = learner("Ada")
    for person in (nobody, ada):
        token = form_token(person)
        for path in ACTIONS:
            refused = person.post(path, data={"csrf_token": token, "name": "cloud", "kind": "fake", "config": "{}"},
                                  allow_redirects=False)
            assert refused.status_code == 403 and "Admins only" in refused.text, path
    assert stored(rt) == {} and audit_rows(rt) == []


def test_every_backend_post_needs_the_csrf_token(rt: Runtime, admin: Browser, fake_dir: Path) -> None:
    assert add(admin, config=f'{{"state_dir": "{fake_dir}"}}').status_code == 200
    for path in ACTIONS:
        refused = admin.post(path, data={"name": "other", "kind": "fake", "config": '{"x": 1}', "capacity": "3",
                                         "draining": "1", "enabled": "0"})
        assert refused.status_code == 400 and "This form has expired" in refused.text, path
    backend = stored(rt)["cloud"]
    assert (set(stored(rt)), backend.capacity, backend.draining, backend.enabled) == ({"cloud"}, None, False, True)
    assert backend.config == {"state_dir": str(fake_dir)}


@pytest.mark.parametrize(("fields", "reason", "field"), [
    ({"kind": "vagrant", "config": '{"bogus": 1}'}, "bogus: unknown key", "config"),
    ({"kind": "libvirt", "config": "{}"}, "hosts: required", "config"),
    ({"config": "{not json"}, "not valid JSON", "config"),
    ({"config": "[1, 2]", "secrets": "token=abc"}, "must be a JSON object", "config"),
    ({"secrets": "just-a-value-no-key"}, "expected KEY=VALUE", "secrets"),
    ({"kind": "nope"}, "no connector kind &#39;nope&#39; is installed", "config"),
    ({"name": "has space"}, "a name is 1-64 letters", "name"),
])
def test_a_bad_backend_is_refused_on_the_form_and_nothing_is_stored(
    rt: Runtime, admin: Browser, fields: dict[str, str], reason: str, field: str
) -> None:
    refused = add(admin, **fields)
    assert refused.status_code == 400
    alert = re.search(r'<p class="error" role="alert">Not added: (.*?)</p>', refused.text, re.S)
    assert alert and reason in alert.group(1), refused.text
    assert re.search(f'id="{field}" name="{field}"[^>]*aria-invalid="true"', refused.text), "the field at fault is marked"
    assert "just-a-value-no-key" not in refused.text, "a bad secret line is not echoed"
    assert stored(rt) == {} and audit_rows(rt) == []


def test_a_good_backend_is_stored_with_sealed_secrets_that_no_page_shows(rt: Runtime, admin: Browser, fake_dir: Path) -> None:
    added = add(admin, name="cloud", config=f'{{"state_dir": "{fake_dir}", "region": "north"}}',
                secrets=f"password={SECRET}\n\ntoken=t0k=en-{SECRET}\n")
    assert added.status_code == 200 and added.url.endswith("/admin/backends")
    assert "Backend cloud (fake) added; its secrets are sealed." in added.text
    row = re.search(r'<tr id="backend-cloud">(.*?)</tr>', added.text, re.S)
    assert row and "<td>fake</td>" in row.group(1) and "enabled" in row.group(1) and "not checked yet" in row.group(1)

    backend = stored(rt)["cloud"]
    assert backend.config == {"state_dir": str(fake_dir), "region": "north"}
    assert backend.secrets and SECRET.encode() not in backend.secrets
    opened = rt.vault.open(backend.secrets)
    assert opened.pop("credential_seed")
    assert opened == {"password": SECRET, "token": f"t0k=en-{SECRET}"}
    for path in ("/admin/backends", "/admin/", "/admin/audit"):
        assert SECRET not in admin.get(path).text, path
    assert audit_rows(rt) == [("backend.add", "admin:root", "backend:cloud", "127.0.0.1")]

    again = add(admin, name="cloud", secrets=f"password={SECRET}")
    assert again.status_code == 400 and "a backend named &#39;cloud&#39; already exists" in again.text
    assert SECRET not in again.text, "the refused form does not give the secrets back"
    assert len(stored(rt)) == 1


def test_test_connection_queues_the_health_check_on_the_backends_queue(rt: Runtime, admin: Browser, fake_dir: Path) -> None:
    add(admin, config=f'{{"state_dir": "{fake_dir}"}}')
    backend = stored(rt)["cloud"]
    queue = Queue(backend.queue_name, connection=rt.redis)
    queued = admin.post("/admin/backends/cloud/check", data={"csrf_token": admin.token("/admin/backends")})
    assert "cloud: health check queued" in queued.text
    jobs = queue.get_jobs()
    assert [(j.func_name, j.args) for j in jobs] == [("broker.schedule.check_backend_job", (backend.id,))]
    assert "not checked yet" in queued.text, "the web did not call the backend itself"

    assert schedule.check_backend(rt, backend.id) is True  # what the worker runs
    row = re.search(r'<tr id="backend-cloud">(.*?)</tr>', admin.get("/admin/backends").text, re.S)
    assert row and re.search(r"available at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row.group(1))
    assert audit_rows(rt)[-1] == ("backend.check", "admin:root", "backend:cloud", "127.0.0.1")
    missing = admin.post("/admin/backends/nowhere/check", data={"csrf_token": admin.token("/admin/backends")})
    assert "nowhere: no backend named &#39;nowhere&#39;" in missing.text


def test_capacity_draining_and_prices_are_set_from_the_list(rt: Runtime, admin: Browser, fake_dir: Path) -> None:
    add(admin, config=f'{{"state_dir": "{fake_dir}"}}')

    def act(path: str, **form: str) -> str:
        return admin.post(f"/admin/backends/cloud/{path}", data={**form, "csrf_token": admin.token("/admin/backends")}).text

    assert "cloud: capacity 3." in act("capacity", capacity="3")
    assert "capacity must be a whole number" in act("capacity", capacity="-1")
    assert "cloud is draining: no new lab starts there." in act("drain", draining="1")
    assert "hourly price must be a number" in act("prices", hourly_price="cheap", suspended_hourly_price="")
    page = act("prices", hourly_price="0.40", suspended_hourly_price="0.05")
    assert "cloud: prices saved." in page and "running 0.4, suspended 0.05" in page
    row = re.search(r'<tr id="backend-cloud">(.*?)</tr>', page, re.S)
    assert row and "draining" in row.group(1) and "0 / 3" in row.group(1)
    backend = stored(rt)["cloud"]
    assert (backend.capacity, backend.draining, backend.hourly_price, backend.suspended_hourly_price) == (3, True, 0.4, 0.05)
    assert "cloud takes new labs again." in act("drain", draining="0") and not stored(rt)["cloud"].draining
    assert [a for a, *_ in audit_rows(rt)] == ["backend.add", "backend.capacity", "backend.drain", "backend.prices", "backend.undrain"]
    assert {(who, target, address) for _, who, target, address in audit_rows(rt)} == {("admin:root", "backend:cloud", "127.0.0.1")}


def edit(browser: Browser, name: str, **fields: object) -> requests.Response:
    form = browser.get(f"/admin/backends/{name}/edit").text
    config = re.search(r'<textarea id="config" name="config"[^>]*>(.*?)</textarea>', form, re.S)
    assert config, form
    data = {"config": html.unescape(config.group(1)), "new_secrets": "", **fields, "csrf_token": browser.token(f"/admin/backends/{name}/edit")}
    return browser.post(f"/admin/backends/{name}/edit", data=data)


def sealed(rt: Runtime, name: str) -> dict[str, str]:
    return rt.vault.open(stored(rt)[name].secrets)


def edit_details(rt: Runtime) -> list[str]:
    with rt.session() as db:
        return list(db.scalars(select(AuditEvent.detail).where(AuditEvent.action == "backend.edit").order_by(AuditEvent.id)))


KEYSTONE = '"auth_url": "https://keystone.example.edu:5000/v3", "username": "labdesk", "project_name": "labs"'
HEAT = f'{{{KEYSTONE}, "capacity": 10}}'
TOKEN = "burst-0123456789-secret"


def test_an_edit_changes_the_config_and_each_secret_by_name_and_never_shows_a_value(rt: Runtime, admin: Browser) -> None:
    assert add(admin, kind="heat", config=HEAT, secrets=f"password={SECRET}\nburst.password={TOKEN}").status_code == 200
    seed = sealed(rt, "cloud")["credential_seed"]
    listed = admin.get("/admin/backends").text
    assert 'href="/admin/backends/cloud/edit"' in listed

    form = admin.get("/admin/backends/cloud/edit")
    assert form.status_code == 200
    names = re.findall(r'<th scope="row"><code>(.*?)</code></th>', form.text)
    assert names == ["burst.password", "credential_seed", "password"], "the names of what is set, and only the names"
    for value in (SECRET, TOKEN, seed):
        assert value not in form.text
    assert 'name="remove" value="credential_seed"' not in form.text and 'name="remove" value="password"' in form.text
    assert '"capacity": 10' in html.unescape(form.text), "the config as stored, to change"

    saved = edit(admin, "cloud", config=f'{{{KEYSTONE}, "capacity": 20}}',
                 **{"secret:password": "new-password-value", "secret:burst.password": "", "remove": "burst.password"},
                 new_secrets="campus.password=key-from-the-form")
    assert saved.status_code == 200 and saved.url.endswith("/admin/backends#backend-cloud")
    assert ("cloud saved (config keys changed: capacity; secrets replaced: password; secrets added: campus.password; "
            "secrets removed: burst.password). Running labs keep running; new operations use the new settings.") in saved.text
    assert stored(rt)["cloud"].config["capacity"] == 20
    assert sealed(rt, "cloud") == {"credential_seed": seed, "password": "new-password-value", "campus.password": "key-from-the-form"}

    kept = edit(admin, "cloud")  # every field left empty: the config as shown, every secret kept
    assert "cloud saved (config unchanged; secrets kept)" in kept.text
    assert sealed(rt, "cloud") == {"credential_seed": seed, "password": "new-password-value", "campus.password": "key-from-the-form"}
    for path in ("/admin/backends", "/admin/backends/cloud/edit", "/admin/audit"):
        page = admin.get(path).text
        assert "new-password-value" not in page and "key-from-the-form" not in page and seed not in page, path
    assert edit_details(rt) == [
        "config keys changed: capacity; secrets replaced: password; secrets added: campus.password; secrets removed: burst.password",
        "config unchanged; secrets kept",
    ]
    assert audit_rows(rt)[-1] == ("backend.edit", "admin:root", "backend:cloud", "127.0.0.1")


@pytest.mark.parametrize(("fields", "reason", "field"), [
    ({"config": f'{{{KEYSTONE}, "interface": "nope"}}'}, "interface: expected one of public, internal, admin", "config"),
    ({"config": f'{{{KEYSTONE}, "capacity": "lots"}}'}, "capacity: expected -1 (unlimited)", "config"),
    ({"config": f'{{{KEYSTONE},'}, "not valid JSON", "config"),
    ({"remove": "password", "secret:password": ""}, "password authentication needs password", "config"),
    ({"remove": "credential_seed"}, "credential_seed: cannot be removed", "secrets"),
    ({"remove": "password", "secret:password": "typed-but-removed"}, "password: give it a new value or remove it, not both", "secrets"),
    ({"new_secrets": "no-equals-sign"}, "expected KEY=VALUE", "secrets"),
])
def test_a_refused_edit_says_why_by_the_field_keeps_what_was_typed_and_changes_nothing(
    rt: Runtime, admin: Browser, fields: dict[str, str], reason: str, field: str
) -> None:
    add(admin, kind="heat", config=HEAT, secrets=f"password={SECRET}")
    before = (stored(rt)["cloud"].config, sealed(rt, "cloud"))
    typed = {"secret:password": "typed-new-password", **fields}
    refused = edit(admin, "cloud", **typed)
    assert refused.status_code == 400
    assert re.search(r'<p class="error" role="alert">Not saved: [^<]*' + re.escape(reason), refused.text), refused.text
    if field == "config":
        next_to = re.search(r'aria-invalid="true" aria-describedby="config-error">(.*?)</textarea>\s*<br><span class="error" id="config-error">(.*?)</span>',
                            refused.text, re.S)
        assert next_to and reason in next_to.group(2), "the reason sits by the config field"
        if "config" in fields:
            assert html.unescape(next_to.group(1)) == fields["config"], "the config comes back as typed"
    else:
        assert re.search(r'<p class="error" id="secrets-error">[^<]*' + re.escape(reason), refused.text)
    if fields.get("remove", "credential_seed") != "credential_seed":  # the seed has no box: it cannot be removed
        assert re.search(rf'name="remove" value="{fields["remove"]}" checked', refused.text), "the ticked box stays ticked"
    assert "typed-new-password" not in refused.text and "typed-but-removed" not in refused.text and SECRET not in refused.text
    assert (stored(rt)["cloud"].config, sealed(rt, "cloud")) == before
    assert edit_details(rt) == []


def test_a_disabled_backend_refuses_launches_while_its_labs_can_be_suspended_and_deleted(
    rt: Runtime, world: World, admin: Browser, learner: Callable[[str], Learner]
) -> None:
    ada, bob = learner("Ada"), learner("Bob")
    ada_lab = ada.lab_id(ada.launch(world.activity_id))
    run_queued_jobs(rt)
    assert lab_state(rt, ada_lab) == "running"
    waiting = services.launch(rt, world.user_id, world.activity_id, "learner-1").id  # just before it goes out of service

    def act(path: str, **form: str) -> requests.Response:
        return admin.post(path, data={**form, "csrf_token": admin.token("/admin/backends")})

    disabled = act("/admin/backends/fake/enabled", enabled="0")
    assert ("fake is disabled: no new labs and no launches there; its labs can still be suspended and deleted."
            in disabled.text)
    row = re.search(r'<tr id="backend-fake">(.*?)</tr>', disabled.text, re.S)
    assert row and "<td>disabled</td>" in row.group(1) and "Enable fake</button>" in disabled.text

    refused = bob.launch(world.activity_id)
    assert refused.status_code == 403
    assert "<h1>This lab cannot open now</h1>" in refused.text and services.BACKEND_DISABLED in html.unescape(refused.text)
    with rt.session() as db:
        assert sorted(db.scalars(select(Lab.id))) == sorted([ada_lab, waiting]), "no lab was made for Bob"
    assert ada.lab_id(ada.launch(world.activity_id)) == ada_lab, "a running lab is still reached"

    run_queued_jobs(rt)  # the lab asked for before: not started, waiting with the reason
    with rt.session() as db:
        lab = db.get(Lab, waiting)
        assert (lab.state, lab.waiting_for, lab.message) == ("requested", "capacity",
            "The machines for this lab are switched off by the administrators; it starts once they are back on.")

    bulk = admin.post("/admin/labs/bulk", data={"action": "suspend", "lab": str(ada_lab), "csrf_token": admin.token("/admin/labs")})
    assert "Suspend: 1 done" in bulk.text
    run_queued_jobs(rt)
    assert lab_state(rt, ada_lab) == "suspended"
    again = ada.launch(world.activity_id)
    assert again.status_code == 403 and "This lab cannot open now" in again.text, "no resume on a disabled backend"
    assert lab_state(rt, ada_lab) == "suspended"
    deleted = admin.post("/admin/labs/bulk", data={"action": "delete", "confirm": "yes", "lab": str(ada_lab),
                                                    "csrf_token": admin.token("/admin/labs")})
    assert "Delete: 1 done" in deleted.text
    run_queued_jobs(rt)
    assert lab_state(rt, ada_lab) == "deleted"

    assert "fake is enabled: it takes new labs again." in act("/admin/backends/fake/enabled", enabled="1").text
    assert bob.launch(world.activity_id).status_code == 200
    actions = [a for a, *_ in audit_rows(rt)]
    assert actions == ["backend.disable", "backend.enable"]


def test_removing_a_backend_is_confirmed_and_refused_while_anything_uses_it(
    rt: Runtime, world: World, admin: Browser, fake_dir: Path
) -> None:
    services.launch(rt, world.user_id, world.activity_id, "learner-1")
    page = admin.get("/admin/backends")
    assert 'href="/admin/backends/fake/remove"' in page.text
    confirm = admin.get("/admin/backends/fake/remove").text
    refusal = re.search(r'<p class="error" role="alert" id="remove-refused">(.*?)</p>', confirm, re.S)
    assert refusal and refusal.group(1) == "fake cannot be removed: 1 live lab; 1 activity uses it: Test lab (Test course)."
    assert "<button" not in confirm.split("</nav>")[1], "no Remove button while it is in use"
    forced = admin.post("/admin/backends/fake/remove", data={"csrf_token": admin.token("/admin/backends")})
    assert "Not removed: fake is in use: 1 live lab; 1 activity uses it: Test lab (Test course)." in html.unescape(forced.text)
    assert "fake" in stored(rt)

    assert add(admin, name="spare", config=f'{{"state_dir": "{fake_dir}"}}', secrets=f"password={SECRET}").status_code == 200
    confirm = admin.get("/admin/backends/spare/remove").text
    assert "Nothing uses spare (fake): no activity and no lab." in confirm and "Remove spare</button>" in confirm
    removed = admin.post("/admin/backends/spare/remove", data={"csrf_token": admin.token("/admin/backends/spare/remove")})
    assert removed.url.endswith("/admin/backends") and "Backend spare removed, with its sealed secrets." in removed.text
    assert 'id="backend-spare"' not in removed.text and set(stored(rt)) == {"fake"}
    gone = admin.get("/admin/backends/spare/remove")
    assert gone.url.endswith("/admin/backends") and "no backend named &#39;spare&#39;" in gone.text
    assert [(a, t) for a, _, t, _ in audit_rows(rt, "backend.remove")] == [("backend.remove", "backend:spare")]


@pytest.fixture
def redis_down(rt: Runtime) -> Iterator[LiveServer]:
    yield from serve_without_redis(rt)


def test_with_redis_down_the_list_and_the_database_actions_still_work(
    rt: Runtime, world: World, admin: Browser, redis_down: LiveServer
) -> None:
    admin.base_url = redis_down.url  # the same signed-in admin, on a server that cannot reach Redis
    page = admin.get("/admin/backends")
    assert page.status_code == 200
    assert ('<p class="error" role="alert">The health checks are unavailable: Redis, where they are kept, cannot be '
            "reached.</p>") in page.text
    row = re.search(r'<tr id="backend-fake">(.*?)</tr>', page.text, re.S)
    assert row and "unknown (Redis cannot be reached)" in row.group(1)

    check = admin.post("/admin/backends/fake/check", data={"csrf_token": admin.token("/admin/backends")})
    assert check.status_code == 200
    assert re.search(r'<p class="error" role="alert">fake: the job queue is unavailable, so no check was queued: '
                     r"Redis cannot be reached \(", check.text), check.text
    assert "fake is disabled" in admin.post("/admin/backends/fake/enabled",
                                            data={"enabled": "0", "csrf_token": admin.token("/admin/backends")}).text
    assert stored(rt)["fake"].enabled is False
    assert [a for a, *_ in audit_rows(rt)] == ["backend.disable"], "the refused check left no audit row"
