"""Reading `vagrant --machine-readable` output: comma-separated records, and what they say.

Each record is one line `timestamp,target,type,data...`. Vagrant writes a comma inside a value as
`%!(VAGRANT_COMMA)` and a newline as the two characters `\\n`, so splitting on commas is safe once those
are put back. Lines that are not records (Vagrant's early failures, such as a Vagrantfile syntax error, are
plain text even with --machine-readable; `ssh-config` also prints its text plainly) are kept as `text`.

Pure functions only: the recorded outputs of tests/connectors/vagrant/recorded/ exercise every one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

COMMA = "%!(VAGRANT_COMMA)"
T = TypeVar("T")
RECORD = re.compile(r"(\d+),([^,]*),([^,]+)(?:,(.*))?\Z")


@dataclass(frozen=True)
class Record:
    """One machine-readable line; `data` holds the values after the type, unescaped."""

    timestamp: int
    target: str
    kind: str
    data: tuple[str, ...] = ()

    @property
    def value(self) -> str:
        return self.data[0] if self.data else ""


@dataclass(frozen=True)
class Output:
    """A command's records plus whatever else it printed (plain text lines, in order)."""

    records: tuple[Record, ...]
    text: str = ""

    def of(self, kind: str) -> list[Record]:
        return [record for record in self.records if record.kind == kind]


@dataclass(frozen=True)
class SshConfig:
    """Where Vagrant's own SSH goes for one machine (from `vagrant ssh-config`)."""

    host: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class GlobalEntry:
    """One machine of `vagrant global-status`: its id, provider, state and project directory."""

    id: str
    provider: str = ""
    state: str = ""
    directory: str = ""


@dataclass(frozen=True)
class BoxEntry:
    """One installed box (`vagrant box list`)."""

    name: str
    provider: str
    version: str


def unescape(value: str) -> str:
    return value.replace(COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


def parse(output: str) -> Output:
    """Split `output` into records and the other lines."""
    records: list[Record] = []
    other: list[str] = []
    for line in output.splitlines():
        match = RECORD.match(line)
        if match is None:
            other.append(line)
            continue
        stamp, target, kind, rest = match.groups()
        data = tuple(unescape(part) for part in rest.split(",")) if rest is not None else ()
        records.append(Record(int(stamp), target, kind, data))
    return Output(tuple(records), "\n".join(other).strip())


def error_exit(output: Output) -> tuple[str, str] | None:
    """(error class, message) of the `error-exit` record, e.g. ("Vagrant::Errors::BoxNotFound", "...")."""
    for record in output.of("error-exit"):
        return record.value, ",".join(record.data[1:]).strip()
    return None


def states(output: Output) -> dict[str, str]:
    """Machine name → state id (`running`, `paused`, `shutoff`, `not_created`, ...) from `vagrant status`."""
    return {record.target: record.value for record in output.of("state") if record.target}


def for_machine(found: dict[str, T], machine: str) -> T | None:
    """The entry of `machine`, or the only entry when the Vagrantfile names its one machine otherwise."""
    if machine in found:
        return found[machine]
    return next(iter(found.values())) if len(found) == 1 else None


def ssh_configs(output: Output) -> dict[str, SshConfig]:
    """Machine name → its SSH settings, from the `ssh-config` records of `vagrant ssh-config`."""
    return {record.target: _ssh_config(record.value) for record in output.of("ssh-config")}


def _ssh_config(text: str) -> SshConfig:
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and key != "Host":
            options.setdefault(key.lower(), []).append(value.strip().strip('"'))
    return SshConfig(
        host=options.get("hostname", [""])[0],
        port=int(options.get("port", ["22"])[0]),
        user=options.get("user", [""])[0],
        identity_files=tuple(options.get("identityfile", [])),
    )


def global_status(output: Output) -> list[GlobalEntry]:
    """The machines of `vagrant global-status`: each starts with a `machine-id` record."""
    entries: list[dict[str, str]] = []
    fields = {"provider-name": "provider", "state": "state", "machine-home": "directory"}
    for record in output.records:
        if record.kind == "machine-id":
            entries.append({"id": record.value})
        elif record.kind in fields and entries:
            entries[-1][fields[record.kind]] = record.value
    return [GlobalEntry(**entry) for entry in entries]


def boxes(output: Output) -> list[BoxEntry]:
    """The installed boxes of `vagrant box list`: name, provider and version records, in threes."""
    found: list[BoxEntry] = []
    name = provider = ""
    for record in output.records:
        if record.kind == "box-name":
            name, provider = record.value, ""
        elif record.kind == "box-provider":
            provider = record.value
        elif record.kind == "box-version" and name:
            found.append(BoxEntry(name, provider, record.value))
            name = ""
    return found
