"""Take-away exports (broker.takeaway): starting one, the refusals, the job reading the learner's work folder
for real (the fake connector's `local` check target and the real `local` grading hook, through rq), the
empty and too-big folders, failures with the learner's reason, and no secret of the hosted lab in the zip.

Database tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from rq import Queue
from sqlalchemy import select

from broker import takeaway
from broker.clock import utcnow
from broker.errors import InvalidTransition
from broker.models import Activity, Backend, Lab, LabExport
from broker.runtime import Runtime
from broker.services import NotFound
from broker.testing.fake import FakeConnector
from connectors.credentials import derive, new_seed
from tests.support.inline import run_queued_jobs
from tests.support.fake_labs import running_lab, set_spec
from tests.support.world import World, add_learner
from tests.takeaway_support import VAGRANT, vagrant_spec

QUEUE = "labdesk-backend-fake"
FOLDER = "labdesk-net-lab"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The learner's work folder "in the lab" (the fake lab's check target runs on this host)."""
    return tmp_path / "lab" / "home" / "learner" / "work"


@pytest.fixture
def takeable(rt: Runtime, world: World, tmp_path: Path, work: Path) -> World:
    """The world's activity on an image version with a Vagrant box and a work folder."""
    spec = vagrant_spec(tmp_path, vagrant=VAGRANT.replace('"/home/learner/work"', f'"{work}"'))
    set_spec(rt, world, spec)
    return world


def export_row(rt: Runtime, export_id: int) -> LabExport:
    with rt.session() as session:
        row = session.get(LabExport, export_id)
        assert row is not None
        session.expunge(row)
        return row


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        return {info.filename: bundle.read(info) for info in bundle.infolist()}


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]


def do_the_work(work: Path) -> None:
    (work / "src").mkdir(parents=True)
    (work / "notes.txt").write_text("my notes\n")
    (work / "src" / "main.c").write_text("int main(void) { return 0; }\n")


# -- starting an export ----------------------------------------------------------------------------------
def test_a_lab_without_a_work_folder_is_bundled_at_once_in_any_state(rt: Runtime, world: World, tmp_path: Path, fake_dir: Path) -> None:
    set_spec(rt, world, vagrant_spec(tmp_path, vagrant=VAGRANT.replace('work_folder = "/home/learner/work"\n', "")))
    lab_id = running_lab(rt, world, fake_dir, state="suspended")

    export_id = takeaway.start_export(rt, world.user_id, lab_id)
    row = export_row(rt, export_id)
    assert (row.state, row.job_id, row.message) == ("ready", None, "")
    assert row.size == len(row.archive or b"") and row.finished_at is not None
    assert Queue(QUEUE, connection=rt.redis).count == 0, "no job: the spec is all it needs"
    bundle = takeaway.download(rt, lab_id)
    assert bundle is not None and bundle.filename == "labdesk-net-lab.zip"
    assert sorted(zip_members(bundle.data)) == [f"{FOLDER}/README.md", f"{FOLDER}/Vagrantfile", f"{FOLDER}/box.json"]
    view = takeaway.latest_export(rt, lab_id)
    assert view is not None and view["state"] == "ready" and view["id"] == export_id and view["finished_at"].endswith("Z")


def test_refusals_say_why_and_leave_nothing(rt: Runtime, takeable: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, takeable, fake_dir)
    other = add_learner(rt, "someone-else")
    with pytest.raises(NotFound, match=f"^no lab {lab_id} of user {other}$"):
        takeaway.start_export(rt, other, lab_id)
    with pytest.raises(NotFound):
        takeaway.start_export(rt, takeable.user_id, 999)
    suspended = running_lab(rt, takeable, fake_dir, user_id=other, state="suspended")
    with pytest.raises(InvalidTransition, match="^Open your lab first: your work folder is read from the running lab.$"):
        takeaway.start_export(rt, other, suspended)
    set_spec(rt, takeable, {"id": "plain", "backends": {"heat": {"template": "x"}}})
    with pytest.raises(takeaway.NotTakeable, match=r"^This lab cannot be taken away: its course offers no Vagrant box.$"):
        takeaway.start_export(rt, takeable.user_id, lab_id)
    assert not takeaway.available({"backends": {"heat": {}}}) and not takeaway.available(None)
    with rt.session() as session:
        assert session.scalars(select(LabExport)).all() == []
    assert Queue(QUEUE, connection=rt.redis).count == 0
    assert takeaway.latest_export(rt, lab_id) is None and takeaway.download(rt, lab_id) is None


