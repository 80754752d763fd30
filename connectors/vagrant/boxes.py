"""The boxes of one Vagrant backend (`labdesk boxes add|list|remove`): `vagrant box` in its VAGRANT_HOME.

Boxes are local to the backend's host (the settings' `home`), so these run on the host whose workers serve
the backend. Decisions (docs/vagrant-boxes.md):
* every call names the backend's provider (`--provider`), so a box made for another hypervisor is refused
  when added rather than when a learner's lab starts, and a multi-provider metadata file yields ours;
* a SOURCE is a local file (made absolute and checked here, so a typo is "no such file", not a download
  error) or an http(s)/file URL; Vagrant tells a bare box file from a metadata .json by its content;
* a bare box file has no version: Vagrant installs it as version 0 and refuses `--box-version` for it
  (BoxAddDirectVersion, reported as such); versions come from a metadata .json;
* removing a box that a lab directory of the backend names is refused, naming the labs, unless forced
  (a lab records its box's name, not its version, so any version of that name counts as in use).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from broker.connector import Box
from broker.errors import PermanentError
from connectors.vagrant import errors, records
from connectors.vagrant.cli import VagrantCli, VagrantError
from connectors.vagrant.config import VagrantSettings
from connectors.vagrant.labdir import all_in

URL_SCHEMES = ("http", "https", "file")
ADDED = re.compile(r"Successfully added box '(.+)' \(v(.+)\) for '(.*)'!")
REMOVING = re.compile(r"Removing box '(.+)' \(v(.+)\) with provider '(.*)'\.\.\.")


def installed(cli: VagrantCli, settings: VagrantSettings) -> list[Box]:
    """Every box in the backend's VAGRANT_HOME, whatever its provider (`vagrant box list`)."""
    try:
        result = cli.run("box", "list", timeout=settings.timeouts["status"])
    except VagrantError as exc:
        raise errors.to_broker(exc.kind, exc.message, "vagrant box list") from None
    return [Box(entry.name, entry.provider, entry.version) for entry in records.boxes(result.output)]


def add(cli: VagrantCli, settings: VagrantSettings, name: str, source: str, version: str | None, force: bool) -> Box:
    """`vagrant box add`; the box installed, as Vagrant reports it (a bare box file is version 0)."""
    doing = f"box {name} from {source}"
    _argument(name, "box name", doing)
    where = _source(source, doing)
    args = ["box", "add", "--name", name, "--provider", settings.provider]
    if version:
        args += ["--box-version", _argument(version, "version", doing)]
    if force:
        args.append("--force")
    try:
        result = cli.run(*args, where, timeout=settings.timeouts["box"])
    except VagrantError as exc:
        raise errors.box_failure(exc.kind, exc.message, doing) from None
    found = said(result.output, ADDED)
    if not found:
        raise PermanentError(f"{doing}: Vagrant did not say it added the box: {result.output.text}"[:2000], errors.BOX_MISSING)
    return found[0]


def remove(cli: VagrantCli, settings: VagrantSettings, name: str, version: str | None, force: bool) -> list[Box]:
    """`vagrant box remove` of every version of `name` (or `version`) for the backend's provider."""
    doing = f"box {name}{' ' + version if version else ''} ({settings.provider}) of backend {settings.backend}"
    wanted = [box for box in installed(cli, settings) if box.name == name and box.provider == settings.provider
              and (not version or box.version == version)]
    if not wanted:
        raise PermanentError(f"{doing}: not installed", errors.BOX_MISSING)
    labs = users(settings, name)
    if labs and not force:
        raise PermanentError(f"{doing}: in use by {', '.join(labs)} (--force removes it anyway)", errors.BOX_MISSING)
    args = ["box", "remove", name, "--provider", settings.provider]
    args += ["--box-version", version] if version else ["--all"]
    try:
        result = cli.run(*args, *(["--force"] if force else []), timeout=settings.timeouts["box"])
    except VagrantError as exc:
        raise errors.box_failure(exc.kind, exc.message, doing) from None
    return _check_removed(wanted, said(result.output, REMOVING), doing)


def users(settings: VagrantSettings, name: str) -> list[str]:
    """The labs of the backend whose directory names box `name` ("lab 7 (labdesk-lab-7)")."""
    return [f"lab {lab.lab_id} ({lab.machine})" for lab in all_in(settings.state_dir) if lab.read().get("box") == name]


def said(output: records.Output, pattern: re.Pattern[str]) -> list[Box]:
    """The boxes named by Vagrant's messages matching `pattern` (added, removed), in order."""
    found = [pattern.search(record.data[-1]) for record in output.of("ui") if record.data]
    return [Box(match.group(1), match.group(3), match.group(2)) for match in found if match]


def _check_removed(wanted: list[Box], removed: list[Box], doing: str) -> list[Box]:
    """Every box we meant to remove was: Vagrant asks before removing one that a machine in its index
    uses, which it cannot without a terminal (UIExpectsTTY, an error); this catches it skipping one."""
    kept = [box for box in wanted if box not in removed]
    if kept:
        versions = ", ".join(box.version for box in kept)
        raise PermanentError(f"{doing}: Vagrant kept version {versions}: a machine it knows uses it (--force removes it)",
                             errors.BOX_MISSING)
    return removed


def _source(source: str, doing: str) -> str:
    """What Vagrant is given: a URL as it is, a local file as an absolute path that exists."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in URL_SCHEMES:
        return source
    if "://" in source:
        raise PermanentError(f"{doing}: only local files and {'/'.join(URL_SCHEMES)} URLs are supported", errors.BOX_MISSING)
    path = Path(source).expanduser().absolute()
    if not path.is_file():
        raise PermanentError(f"{doing}: {path}: no such file (give a local box file, a metadata .json or a URL)",
                             errors.BOX_MISSING)
    return str(path)


def _argument(value: str, what: str, doing: str) -> str:
    """Refuse what Vagrant would read as an option (or nothing at all)."""
    if not value.strip() or value.startswith("-") or "\0" in value:
        raise PermanentError(f"{doing}: {what} {value!r} is not valid", errors.BOX_MISSING)
    return value
