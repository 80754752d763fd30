"""Importing the catalogue, on SQLite and PostgreSQL: the whole shipped catalogue into a fresh database,
re-imports that change nothing, a changed entry as a new version while an activity stays on its own, all
or nothing on bad input, and `labdesk images …` as an admin or a script runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import pytest
from click.testing import Result
from sqlalchemy import func, select

from broker import images
from broker.catalogue import CatalogueError, load
from broker.demo import seed
from broker.errors import LabDeskError
from broker.models import Activity, Backend, Course, Image
from broker.runtime import Runtime
from lti.catalogue_view import card, newest_images
from tests.catalogue import ENTRY, make_root, write_entry
from tests.test_cli import cli_env, invoke

Labdesk = Callable[..., Result]


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return make_root(tmp_path)


@pytest.fixture
def labdesk(rt: Runtime, root: Path) -> Iterator[Labdesk]:
    """`labdesk(*args)` in-process on the test's database, from the catalogue root's parent folder."""
    from broker import runtime

    def run(*args: str) -> Result:
        try:
            return invoke(cli_env(rt.settings), *args)
        finally:
            runtime.install(rt)

    yield run


def image_rows(rt: Runtime) -> list[tuple[str, int]]:
    with rt.session() as session:
        return [tuple(row) for row in session.execute(select(Image.slug, Image.version).order_by(Image.slug, Image.version))]


def add_activity(rt: Runtime, slug: str) -> int:
    """An activity created on the newest version of `slug`, as a first LTI launch would."""
    with rt.session() as session:
        image = session.scalar(select(Image).where(Image.slug == slug).order_by(Image.version.desc()).limit(1))
        backend, course = Backend(name="fake", kind="fake", config={}), Course(issuer="test", context_id="c", title="Course")
        session.add_all([backend, course])
        session.flush()
        activity = Activity(course_id=course.id, resource_link_id="link", title="Week 1 lab", image_id=image.id, backend_id=backend.id)
        session.add(activity)
        session.commit()
        return activity.id


# -- the use cases ---------------------------------------------------------------------------------------
def test_the_shipped_catalogue_imports_into_a_fresh_database(rt: Runtime) -> None:
    results = images.import_entries(rt)
    assert {(r.id, r.version, r.status) for r in results} == {
        (slug, 1, "added") for slug in ("gpu-workstation", "linux-desktop", "linux-terminal", "local-desktop", "networking-lab")
    }
    with rt.session() as session:
        stored = {image.slug: image for image in session.scalars(select(Image))}
    for path in images.SHIPPED.glob("*.toml"):
        entry = load(path)
        image = stored[entry.id]
        assert (image.title, image.protocol, image.spec, image.digest) == (entry.title, entry.protocol, entry.spec(), entry.digest())
    assert stored["linux-desktop"].protocol == "rdp" and stored["linux-terminal"].protocol == "ssh"
    assert [h["name"] for h in stored["networking-lab"].spec["hosts"]] == ["router", "client-a", "client-b"]

    again = images.import_entries(rt)
    assert {r.status for r in again} == {"unchanged"} and len(image_rows(rt)) == len(results)


def test_a_changed_entry_is_a_new_version_and_an_activity_keeps_its_own(rt: Runtime, root: Path) -> None:
    path = write_entry(root, "lab")
    assert [(r.version, r.status) for r in images.import_entries(rt, [path])] == [(1, "added")]
    activity_id = add_activity(rt, "lab")

    write_entry(root, "lab", ENTRY.replace("ram_mb = 2048", "ram_mb = 4096"))
    assert [(r.version, r.status) for r in images.import_entries(rt, [root / "catalogue"])] == [(2, "updated")]
    assert [(r.version, r.status) for r in images.import_entries(rt, [path])] == [(2, "unchanged")]
    assert image_rows(rt) == [("lab", 1), ("lab", 2)]
    with rt.session() as session:
        activity = session.get(Activity, activity_id)
        assert activity.image.version == 1 and activity.image.spec["resources"]["ram_mb"] == 2048
        assert [(i.slug, i.version) for i in newest_images(session)] == [("lab", 2)]  # new links start on version 2
    # Changing it back is a change too: the newest version is what an import compares with.
    write_entry(root, "lab")
    assert [(r.version, r.status) for r in images.import_entries(rt, [path])] == [(3, "updated")]


def test_bad_input_imports_nothing(rt: Runtime, root: Path) -> None:
    write_entry(root, "good")
    write_entry(root, "bad", ENTRY.replace('protocol = "rdp"', 'protocol = "spice"'))
    with pytest.raises(CatalogueError) as caught:
        images.import_entries(rt, [root / "catalogue"])
    assert caught.value.problems == [
        'desktop-images/catalogue/bad.toml: hosts[0].ports[0].protocol: unknown protocol "spice" (expected one of: vnc, rdp, ssh, telnet)'
    ]
    assert image_rows(rt) == []


def test_remove_refuses_a_version_an_activity_uses(rt: Runtime, root: Path) -> None:
    path = write_entry(root, "lab")
    images.import_entries(rt, [path])
    add_activity(rt, "lab")
    write_entry(root, "lab", ENTRY.replace("vcpu = 2", "vcpu = 4"))
    images.import_entries(rt, [path])

    for version in (1, None):
        with pytest.raises(LabDeskError, match='^image lab version 1 is used by 1 activity \\("Week 1 lab"\\); it stays until no activity uses it$'):
            images.remove_image(rt, "lab", version)
    assert image_rows(rt) == [("lab", 1), ("lab", 2)]
    assert images.remove_image(rt, "lab", 2) == [2]
    assert image_rows(rt) == [("lab", 1)]
    with pytest.raises(LabDeskError, match="^no image lab version 7$"):
        images.remove_image(rt, "lab", 7)


def test_list_and_show(rt: Runtime, root: Path) -> None:
    path = write_entry(root, "lab")
    images.import_entries(rt, [path])
    write_entry(root, "lab", ENTRY.replace("vcpu = 2", "vcpu = 4"))
    images.import_entries(rt, [path])
    add_activity(rt, "lab")
    assert [(r["id"], r["version"], r["activities"]) for r in images.list_images(rt)] == [("lab", 2, 1)]
    assert [r["version"] for r in images.list_images(rt, all_versions=True)] == [1, 2]
    shown = images.show_image(rt, "lab", 1)
    assert (shown["versions"], shown["used_by"], shown["spec"]["resources"]["vcpu"]) == ([1, 2], [], 2)
    assert shown["backends"] == ["heat", "libvirt", "local", "vagrant"]


def test_the_picker_reads_an_imported_entry(rt: Runtime, root: Path) -> None:
    images.import_entries(rt, [write_entry(root, "lab", ENTRY.replace("idle_suspend_after = 900", "idle_suspend_after = 600"))])
    with rt.session() as session:
        lab = card(newest_images(session)[0], rt.settings)
    assert (lab.protocol, lab.idle_suspend_after, lab.reap_after_days, lab.max_score) == ("RDP", 600, 14, 2.0)
    assert lab.resources == ("2 vCPU", "2048 MB RAM", "10 GB disk") and [c.title for c in lab.checks] == ["Create ~/hello.txt"]


def test_the_demo_seed_imports_the_catalogue_and_runs_again(rt: Runtime) -> None:
    seed(rt)
    seed(rt)
    with rt.session() as session:
        activity = session.scalar(select(Activity))
        assert session.scalar(select(func.count()).select_from(Activity)) == 1
        assert (activity.image.slug, activity.image.version, activity.image.protocol) == ("local-desktop", 1, "vnc")
        assert activity.image.spec["backends"] == {"local": {"command": "xterm"}}
    assert ("networking-lab", 1) in image_rows(rt)


# -- the command line -----------------------------------------------------------------------------------
def test_cli_validate_import_list_show_remove(labdesk: Labdesk, root: Path) -> None:
    write_entry(root, "lab")
    valid = labdesk("images", "validate", "desktop-images/catalogue")
    assert valid.exit_code == 0, valid.output
    assert valid.stdout == "ok  lab                  desktop-images/catalogue/lab.toml\n1 valid entries\n"

    first = labdesk("images", "import", "desktop-images", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout) == [{"id": "lab", "version": 1, "status": "added", "file": "desktop-images/catalogue/lab.toml"}]
    assert labdesk("images", "import", "desktop-images").stdout == "lab                  unchanged at version 1\n"
    write_entry(root, "lab", ENTRY.replace("vcpu = 2", "vcpu = 4"))
    assert labdesk("images", "import", "desktop-images/catalogue/lab.toml").stdout == "lab                  updated to version 2\n"

    listed = json.loads(labdesk("images", "list", "--json").stdout)
    assert [(r["id"], r["version"], r["protocol"]) for r in listed] == [("lab", 2, "rdp")]
    every = json.loads(labdesk("images", "list", "--all-versions", "--json").stdout)
    assert [r["version"] for r in every] == [1, 2]
    assert labdesk("images", "list").stdout.startswith("lab                  v2   rdp    heat,libvirt,local,vagrant ")

    shown = json.loads(labdesk("images", "show", "lab", "--version", "1", "--json").stdout)
    assert (shown["version"], shown["spec"]["resources"]["vcpu"], shown["spec"]["instructions"]) == (1, 2, "Do **this**.")
    text = labdesk("images", "show", "lab").stdout
    assert "version: 2 (versions: 1, 2)" in text and "  main: rdp/3389, ssh/22" in text

    removed = labdesk("images", "remove", "lab", "--version", "1")
    assert (removed.exit_code, removed.stdout) == (0, "removed lab version 1\n")
    assert labdesk("images", "remove", "lab").stdout == "removed lab version 2\n"
    assert json.loads(labdesk("images", "list", "--json").stdout) == []


def test_cli_bad_input_prints_every_problem_and_exits_1(labdesk: Labdesk, root: Path, rt: Runtime) -> None:
    write_entry(root, "good")
    write_entry(root, "bad", ENTRY.replace("port = 22 }", "port = 70000 }").replace('name = "learner"', 'name = "learner"\npassword = "x"'))
    for command in ("validate", "import"):
        result = labdesk("images", command, "desktop-images/catalogue")
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            "error: desktop-images/catalogue/bad.toml: lab_user.password: no passwords or secrets in the catalogue: credentials are injected at boot",
            "error: desktop-images/catalogue/bad.toml: hosts[0].ports[1].port: expected a port number 1-65535, got 70000",
        ]
    assert image_rows(rt) == []
    missing = labdesk("images", "validate", "nowhere.toml")
    assert (missing.exit_code, missing.stderr) == (1, "error: nowhere.toml: (file): no such file or directory\n")


def test_cli_refuses_to_remove_a_version_in_use(labdesk: Labdesk, root: Path, rt: Runtime) -> None:
    images.import_entries(rt, [write_entry(root, "lab")])
    add_activity(rt, "lab")
    result = labdesk("images", "remove", "lab")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == 'error: image lab version 1 is used by 1 activity ("Week 1 lab"); it stays until no activity uses it\n'
    unknown = labdesk("images", "show", "nothing")
    assert (unknown.exit_code, unknown.stderr) == (1, "error: no image nothing\n")