# -- the job ---------------------------------------------------------------------------------------------
def test_the_job_reads_the_work_folder_from_the_running_lab(rt: Runtime, takeable: World, fake_dir: Path, work: Path) -> None:
    lab_id = running_lab(rt, takeable, fake_dir)
    do_the_work(work)

    export_id = takeaway.start_export(rt, takeable.user_id, lab_id)
    assert takeaway.start_export(rt, takeable.user_id, lab_id) == export_id, "a second press follows the same export"
    assert Queue(QUEUE, connection=rt.redis).job_ids == [f"takeaway-{export_id}"]
    pending = takeaway.latest_export(rt, lab_id)
    assert pending is not None and pending["state"] == "pending" and takeaway.download(rt, lab_id) is None

    run_queued_jobs(rt)  # a real rq worker (in this process) runs takeaway.run_export
    row = export_row(rt, export_id)
    assert (row.state, row.message) == ("ready", ""), row.message
    bundle = takeaway.download(rt, lab_id)
    assert bundle is not None
    files = zip_members(bundle.data)
    assert tar_members(files[f"{FOLDER}/work.tar.gz"]) == {"./notes.txt": b"my notes\n", "./src/main.c": b"int main(void) { return 0; }\n"}
    vagrantfile = files[f"{FOLDER}/Vagrantfile"].decode()
    assert "config.trigger.after :up" in vagrantfile and f"folder = '{work}'" in vagrantfile
    assert takeaway.run_export(export_id) == "skipped", "a finished export is not redone"


def test_only_the_newest_bundle_keeps_its_bytes(rt: Runtime, takeable: World, fake_dir: Path, work: Path) -> None:
    lab_id = running_lab(rt, takeable, fake_dir)
    do_the_work(work)
    first = takeaway.start_export(rt, takeable.user_id, lab_id)
    assert takeaway.run_export(first) == "ready"
    (work / "more.txt").write_text("more\n")
    second = takeaway.start_export(rt, takeable.user_id, lab_id)
    assert second != first and takeaway.run_export(second) == "ready"

    assert export_row(rt, first).archive is None and export_row(rt, first).size is not None
    bundle = takeaway.download(rt, lab_id)
    assert bundle is not None and "./more.txt" in tar_members(zip_members(bundle.data)[f"{FOLDER}/work.tar.gz"])


def test_a_missing_work_folder_gives_an_empty_one_and_says_so(rt: Runtime, takeable: World, fake_dir: Path, work: Path) -> None:
    lab_id = running_lab(rt, takeable, fake_dir)
    export_id = takeaway.start_export(rt, takeable.user_id, lab_id)

    assert takeaway.run_export(export_id) == "ready"
    row = export_row(rt, export_id)
    assert row.message == f"Your lab has no folder {work} yet, so the bundle's work folder is empty."
    assert tar_members(zip_members(row.archive or b"")[f"{FOLDER}/work.tar.gz"]) == {}


def test_a_work_folder_over_the_limit_fails_naming_the_limit(rt: Runtime, takeable: World, fake_dir: Path, work: Path) -> None:
    rt.settings = dataclasses.replace(rt.settings, takeaway_work_limit_mb=1)
    lab_id = running_lab(rt, takeable, fake_dir)
    work.mkdir(parents=True)
    (work / "video.bin").write_bytes(os.urandom(1024 * 1024))  # 1 MiB that does not compress: over 1 MiB of base64

    export_id = takeaway.start_export(rt, takeable.user_id, lab_id)
    assert takeaway.run_export(export_id) == "failed"
    row = export_row(rt, export_id)
    assert row.message == (f"Your work folder {work} is too big to take away: it is over the 1 MiB limit. "
                           "Remove large files from it and try again.")
    assert row.archive is None and takeaway.download(rt, lab_id) is None
    view = takeaway.latest_export(rt, lab_id)
    assert view is not None and (view["state"], view["message"]) == ("failed", row.message)


