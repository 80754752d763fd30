"""Take-away exports: a learner downloads their lab as a bundle to run at home with `vagrant up`.

Any lab whose image version has a `[backends.vagrant]` section can be taken away, whatever backend hosts
it: the bundle is built from the catalogue entry (`broker.takeaway_bundle`). When the entry names a
`work_folder`, the bundle also carries the learner's folder, read from the running lab.

`start_export` writes one `lab_exports` row. Without a work folder the bundle is built at once (it needs
nothing but the spec). With one, a job (`takeaway-<export id>`, `run_export`) goes on the lab's backend
queue, because the web never calls a backend: the worker asks the connector where checks run
(`check_targets`) and reads the folder as base64 of a tar.gz through the grading hook, the very path
"Check my work" takes (broker.attempts), with a larger output limit (`takeaway_work_limit_mb`). The zip
is stored in the row; the web serves it from there.

At most one export per lab is pending (a partial unique index); a second request gets the one under way.
A failed export keeps a message the learner can read.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import shlex
import tarfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker import lab_jobs, runtime
from broker.lab_jobs import LabSnapshot
from broker.clock import utcnow
from broker.connector import CheckTarget
from broker.dispatch import JOB_TIMEOUT
from broker.errors import ConfigError, ConnectorError, InvalidTransition, LabDeskError, UnknownBackend
from broker.grading import CheckScript, runner_for
from broker.lifecycle import LabState
from broker.models import Lab, LabExport
from broker.runtime import Runtime
from broker.services import NotFound
from broker.takeaway_bundle import TemplateError, build_bundle, bundle_folder, vagrant_section

log = logging.getLogger(__name__)

__all__ = ["build_bundle", "start_export", "latest_export", "export_view", "run_export", "available", "download",
           "NotTakeable", "ExportFailed"]

READ_TIMEOUT = 300.0  # seconds for tar + base64 of the work folder in the lab
STALE_AFTER = timedelta(seconds=JOB_TIMEOUT + 120)  # no job lives longer: a pending export this old died
NO_FOLDER_STATUS = 3
NO_VAGRANT = "This lab cannot be taken away: its course offers no Vagrant box."
OPEN_FIRST = "Open your lab first: your work folder is read from the running lab."
_BROKEN = "This lab's Vagrantfile cannot be filled in, so it cannot be taken away. Please tell your instructor."
_UNREACHABLE = "Your work folder cannot be read right now. Try again; if it fails again, tell your instructor."
_DIED = "Making your bundle stopped before it finished. Try again."
_CRASHED = "Your bundle could not be made. Try again; if it fails again, tell your instructor."

# The work folder as base64 of a tar.gz on stdout, with nothing but POSIX sh, tar and base64 (busybox
# has them). The folder is written into the script, not passed as an argument, because an image's
# `grader-run` accepts only arguments of safe characters. A tar failure is told on stderr (a pipe's
# status is its last command's, and sh has no pipefail).
_READ_SCRIPT = """#!/bin/sh
folder={folder}
if [ ! -d "$folder" ]; then
  echo "labdesk: no folder $folder" >&2
  exit {missing}
fi
cd "$folder" || exit 4
{{ tar -czf - . || echo "labdesk: tar failed with status $?" >&2; }} | base64
"""


class NotTakeable(LabDeskError):
    """The lab's image has no Vagrant box: there is nothing to take away."""


class ExportFailed(LabDeskError):
    """Reading the work folder failed; the message is for the learner."""


# -- what the pages ask --------------------------------------------------------------------------------
def available(spec: dict[str, Any] | None) -> bool:
    """Whether a lab of this image version can be taken away (the lab page shows the button)."""
    return vagrant_section(spec) is not None


@dataclass(frozen=True)
class Download:
    """A ready bundle: its file name and bytes."""

    filename: str
    data: bytes


def export_view(export: LabExport) -> dict[str, Any]:
    """What a browser may know of an export (the web adds the download address when it is ready)."""
    return {
        "id": export.id,
        "lab_id": export.lab_id,
        "state": export.state,
        "message": export.message,
        "size": export.size,
        "created_at": _iso(export.created_at),
        "finished_at": _iso(export.finished_at),
    }


def latest_export(rt: Runtime, lab_id: int) -> dict[str, Any] | None:
    """The lab's newest export as `export_view`, or None; a pending one whose job died is closed first."""
    with rt.session() as session:
        export = _newest(session, lab_id)
        if (export is not None and export.state == "pending"
                and lab_jobs.job_died(rt, export.job_id, export.created_at, STALE_AFTER)):
            _close(session, export.id, "failed", message=_DIED)
            session.refresh(export)
        return export_view(export) if export is not None else None


