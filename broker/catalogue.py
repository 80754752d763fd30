"""The image catalogue format: one TOML file per lab image, read into a typed, frozen `Entry`.

`load(path)` returns the entry or raises `CatalogueError` listing every problem of the file, one per line,
each as `<file>: <key>: <reason>` (`hosts[0].ports[1].port: expected a port number 1-65535, got 70000`).
Validation is hand-written over `tomllib`: one short function per section, unknown keys are errors (a
typo must not pass silently), and every artefact path must name a file under the catalogue root, the
folder above the one holding the entry (`desktop-images/` for `desktop-images/catalogue/x.toml`).
`desktop-images/README.md` documents the format key by key.

`Entry.spec()` is the normalized entry as JSON-able data (paths stay relative to the root): it is what
`Image.spec` stores, what connectors receive as `LabSpec.params`, and what the import's digest is taken of.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from broker.checks import BUILTINS, DEFAULT_TIMEOUT, MAX_TIMEOUT, builtin_script
from broker.errors import LabDeskError

PROTOCOLS = ("vnc", "rdp", "ssh", "telnet")
BACKENDS = ("heat", "libvirt", "vagrant", "local")
MACHINES = ("q35", "pc")
VIDEOS = ("virtio", "qxl", "vga", "bochs")
GRAPHICS = ("vnc", "spice", "none")

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{1,62}\Z")
HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}\Z")
TAG = re.compile(r"[a-z0-9][a-z0-9+.-]{0,31}\Z")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")
GPU_MODEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")
BOX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*\Z")
CHECK_ARG = re.compile(r"[A-Za-z0-9_.,:=@/+-]+\Z")
SECRET_WORDS = re.compile(r"pass|secret|token|private", re.IGNORECASE)


class CatalogueError(LabDeskError):
    """One or more entries are invalid; `problems` holds one `<file>: <key>: <reason>` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- the entry --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Port:
    protocol: str
    port: int


@dataclass(frozen=True)
class Host:
    name: str
    ports: tuple[Port, ...]  # the first is the host's default protocol


@dataclass(frozen=True)
class LabUser:
    name: str


@dataclass(frozen=True)
class Resources:
    vcpu: int
    ram_mb: int
    disk_gb: int
    gpu: bool | str = False  # or a model name such as "nvidia-t4"


@dataclass(frozen=True)
class Defaults:
    idle_suspend_after: int | None = None  # seconds; None: the site's setting
    reap_after_days: int | None = None


@dataclass(frozen=True)
class HeatBackend:
    template: str
    environment: str | None = None
    parameters: dict[str, Any] | None = None  # template parameters for this image (a bigger flavor)
    providers: tuple[str, ...] | None = None  # the backend's providers to use, in order
    hooks: dict[str, str] | None = None  # event (before_suspend, after_resume, before_delete) -> script


@dataclass(frozen=True)
class LibvirtBackend:
    base_image: str | None = None  # a disk image volume; or none, for a kernel + initrd guest
    machine: str = "q35"
    video: str = "virtio"
    graphics: str = "vnc"
    kernel: str | None = None  # direct kernel boot: volumes in the host's image pool
    initrd: str | None = None
    cmdline: str | None = None
    cloud_init: bool = False  # normalized: true by default when there is a base image
    guest_agent: bool = True
    mac: str | None = None  # a fixed MAC for images whose network set-up keys on it (user-mode NIC only)


@dataclass(frozen=True)
class VagrantBackend:
    """A Vagrant box and the Vagrantfile template of the lab (docs/vagrant.md), hosted or taken away."""

    box: str
    vagrantfile: str
    box_version: str | None = None  # a version constraint ("1.2.0", ">= 1.2"); None: the newest installed
    box_url: str | None = None  # where a learner taking the lab away gets the box (named in the bundle)
    work_folder: str | None = None  # an absolute folder in the machine the take-away bundle carries along
    credentials: str | None = None  # a script setting the lab's credentials at first boot (default: shipped)
    template: str = ""  # the Vagrantfile template's text, embedded at load (a new template is a new version)
    credentials_script: str = ""  # the credentials script's text, embedded at load


@dataclass(frozen=True)
class LocalBackend:
    command: str