def test_a_folder_that_cannot_be_read_fails_with_the_reason(rt: Runtime, takeable: World, fake_dir: Path, work: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    lab_id = running_lab(rt, takeable, fake_dir)
    do_the_work(work)
    (work / "secret").write_text("x")
    (work / "secret").chmod(0)
    export_id = takeaway.start_export(rt, takeable.user_id, lab_id)
    assert takeaway.run_export(export_id) == "failed"
    assert export_row(rt, export_id).message.startswith(f"Your work folder {work} could not be read completely: ")


def test_a_lab_gone_or_stopped_meanwhile_fails_with_a_message_for_the_learner(rt: Runtime, takeable: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, takeable, fake_dir)
    export_id = takeaway.start_export(rt, takeable.user_id, lab_id)
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        FakeConnector("fake", {"state_dir": str(fake_dir)}).delete(lab.handle)
    assert takeaway.run_export(export_id) == "failed"
    assert export_row(rt, export_id).message == "This lab no longer exists on its backend."

    again = takeaway.start_export(rt, takeable.user_id, lab_id)
    with rt.session() as session:
        session.get(Lab, lab_id).state = "suspended"
        session.commit()
    assert takeaway.run_export(again) == "failed"
    assert export_row(rt, again).message == takeaway.OPEN_FIRST


def test_a_template_the_takeaway_cannot_fill_fails_clearly(rt: Runtime, takeable: World, fake_dir: Path, tmp_path: Path) -> None:
    with rt.session() as session:
        spec = dict(session.get(Activity, takeable.activity_id).image.spec)
    spec["backends"] = {**spec["backends"], "vagrant": {**spec["backends"]["vagrant"], "template": "x = ${GRADER_PUBLIC_KEY}\n"}}
    set_spec(rt, takeable, spec)
    lab_id = running_lab(rt, takeable, fake_dir)
    export_id = takeaway.start_export(rt, takeable.user_id, lab_id)
    assert takeaway.run_export(export_id) == "failed"
    assert "cannot be filled in" in export_row(rt, export_id).message and "tell your instructor" in export_row(rt, export_id).message


def test_an_export_whose_job_died_is_closed_and_a_new_one_can_start(rt: Runtime, takeable: World, fake_dir: Path) -> None:
    lab_id = running_lab(rt, takeable, fake_dir)
    export_id = takeaway.start_export(rt, takeable.user_id, lab_id)
    Queue(QUEUE, connection=rt.redis).empty()  # the job is gone (a flushed Redis, a killed worker) ...
    with rt.session() as session:  # ... long enough ago
        session.get(LabExport, export_id).created_at = utcnow() - timedelta(minutes=5)
        session.commit()

    view = takeaway.latest_export(rt, lab_id)
    assert view is not None and (view["state"], view["message"]) == ("failed", "Making your bundle stopped before it finished. Try again.")
    assert takeaway.start_export(rt, takeable.user_id, lab_id) != export_id


def test_no_secret_of_the_hosted_lab_is_in_the_bundle(rt: Runtime, takeable: World, fake_dir: Path, work: Path) -> None:
    """The hosted lab's derived password, its hash, the VNC password and every key stay out of the zip,
    even with a backend that has a credential seed and a learner whose folder is full of work."""
    seed = new_seed()
    with rt.session() as session:
        backend = session.get(Backend, takeable.backend_id)
        backend.secrets = rt.vault.seal({"credential_seed": seed})
        session.commit()
    lab_id = running_lab(rt, takeable, fake_dir)
    do_the_work(work)
    export_id = takeaway.start_export(rt, takeable.user_id, lab_id)
    assert takeaway.run_export(export_id) == "ready"
    bundle = takeaway.download(rt, lab_id)
    assert bundle is not None

    creds = derive(seed, lab_id)
    secrets = [creds.password, creds.password_hash, creds.vnc_password, creds.vnc_passwd_b64, creds.service_private_key,
               creds.service_public_key.split()[1], creds.learner_private_key, creds.learner_public_key.split()[1]]
    members = zip_members(bundle.data)
    texts = [bundle.data] + list(members.values()) + list(tar_members(members[f"{FOLDER}/work.tar.gz"]).values())
    for secret in secrets:
        needle = secret.encode()
        assert not any(needle in text for text in texts), "a hosted lab's secret is in the bundle"
    for text in members.values():
        lowered = text.lower()
        assert b"private key" not in lowered and b"$6$" not in text


def test_a_lab_no_grading_hook_can_reach_fails_without_technical_detail(rt: Runtime, takeable: World, fake_dir: Path) -> None:
    with rt.session() as session:
        backend = session.get(Backend, takeable.backend_id)
        backend.config = {**backend.config, "check_targets": [{"host": "main", "runner": "carrier-pigeon"}]}
        session.commit()
    lab_id = running_lab(rt, takeable, fake_dir)
    export_id = takeaway.start_export(rt, takeable.user_id, lab_id)
    assert takeaway.run_export(export_id) == "failed"
    assert export_row(rt, export_id).message == (
        "Your work folder cannot be read right now. Try again; if it fails again, tell your instructor.")