def download(rt: Runtime, lab_id: int) -> Download | None:
    """The lab's newest ready bundle, or None when there is none."""
    with rt.session() as session:
        export = session.scalar(
            select(LabExport).where(LabExport.lab_id == lab_id, LabExport.state == "ready", LabExport.archive.is_not(None))
            .order_by(LabExport.id.desc()).limit(1)
        )
        if export is None:
            return None
        spec = export.lab.activity.image.spec or {}
        return Download(f"{bundle_folder(spec)}.zip", export.archive or b"")


# -- starting an export ----------------------------------------------------------------------------------
def start_export(rt: Runtime, user_id: int, lab_id: int) -> int:
    """Start a take-away export of the learner's lab and return its id (or the id of the one under way).

    Raises NotFound (no such lab of this user), NotTakeable (no Vagrant box), InvalidTransition (a work
    folder must be read and the lab is not running) or ServiceUnavailable (the job queue is down).
    """
    with rt.session() as session:
        lab = session.get(Lab, lab_id)
        if lab is None or lab.user_id != user_id:
            raise NotFound(f"no lab {lab_id} of user {user_id}")
        spec = lab.activity.image.spec or {}
        section = vagrant_section(spec)
        if section is None:
            raise NotTakeable(NO_VAGRANT)
        if not section.get("work_folder"):
            return _build_now(session, lab_id, spec)
        if lab.state != LabState.RUNNING.value:
            raise InvalidTransition(OPEN_FIRST)
        lab_jobs.require_queue(rt)
        export_id, new = lab_jobs.insert_once(
            session, lambda: LabExport(lab_id=lab_id, state="pending", created_at=utcnow(), message=""),
            lambda: _under_way(rt, session, lab_id), "takeaway",
        )
        if not new:
            return export_id
        queue = lab.backend.queue_name
    lab_jobs.enqueue_or_delete(rt, LabExport, export_id, queue, "takeaway", run_export)
    return export_id


def _build_now(session: Session, lab_id: int, spec: dict[str, Any]) -> int:
    """No work folder: the bundle depends on the spec alone, so it is built in the request (milliseconds)
    and the row is written finished."""
    data, reason = _bundle(spec, None)
    export = LabExport(lab_id=lab_id, state="ready" if data else "failed", created_at=utcnow(), finished_at=utcnow(),
                       archive=data, size=len(data) if data else None, message=reason)
    session.add(export)
    session.flush()
    if data:
        _drop_older_archives(session, export)
    session.commit()
    return export.id


def _under_way(rt: Runtime, session: Session, lab_id: int) -> int | None:
    """The lab's pending export, if any; one whose job died is closed as failed first."""
    export = session.scalar(select(LabExport).where(LabExport.lab_id == lab_id, LabExport.state == "pending"))
    return lab_jobs.under_way(rt, export, lambda dead: _close_died(session, dead), STALE_AFTER)


def _close_died(session: Session, export: LabExport) -> None:
    _close(session, export.id, "failed", message=_DIED)
    log.warning("take-away export %s: its job %s is gone; closed as failed", export.id, export.job_id)


# -- the job ---------------------------------------------------------------------------------------------
def run_export(export_id: int) -> str:
    """Read the learner's work folder from the running lab and build the bundle; returns the export's
    final state ("ready" or "failed"), or "skipped" when it was no longer pending (run twice, closed)."""
    rt = runtime.current()
    with rt.session() as session:
        export = session.get(LabExport, export_id)
        if export is None or export.state != "pending":
            return "skipped"
        lab = export.lab
        info = LabSnapshot.of(lab)
        session.commit()  # end the read transaction before the lab is read
    try:
        archive, note = _work_archive(rt, info)
    except ExportFailed as exc:
        with rt.session() as session:
            return _close(session, export_id, "failed", message=str(exc)[:500])
    except Exception:  # noqa: BLE001 - a bug or an outage must not leave the export pending for ever
        log.exception("take-away export %s failed", export_id)
        with rt.session() as session:
            return _close(session, export_id, "failed", message=_CRASHED)
    with rt.session() as session:
        export = session.get(LabExport, export_id)
        if export is None or export.state != "pending":
            return "skipped"
        return _finish(session, export, info.spec, archive, note)