@dataclass(frozen=True)
class Backends:
    heat: HeatBackend | None = None
    libvirt: LibvirtBackend | None = None
    vagrant: VagrantBackend | None = None
    local: LocalBackend | None = None

    def names(self) -> tuple[str, ...]:
        return tuple(name for name in BACKENDS if getattr(self, name) is not None)


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    run: str | None = None  # a script under the catalogue root; or `builtin`, never both
    weight: float = 1
    host: str = ""  # the host it runs on; normalized to the first host when left out
    hint: str | None = None  # shown to the learner when the check fails
    timeout: int = DEFAULT_TIMEOUT  # seconds
    args: tuple[str, ...] = ()  # the script's arguments; normalized to (lab_user.name,) when left out
    builtin: str | None = None  # a built-in check type (broker.checks.BUILTINS) ...
    path: str | None = None  # ... and what it takes
    pattern: str | None = None
    command: str | None = None
    script: str = ""  # the script's text, embedded at load: the version carries its exact checks


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    lab_user: LabUser
    resources: Resources
    hosts: tuple[Host, ...]
    backends: Backends
    description: str = ""
    tags: tuple[str, ...] = ()
    instructions: str = ""
    defaults: Defaults = field(default_factory=Defaults)
    checks: tuple[Check, ...] = ()
    max_score: float | None = None  # None: the sum of the check weights (no checks: not graded)

    @property
    def protocol(self) -> str:
        """The default protocol: the first port of the first host."""
        return self.hosts[0].ports[0].protocol

    def spec(self) -> dict[str, Any]:
        """The normalized entry as JSON-able data; keys that were left out are absent (not null)."""
        data = _jsonable(self)
        if self.checks and self.max_score is None:
            data["max_score"] = _number_value(sum(check.weight for check in self.checks))
        return data

    def digest(self) -> str:
        text = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(v) for k, v in vars(value).items() if v is not None}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return _number_value(value) if isinstance(value, float) else value


def _number_value(number: float) -> float | int:
    return int(number) if float(number).is_integer() else number


# -- reading one file -------------------------------------------------------------------------------------
def shown(path: Path) -> str:
    """A path as messages show it: relative to the working directory when under it."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def root_of(path: Path) -> Path:
    """The catalogue root an entry's artefact paths are relative to: the folder above its own."""
    return Path(os.path.abspath(path)).parent.parent