def _work_archive(rt: Runtime, info: LabSnapshot) -> tuple[bytes, str]:
    """The work folder as tar.gz bytes, and a note for the learner ("" or why the archive is empty)."""
    folder = vagrant_section(info.spec)["work_folder"]  # type: ignore[index]  # checked by start_export
    if info.state != LabState.RUNNING.value or info.handle is None:
        raise ExportFailed(OPEN_FIRST)
    target = _target(rt, info)
    limit = rt.settings.takeaway_work_limit_mb * 1024 * 1024
    script = _READ_SCRIPT.format(folder=shlex.quote(folder), missing=NO_FOLDER_STATUS)
    try:
        outcome = runner_for(target).run(target, CheckScript("take-away", script, (), READ_TIMEOUT, limit))
    except ConfigError as exc:  # no grading hook installed for this kind of target
        log.error("take-away: %s", exc)
        raise ExportFailed(_UNREACHABLE) from exc
    if outcome.error:
        log.warning("take-away: reading %s failed: %s", folder, outcome.error)
        raise ExportFailed(_UNREACHABLE)
    if outcome.truncated:
        raise ExportFailed(f"Your work folder {folder} is too big to take away: it is over the "
                           f"{rt.settings.takeaway_work_limit_mb} MiB limit. Remove large files from it and try again.")
    if outcome.timed_out:
        raise ExportFailed(f"Reading your work folder {folder} took longer than {READ_TIMEOUT:g} seconds. Try again.")
    if outcome.exit_status == NO_FOLDER_STATUS:
        return _empty_archive(), f"Your lab has no folder {folder} yet, so the bundle's work folder is empty."
    failure = next((line for line in outcome.stderr.splitlines() if line.startswith("labdesk:")), "")
    if outcome.exit_status != 0 or failure:
        detail = _tail(outcome.stderr)
        log.warning("take-away: reading %s: status %s: %s", folder, outcome.exit_status, detail)
        raise ExportFailed(f"Your work folder {folder} could not be read completely"
                           f"{': ' + detail if detail else ''}. Try again.")
    return _decoded(outcome.stdout, folder), ""


def _target(rt: Runtime, info: LabSnapshot) -> CheckTarget:
    """The lab's first machine, where the entry's work folder lives (as for checks without a host)."""
    try:
        targets = rt.connector(info.backend).check_targets(info.handle or {})
    except ConnectorError as exc:
        raise ExportFailed(exc.user_message[:500]) from exc
    except (UnknownBackend, ConfigError) as exc:
        log.error("take-away: %s", exc)
        raise ExportFailed(_UNREACHABLE) from exc
    if not targets:
        raise ExportFailed("Your work folder cannot be read from this lab.")
    first = ((info.spec.get("hosts") or [{}])[0] or {}).get("name", "")
    return next((t for t in targets if t.host == first), targets[0])


def _decoded(text: str, folder: str) -> bytes:
    """The archive from the script's base64 (line breaks ignored), checked to be a whole tar.gz."""
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            archive.getmembers()
    except (binascii.Error, ValueError, tarfile.TarError, EOFError, OSError) as exc:
        log.warning("take-away: the archive of %s is damaged: %s", folder, exc)
        raise ExportFailed(f"Your work folder {folder} could not be read completely. Try again.") from exc
    return data


def _empty_archive() -> bytes:
    """A tar.gz with no files: restoring it makes the folder, empty, owned by the lab user."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz"):
        pass
    return buffer.getvalue()


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[-2:])[:200]


def _finish(session: Session, export: LabExport, spec: dict[str, Any], archive: bytes | None, note: str) -> str:
    """Store the zip (or the reason it cannot be built) in a pending export."""
    data, reason = _bundle(spec, archive)
    if data is None:
        return _close(session, export.id, "failed", message=reason)
    _drop_older_archives(session, export)
    return _close(session, export.id, "ready", archive=data, size=len(data), message=note)


def _bundle(spec: dict[str, Any], archive: bytes | None) -> tuple[bytes | None, str]:
    """The zip, or None and the learner's reason (a template the take-away cannot fill)."""
    try:
        return build_bundle(spec, archive), ""
    except TemplateError as exc:
        log.error("take-away of image %s: %s", spec.get("id"), exc)
        return None, _BROKEN


def _drop_older_archives(session: Session, export: LabExport) -> None:
    """Only a lab's newest bundle keeps its bytes: a work folder of 24 MiB per click would fill the database."""
    session.execute(update(LabExport).where(LabExport.lab_id == export.lab_id, LabExport.id != export.id,
                                            LabExport.archive.is_not(None)).values(archive=None))


def _close(session: Session, export_id: int, state: str, **values: Any) -> str:
    """Finish a pending export as "ready" or "failed" (compare-and-set: only a pending one)."""
    session.execute(
        update(LabExport).where(LabExport.id == export_id, LabExport.state == "pending")
        .values(state=state, finished_at=utcnow(), **values)
    )
    session.commit()
    return state


def _newest(session: Session, lab_id: int) -> LabExport | None:
    return session.scalar(select(LabExport).where(LabExport.lab_id == lab_id).order_by(LabExport.id.desc()).limit(1))


def _iso(moment: Any) -> str | None:
    return moment.isoformat() + "Z" if moment is not None else None