def load(path: Path, root: Path | None = None) -> Entry:
    """Read and validate one entry; raises CatalogueError with every problem of the file."""
    reader = _Reader(shown(path), root or root_of(path))
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueError([f"{reader.file}: (file): cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError([f"{reader.file}: (toml): not valid TOML: {exc}"]) from None
    entry = _entry(reader, raw, Path(path).stem)
    if reader.problems or entry is None:
        raise CatalogueError(reader.problems)
    return entry


class _Reader:
    """Collects the problems of one file; every check returns None for a value it rejects."""

    def __init__(self, file: str, root: Path) -> None:
        self.file, self.root, self.problems = file, root, []

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(f"{self.file}: {key}: {reason}")

    def table(self, raw: Any, key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """A table with exactly these keys allowed; reports unknown and missing ones."""
        if not isinstance(raw, dict):
            self.problem(key, f"expected a table, got {_show(raw)}")
            return None
        allowed = required + optional
        for name in raw:
            if name not in allowed:
                self.problem(_join(key, name), _unknown(name, allowed))
        for name in required:
            if name not in raw:
                self.problem(_join(key, name), "required key is missing")
        return raw

    def text(self, raw: Any, key: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        if not isinstance(raw, str):
            self.problem(key, f"expected a string, got {_show(raw)}")
            return None
        if pattern is not None and not pattern.match(raw):
            self.problem(key, f"expected {what}, got {_show(raw)}")
            return None
        if pattern is None and not raw.strip() and what:
            self.problem(key, f"expected {what}, got an empty string")
            return None
        return raw.strip() if pattern is None else raw

    def whole(self, raw: Any, key: str, low: int, high: int, what: str = "a whole number") -> int | None:
        if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
            self.problem(key, f"expected {what} {low}-{high}, got {_show(raw)}")
            return None
        return raw

    def positive(self, raw: Any, key: str) -> float | None:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw < 1e6:
            self.problem(key, f"expected a positive number, got {_show(raw)}")
            return None
        return float(raw)

    def choice(self, raw: Any, key: str, choices: tuple[str, ...], what: str) -> str | None:
        if raw not in choices:
            self.problem(key, f"unknown {what} {_show(raw)} (expected one of: {', '.join(choices)})")
            return None
        return str(raw)

    def artefact(self, raw: Any, key: str) -> str | None:
        """A relative POSIX path to a file under the catalogue root."""
        path = self.text(raw, key)
        if path is None:
            return None
        parts = PurePosixPath(path).parts
        if not path or path.startswith("/") or "\\" in path or ".." in parts:
            self.problem(key, f"expected a path relative to the catalogue root without '..', got {_show(raw)}")
            return None
        if not (self.root / path).is_file():
            self.problem(key, f"file not found: {shown(self.root / path)}")
            return None
        return path

    def items(self, raw: Any, key: str, read: Callable[[Any, str], Any], at_least: int = 0) -> tuple[Any, ...] | None:
        """An array of tables, each read by `read(item, key[i])`; None if any item is bad."""
        if not isinstance(raw, list):
            self.problem(key, f"expected an array, got {_show(raw)}")
            return None
        if len(raw) < at_least:
            self.problem(key, f"at least {at_least} required, got none")
            return None
        read_items = [read(item, f"{key}[{i}]") for i, item in enumerate(raw)]
        return None if any(item is None for item in read_items) else tuple(read_items)

    def unique(self, values: list[tuple[Any, str]], what: str) -> bool:
        """Report each (value, key) whose value an earlier one already had."""
        seen: dict[Any, str] = {}
        for value, key in values:
            if value in seen:
                self.problem(key, f"duplicate {what} {_show(value)} (also {seen[value]})")
            else:
                seen[value] = key
        return len(seen) == len(values)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown(name: str, allowed: tuple[str, ...]) -> str:
    if SECRET_WORDS.search(name):
        return "no passwords or secrets in the catalogue: credentials are injected at boot"
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return f"unknown key (allowed: {', '.join(allowed)})"


# -- the sections, one function each --------------------------------------------------------------------
TOP_REQUIRED = ("id", "title", "lab_user", "resources", "hosts", "backends")
TOP_OPTIONAL = ("description", "tags", "instructions", "defaults", "checks", "max_score")


def _entry(r: _Reader, raw: dict[str, Any], file_stem: str) -> Entry | None:
    r.table(raw, "", TOP_REQUIRED, TOP_OPTIONAL)
    missing = object()
    got = {name: raw.get(name, missing) for name in TOP_REQUIRED + TOP_OPTIONAL}
    read = lambda name, fn: None if got[name] is missing else fn(r, got[name])  # noqa: E731
    values = {
        "id": read("id", lambda r, v: _id(r, v, file_stem)),
        "title": read("title", lambda r, v: r.text(v, "title", what="a title")),
        "lab_user": read("lab_user", _lab_user),
        "resources": read("resources", _resources),
        "hosts": read("hosts", _hosts),
        "backends": read("backends", _backends),
    }
    optional = {
        "description": read("description", lambda r, v: r.text(v, "description")),
        "tags": read("tags", _tags),
        "instructions": read("instructions", lambda r, v: r.text(v, "instructions")),
        "defaults": read("defaults", _defaults),
        "checks": read("checks", _checks),
        "max_score": read("max_score", lambda r, v: r.positive(v, "max_score")),
    }
    if optional["checks"]:
        optional["checks"] = _finish_checks(r, optional["checks"], values["hosts"], values["lab_user"])
    if r.problems or any(v is None for v in values.values()):
        return None
    return Entry(**values, **{k: v for k, v in optional.items() if v is not None})


def _id(r: _Reader, raw: Any, file_stem: str) -> str | None:
    slug = r.text(raw, "id", SLUG, "a slug of a-z, 0-9 and '-' (2-63 characters, not starting with '-')")
    if slug is not None and slug != file_stem:
        r.problem("id", f'does not match the file name: expected "{file_stem}", got "{slug}"')
        return None
    return slug


def _tags(r: _Reader, raw: Any) -> tuple[str, ...] | None:
    if not isinstance(raw, list):
        r.problem("tags", f"expected an array of strings, got {_show(raw)}")
        return None
    tags = [r.text(tag, f"tags[{i}]", TAG, "a lower-case tag") for i, tag in enumerate(raw)]
    return None if None in tags else tuple(tags)  # type: ignore[arg-type]


def _lab_user(r: _Reader, raw: Any) -> LabUser | None:
    table = r.table(raw, "lab_user", ("name",))
    if table is None or "name" not in table:
        return None
    name = r.text(table["name"], "lab_user.name", USER_NAME, "a Unix user name")
    return LabUser(name) if name else None


def _resources(r: _Reader, raw: Any) -> Resources | None:
    table = r.table(raw, "resources", ("vcpu", "ram_mb", "disk_gb"), ("gpu",))
    if table is None:
        return None
    limits = {"vcpu": (1, 512), "ram_mb": (128, 4_194_304), "disk_gb": (1, 65_536)}
    numbers = {k: r.whole(table[k], f"resources.{k}", *limits[k]) for k in limits if k in table}
    gpu = _gpu(r, table.get("gpu", False))
    if len(numbers) < 3 or None in numbers.values() or gpu is None:
        return None
    return Resources(**numbers, gpu=gpu)  # type: ignore[arg-type]


def _gpu(r: _Reader, raw: Any) -> bool | str | None:
    if isinstance(raw, bool):
        return raw
    return r.text(raw, "resources.gpu", GPU_MODEL, 'true, false or a lower-case GPU model such as "nvidia-t4"')


def _defaults(r: _Reader, raw: Any) -> Defaults | None:
    table = r.table(raw, "defaults", (), ("idle_suspend_after", "reap_after_days"))
    if table is None:
        return None
    idle = table.get("idle_suspend_after")
    reap = table.get("reap_after_days")
    idle_ok = idle is None or r.whole(idle, "defaults.idle_suspend_after", 60, 604_800, "seconds") is not None
    reap_ok = reap is None or r.whole(reap, "defaults.reap_after_days", 1, 3650, "days") is not None
    return Defaults(idle, reap) if idle_ok and reap_ok else None


def _hosts(r: _Reader, raw: Any) -> tuple[Host, ...] | None:
    hosts = r.items(raw, "hosts", lambda item, key: _host(r, item, key), at_least=1)
    if hosts is None:
        return None
    names_unique = r.unique([(h.name, f"hosts[{i}].name") for i, h in enumerate(hosts)], "host name")
    return hosts if names_unique else None


def _host(r: _Reader, raw: Any, key: str) -> Host | None:
    table = r.table(raw, key, ("name", "ports"))
    if table is None or "name" not in table or "ports" not in table:
        return None
    name = r.text(table["name"], f"{key}.name", HOST_NAME, "a host name of a-z, 0-9 and '-'")
    ports = r.items(table["ports"], f"{key}.ports", lambda item, k: _port(r, item, k), at_least=1)
    if ports is None or name is None:
        return None
    numbers = [(p.port, f"{key}.ports[{i}].port") for i, p in enumerate(ports)]
    return Host(name, ports) if r.unique(numbers, "port") else None


def _port(r: _Reader, raw: Any, key: str) -> Port | None:
    table = r.table(raw, key, ("protocol", "port"))
    if table is None or "protocol" not in table or "port" not in table:
        return None
    protocol = r.choice(table["protocol"], f"{key}.protocol", PROTOCOLS, "protocol")
    number = r.whole(table["port"], f"{key}.port", 1, 65535, "a port number")
    return Port(protocol, number) if protocol and number else None


def _backends(r: _Reader, raw: Any) -> Backends | None:
    table = r.table(raw, "backends", (), BACKENDS)
    if table is None:
        return None
    readers = {"heat": _heat, "libvirt": _libvirt, "vagrant": _vagrant, "local": _local}
    found = {name: readers[name](r, table[name]) for name in BACKENDS if name in table}
    if not found:
        r.problem("backends", f"at least one backend is required ({', '.join(BACKENDS)})")
        return None
    return None if None in found.values() else Backends(**found)  # type: ignore[arg-type]


HEAT_HOOKS = ("before_suspend", "after_resume", "before_delete")


def _heat(r: _Reader, raw: Any) -> HeatBackend | None:
    table = r.table(raw, "backends.heat", ("template",), ("environment", "parameters", "providers", "hooks"))
    if table is None or "template" not in table:
        return None
    template = r.artefact(table["template"], "backends.heat.template")
    environment = r.artefact(table["environment"], "backends.heat.environment") if "environment" in table else None
    parameters = _heat_parameters(r, table["parameters"]) if "parameters" in table else None
    providers = _heat_providers(r, table["providers"]) if "providers" in table else None
    hooks = _heat_hooks(r, table["hooks"]) if "hooks" in table else None
    given = [("environment", environment), ("parameters", parameters), ("providers", providers), ("hooks", hooks)]
    if template is None or any(name in table and value is None for name, value in given):
        return None
    return HeatBackend(template, environment, parameters, providers, hooks)


def _heat_parameters(r: _Reader, raw: Any) -> dict[str, Any] | None:
    key = "backends.heat.parameters"
    if not isinstance(raw, dict):
        r.problem(key, f"expected a table of template parameters, got {_show(raw)}")
        return None
    secret = [name for name in raw if SECRET_WORDS.search(name)]
    for name in secret:
        r.problem(f"{key}.{name}", "no passwords or secrets in the catalogue: credentials are injected at boot")
    return None if secret else dict(raw)


def _heat_providers(r: _Reader, raw: Any) -> tuple[str, ...] | None:
    key = "backends.heat.providers"
    if not isinstance(raw, list) or not raw or not all(isinstance(name, str) and name for name in raw):
        r.problem(key, f"expected a non-empty array of provider names, got {_show(raw)}")
        return None
    return tuple(raw) if r.unique([(name, f"{key}[{i}]") for i, name in enumerate(raw)], "provider") else None


def _heat_hooks(r: _Reader, raw: Any) -> dict[str, str] | None:
    table = r.table(raw, "backends.heat.hooks", (), HEAT_HOOKS)
    if table is None or not set(table) <= set(HEAT_HOOKS):
        return None
    scripts = {event: r.artefact(path, f"backends.heat.hooks.{event}") for event, path in table.items()}
    return None if None in scripts.values() else scripts  # type: ignore[return-value]


LIBVIRT_OPTIONS = (
    "base_image", "machine", "video", "graphics", "kernel", "initrd", "cmdline", "cloud_init", "guest_agent", "mac",
)
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
LIBVIRT_CHOICES = (("machine", MACHINES), ("video", VIDEOS), ("graphics", GRAPHICS))
VOLUME = "a volume name in the host's image pool"


def _libvirt(r: _Reader, raw: Any) -> LibvirtBackend | None:
    table = r.table(raw, "backends.libvirt", (), LIBVIRT_OPTIONS)
    if table is None:
        return None
    key = "backends.libvirt"
    volumes = {
        name: r.text(table[name], f"{key}.{name}", POOL_NAME, VOLUME) for name in ("base_image", "kernel", "initrd")
        if name in table
    }
    options: dict[str, Any] = {
        name: r.choice(table[name], f"{key}.{name}", choices, name.rstrip("s"))
        for name, choices in LIBVIRT_CHOICES if name in table
    }
    if "cmdline" in table:
        options["cmdline"] = r.text(table["cmdline"], f"{key}.cmdline", what="a kernel command line")
    if "mac" in table:
        options["mac"] = r.text(table["mac"], f"{key}.mac", MAC, 'a lower-case MAC address such as "52:54:00:ab:cd:99"')
    flags = {name: _flag(r, table[name], f"{key}.{name}") for name in ("cloud_init", "guest_agent") if name in table}
    if not _libvirt_boot(r, table):
        return None
    if None in volumes.values() or None in options.values() or None in flags.values():
        return None
    flags.setdefault("cloud_init", "base_image" in table)
    return LibvirtBackend(**volumes, **options, **flags)


def _libvirt_boot(r: _Reader, table: dict[str, Any]) -> bool:
    """A guest boots from a disk image or a kernel; initrd and cmdline belong to a kernel."""
    if "base_image" not in table and "kernel" not in table:
        r.problem("backends.libvirt", "needs base_image (a disk image) or kernel (direct kernel boot), or both")
        return False
    alone = [name for name in ("initrd", "cmdline") if name in table and "kernel" not in table]
    for name in alone:
        r.problem(f"backends.libvirt.{name}", "only with kernel (direct kernel boot)")
    return not alone


def _flag(r: _Reader, raw: Any, key: str) -> bool | None:
    if not isinstance(raw, bool):
        r.problem(key, f"expected true or false, got {_show(raw)}")
        return None
    return raw


VAGRANT_OPTIONS = ("box_version", "box_url", "work_folder", "credentials")
BOX_VERSION = re.compile(r"[0-9A-Za-z.<>=~!, -]+\Z")
BOX_URL = re.compile(r"(https?|file)://\S+\Z")
ABSOLUTE_FOLDER = re.compile(r"/[^\0\n]*\Z")


def _vagrant(r: _Reader, raw: Any) -> VagrantBackend | None:
    key = "backends.vagrant"
    table = r.table(raw, key, ("box", "vagrantfile"), VAGRANT_OPTIONS)
    if table is None or "box" not in table or "vagrantfile" not in table:
        return None
    box = r.text(table["box"], f"{key}.box", BOX, 'a box name such as "labdesk/debian-lab-desktop"')
    vagrantfile = r.artefact(table["vagrantfile"], f"{key}.vagrantfile")
    template = _script_text(r, vagrantfile, f"{key}.vagrantfile") if vagrantfile else None
    patterns = {"box_version": (BOX_VERSION, 'a version or constraint such as "1.2.0" or ">= 1.2"'),
                "box_url": (BOX_URL, "an http(s):// or file:// URL"),
                "work_folder": (ABSOLUTE_FOLDER, 'an absolute folder such as "/home/learner/work"')}
    options = {name: r.text(table[name], f"{key}.{name}", pattern, what) for name, (pattern, what) in patterns.items() if name in table}
    credentials = r.artefact(table["credentials"], f"{key}.credentials") if "credentials" in table else None
    script = _script_text(r, credentials, f"{key}.credentials") if credentials else ""
    if not (box and vagrantfile and template) or None in options.values() or script is None:
        return None
    if "credentials" in table and not credentials:
        return None
    return VagrantBackend(box, vagrantfile, credentials=credentials, template=template, credentials_script=script, **options)


def _local(r: _Reader, raw: Any) -> LocalBackend | None:
    table = r.table(raw, "backends.local", ("command",))
    if table is None or "command" not in table:
        return None
    command = r.text(table["command"], "backends.local.command", what="a command")
    return LocalBackend(command) if command else None


def _checks(r: _Reader, raw: Any) -> tuple[Check, ...] | None:
    checks = r.items(raw, "checks", lambda item, key: _check(r, item, key))
    if checks is None:
        return None
    return checks if r.unique([(c.id, f"checks[{i}].id") for i, c in enumerate(checks)], "check id") else None


CHECK_OPTIONAL = ("weight", "host", "hint", "timeout", "args", "run", "builtin", "path", "pattern", "command")
BUILTIN_KEYS = ("path", "pattern", "command")
SCRIPT_LIMIT = 64 * 1024  # bytes of an embedded check script


def _check(r: _Reader, raw: Any, key: str) -> Check | None:
    table = r.table(raw, key, ("id", "title"), CHECK_OPTIONAL)
    if table is None or any(name not in table for name in ("id", "title")):
        return None
    check_id = r.text(table["id"], f"{key}.id", SLUG, "a slug of a-z, 0-9 and '-'")
    title = r.text(table["title"], f"{key}.title", what="a title")
    kind = _check_kind(r, table, key)
    weight = r.positive(table["weight"], f"{key}.weight") if "weight" in table else 1.0
    host = r.text(table["host"], f"{key}.host", HOST_NAME, "a host name") if "host" in table else ""
    hint = r.text(table["hint"], f"{key}.hint", what="a hint") if "hint" in table else ""
    timeout = r.whole(table["timeout"], f"{key}.timeout", 1, MAX_TIMEOUT, "seconds") if "timeout" in table else DEFAULT_TIMEOUT
    args = _check_args(r, table["args"], f"{key}.args") if "args" in table else ()
    if not (check_id and title and kind and weight and timeout) or host is None or hint is None or args is None:
        return None
    return Check(check_id, title, weight=weight, host=host, hint=hint or None, timeout=timeout, args=args, **kind)


def _check_kind(r: _Reader, table: dict[str, Any], key: str) -> dict[str, str] | None:
    """Exactly one of `run` (a script file, read into `script`) and `builtin` (with the keys its type
    takes; the script is generated once the lab user is known, in `_finish_checks`)."""
    if "run" in table and "builtin" in table:
        r.problem(f"{key}.builtin", 'cannot be given together with "run" (a check is a script or a built-in, not both)')
        return None
    if "run" not in table and "builtin" not in table:
        r.problem(f"{key}.run", 'required key is missing (or "builtin" for a built-in check)')
        return None
    if "run" in table:
        for name in BUILTIN_KEYS:
            if name in table:
                r.problem(f"{key}.{name}", f'only for a built-in check (builtin = {" | ".join(map(_show, BUILTINS))})')
        run = r.artefact(table["run"], f"{key}.run")
        script = _script_text(r, run, f"{key}.run") if run else None
        if script is None or any(name in table for name in BUILTIN_KEYS):
            return None
        return {"run": run, "script": script}  # type: ignore[dict-item]
    builtin = r.choice(table["builtin"], f"{key}.builtin", tuple(BUILTINS), "built-in check")
    if builtin is None:
        return None
    takes = BUILTINS[builtin]
    values: dict[str, str] = {"builtin": builtin}
    for name in BUILTIN_KEYS:
        if name in takes and name not in table:
            r.problem(f"{key}.{name}", f"required by builtin {_show(builtin)}")
        elif name not in takes and name in table:
            r.problem(f"{key}.{name}", f"not used by builtin {_show(builtin)} (it takes: {', '.join(takes)})")
        elif name in table:
            value = r.text(table[name], f"{key}.{name}", what=f"a {name}")
            if value is not None and name != "command" and ("\n" in value or "\0" in value):
                r.problem(f"{key}.{name}", f"expected a {name} on one line, got {_show(value)}")
                value = None
            if value is not None:
                values[name] = table[name] if name == "pattern" else value  # a pattern's spaces count
    return values if len(values) == 1 + len(takes) and set(values) - {"builtin"} <= set(takes) else None


def _script_text(r: _Reader, path: str, key: str) -> str | None:
    """The text of a check script, embedded in the spec (a changed script makes a new version)."""
    data = (r.root / path).read_bytes()
    if len(data) > SCRIPT_LIMIT:
        r.problem(key, f"expected a script of at most {SCRIPT_LIMIT} bytes, got {len(data)} bytes")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        r.problem(key, f"expected a script in UTF-8 text: {shown(r.root / path)}")
        return None


def _check_args(r: _Reader, raw: Any, key: str) -> tuple[str, ...] | None:
    """Words the grader's `grader-run` accepts (it refuses anything else, as a shell would misread it)."""
    if not isinstance(raw, list) or not all(isinstance(arg, str) for arg in raw):
        r.problem(key, f"expected an array of strings, got {_show(raw)}")
        return None
    for i, arg in enumerate(raw):
        if not CHECK_ARG.match(arg):
            r.problem(f"{key}[{i}]", f"expected a word of A-Z, a-z, 0-9 and _.,:=@/+-, got {_show(arg)}")
            return None
    return tuple(raw)


def _finish_checks(r: _Reader, checks: tuple[Check, ...], hosts: tuple[Host, ...] | None, lab_user: LabUser | None) -> tuple[Check, ...]:
    """Each check's host must be one of the entry's; a check without one runs on the first host. Once the
    lab user is known: `args` default to its name, and built-in checks get their generated script."""
    if hosts:
        names = [host.name for host in hosts]
        for i, check in enumerate(checks):
            if check.host and check.host not in names:
                r.problem(f"checks[{i}].host", f"unknown host \"{check.host}\" (hosts: {', '.join(names)})")
        checks = tuple(replace(check, host=check.host or names[0]) for check in checks)
    if lab_user is None:
        return checks
    return tuple(
        replace(
            check,
            args=check.args or (lab_user.name,),
            script=check.script or builtin_script(
                check.builtin or "", lab_user.name, path=check.path or "", pattern=check.pattern or "", command=check.command or ""
            ),
        )
        for check in checks
    )
