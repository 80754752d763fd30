"""The catalogue format: every shipped entry validates, and broken entries are refused with the exact
`<file>: <key>: <reason>` lines an admin sees, every problem of a file at once."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from broker.catalogue import CatalogueError, Entry, load
from broker.images import SHIPPED, validate
from tests.catalogue import ENTRY, make_root, write_entry

FILE = "desktop-images/catalogue/lab.toml"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # messages show paths relative to the working directory
    return make_root(tmp_path)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(CatalogueError) as caught:
        load(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# -- the shipped catalogue -------------------------------------------------------------------------------
SHIPPED_FILES = sorted(SHIPPED.glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=[p.stem for p in SHIPPED_FILES])
def test_every_shipped_entry_validates(path: Path) -> None:
    """A missing artefact (Heat template, environment, Vagrantfile, check) is reported by its path."""
    problems: list[str] = []
    try:
        load(path)
    except CatalogueError as exc:
        problems = exc.problems
    if problems:
        pytest.fail("shipped entry is invalid:\n" + "\n".join(problems), pytrace=False)


def test_the_seed_catalogue_has_the_labs_the_course_teams_need() -> None:
    entries = {entry.id: entry for _, entry in validate()}
    assert {"linux-terminal", "linux-desktop", "networking-lab", "gpu-workstation", "local-desktop"} <= set(entries)
    terminal, desktop = entries["linux-terminal"], entries["linux-desktop"]
    assert [p.protocol for p in terminal.hosts[0].ports] == ["ssh"]
    assert {p.protocol for p in desktop.hosts[0].ports} == {"rdp", "vnc", "ssh"} and desktop.protocol == "rdp"
    network = entries["networking-lab"]
    assert [h.name for h in network.hosts] == ["router", "client-a", "client-b"]
    assert all(h.ports[0].protocol == "ssh" for h in network.hosts)
    assert network.backends.heat is not None and network.backends.heat.template == "heat/networking-lab.yaml"
    gpu = entries["gpu-workstation"]
    assert gpu.resources.gpu == "nvidia-t4" and gpu.backends.names() == ("heat", "libvirt")
    local = entries["local-desktop"]
    assert local.backends.names() == ("local",) and local.protocol == "vnc" and local.title == "Linux desktop (this host)"


def test_the_check_scripts_are_executable_shell() -> None:
    for script in (SHIPPED.parent / "checks").iterdir():
        assert os.access(script, os.X_OK), script
        subprocess.run(["sh", "-n", str(script)], check=True)


def test_a_check_script_runs_for_real(tmp_path: Path) -> None:
    script = str(SHIPPED.parent / "checks" / "hello-file.sh")
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    missing = subprocess.run([script, "no-such-user-here"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stdout == "~/hello.txt is missing or empty.\n"
    (tmp_path / "hello.txt").write_text("hi\n")
    found = subprocess.run([script, "no-such-user-here"], env=env, capture_output=True, text=True)
    assert found.returncode == 0 and found.stdout == "Found ~/hello.txt.\n"


# -- a valid entry -------------------------------------------------------------------------------------
def test_a_valid_entry_reads_into_a_frozen_typed_entry(root: Path) -> None:
    entry = load(write_entry(root, "lab"))
    assert isinstance(entry, Entry) and entry.id == "lab" and entry.protocol == "rdp"
    assert entry.hosts[0].ports[1].port == 22 and entry.resources.gpu is False
    assert entry.backends.names() == ("heat", "libvirt", "vagrant", "local")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.title = "changed"  # type: ignore[misc]


def test_the_normalized_spec_is_json_with_defaults_filled_in(root: Path) -> None:
    spec = load(write_entry(root, "lab")).spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["backends"]["heat"] == {"template": "heat/single-vm.yaml", "environment": "heat/env/lab.yaml"}
    assert spec["checks"] == [{"id": "hello-file", "title": "Create ~/hello.txt", "run": "checks/hello-file.sh",
                               "weight": 2, "host": "main", "timeout": 30, "args": ["learner"],
                               "script": "# test artefact\n"}]  # the script's text is embedded
    assert spec["max_score"] == 2  # the sum of the weights when not stated
    assert spec["defaults"] == {"idle_suspend_after": 900, "reap_after_days": 14}
    assert spec["hosts"] == [{"name": "main", "ports": [{"protocol": "rdp", "port": 3389}, {"protocol": "ssh", "port": 22}]}]


def test_the_digest_follows_the_content_not_the_layout(root: Path) -> None:
    first = load(write_entry(root, "lab")).digest()
    assert load(write_entry(root, "lab", "# a comment\n" + ENTRY.replace("vcpu = 2", "vcpu   =   2"))).digest() == first
    assert load(write_entry(root, "lab", ENTRY.replace("vcpu = 2", "vcpu = 4"))).digest() != first


def test_optional_sections_may_be_left_out(root: Path) -> None:
    minimal = '''id = "lab"
title = "Minimal"
[lab_user]
name = "learner"
[resources]
vcpu = 1
ram_mb = 512
disk_gb = 1
[[hosts]]
name = "main"
ports = [{ protocol = "vnc", port = 5900 }]
[backends.local]
command = "xterm"
'''
    spec = load(write_entry(root, "lab", minimal)).spec()
    assert "max_score" not in spec and "checks" in spec and spec["checks"] == [] and spec["defaults"] == {}
    assert spec["backends"] == {"local": {"command": "xterm"}}


BUILTIN_CHECKS = '''
[[checks]]
id = "notes"
title = "Write ~/notes.txt"
builtin = "file-exists"
path = "~/notes.txt"
hint = "Save the file in your home folder."
timeout = 10

[[checks]]
id = "motd"
title = "Greet in /etc/motd"
builtin = "file-contains"
path = "/etc/motd"
pattern = "^Welcome "

[[checks]]
id = "nginx"
title = "nginx answers"
builtin = "command-succeeds"
command = "curl -fsS http://localhost/ >/dev/null"
args = ["learner", "--verbose"]
'''


def test_built_in_checks_carry_a_generated_script(root: Path) -> None:
    spec = load(write_entry(root, "lab", ENTRY + BUILTIN_CHECKS)).spec()
    script_check, notes, motd, nginx = spec["checks"]
    assert "builtin" not in script_check and script_check["run"] == "checks/hello-file.sh"
    assert {k: v for k, v in notes.items() if k != "script"} == {
        "id": "notes", "title": "Write ~/notes.txt", "weight": 1, "host": "main", "hint": "Save the file in your home folder.",
        "timeout": 10, "args": ["learner"], "builtin": "file-exists", "path": "~/notes.txt",
    }
    assert "run" not in notes and notes["script"].startswith("#!/bin/sh\n")
    assert (motd["pattern"], motd["timeout"]) == ("^Welcome ", 30)
    assert nginx["args"] == ["learner", "--verbose"] and "curl -fsS" in nginx["script"]
    assert spec["max_score"] == 5  # 2 + 1 + 1 + 1


def test_a_changed_check_script_makes_a_new_version(root: Path) -> None:
    """The script's text is part of the normalized entry: editing the file changes the digest."""
    path = write_entry(root, "lab")
    first = load(path).digest()
    assert load(path).digest() == first
    (root / "checks" / "hello-file.sh").write_text("#!/bin/sh\ntest -s ~/hello.txt\n")
    changed = load(path)
    assert changed.digest() != first and changed.checks[0].script == "#!/bin/sh\ntest -s ~/hello.txt\n"


def test_a_check_script_must_be_small_utf8_text(root: Path) -> None:
    path = write_entry(root, "lab")
    (root / "checks" / "hello-file.sh").write_bytes(b"#!/bin/sh\necho \xff\n")
    assert problems_of(path) == [f"{FILE}: checks[0].run: expected a script in UTF-8 text: desktop-images/checks/hello-file.sh"]
    (root / "checks" / "hello-file.sh").write_text("#" * 70_000)
    assert problems_of(path) == [f"{FILE}: checks[0].run: expected a script of at most 65536 bytes, got 70000 bytes"]


# -- rejections, with the exact message ------------------------------------------------------------------
REJECTIONS = {
    "missing artefact": (
        ('template = "heat/single-vm.yaml"', 'template = "heat/nowhere.yaml"'),
        ["backends.heat.template: file not found: desktop-images/heat/nowhere.yaml"],
    ),
    "bad port": (
        ('port = 22 }', 'port = 70000 }'),
        ["hosts[0].ports[1].port: expected a port number 1-65535, got 70000"],
    ),
    "unknown protocol": (
        ('protocol = "rdp"', 'protocol = "http"'),
        ['hosts[0].ports[0].protocol: unknown protocol "http" (expected one of: vnc, rdp, ssh, telnet)'],
    ),
    "unknown key": (
        ("title =", "titel ="),
        ['titel: unknown key (did you mean "title"?)', "title: required key is missing"],
    ),
    "duplicate host name": (
        ("[backends.heat]", '[[hosts]]\nname = "main"\nports = [{ protocol = "ssh", port = 22 }]\n\n[backends.heat]'),
        ['hosts[1].name: duplicate host name "main" (also hosts[0].name)'],
    ),
    "password under lab_user": (
        ('name = "learner"', 'name = "learner"\npassword = "learner"'),
        ["lab_user.password: no passwords or secrets in the catalogue: credentials are injected at boot"],
    ),
    "duplicate port": (
        ('port = 22 }', 'port = 3389 }'),
        ["hosts[0].ports[1].port: duplicate port 3389 (also hosts[0].ports[0].port)"],
    ),
    "path outside the root": (
        ('vagrantfile = "vagrant/Vagrantfile.tpl"', 'vagrantfile = "../etc/passwd"'),
        ["backends.vagrant.vagrantfile: expected a path relative to the catalogue root without '..', got \"../etc/passwd\""],
    ),
    "unknown libvirt option": (
        ('machine = "q35"', 'machine = "i440fx"'),
        ['backends.libvirt.machine: unknown machine "i440fx" (expected one of: q35, pc)'],
    ),
    "wrong type": (
        ("vcpu = 2", 'vcpu = "two"'),
        ['resources.vcpu: expected a whole number 1-512, got "two"'],
    ),
    "check on an unknown host": (
        ('run = "checks/hello-file.sh"', 'run = "checks/hello-file.sh"\nhost = "router"'),
        ['checks[0].host: unknown host "router" (hosts: main)'],
    ),
    "a secret among the heat parameters": (
        ('template = "heat/single-vm.yaml"', 'template = "heat/single-vm.yaml"\nparameters = { flavor = "lab.large", admin_pass = "x" }'),
        ["backends.heat.parameters.admin_pass: no passwords or secrets in the catalogue: credentials are injected at boot"],
    ),
    "heat providers not a list of names": (
        ('template = "heat/single-vm.yaml"', 'template = "heat/single-vm.yaml"\nproviders = "cloud-a"'),
        ['backends.heat.providers: expected a non-empty array of provider names, got "cloud-a"'],
    ),
    "a heat hook for an unknown event": (
        ('template = "heat/single-vm.yaml"', 'template = "heat/single-vm.yaml"\nhooks = { after_suspend = "checks/hello-file.sh" }'),
        ['backends.heat.hooks.after_suspend: unknown key (did you mean "before_suspend"?)'],
    ),
    "a heat hook script that is missing": (
        ('template = "heat/single-vm.yaml"', 'template = "heat/single-vm.yaml"\nhooks = { after_resume = "hooks/clock.sh" }'),
        ["backends.heat.hooks.after_resume: file not found: desktop-images/hooks/clock.sh"],
    ),
    "a top-level key after a table": (
        ('run = "checks/hello-file.sh"', 'run = "checks/hello-file.sh"\nmax_score = 10'),
        ["checks[0].max_score: unknown key (allowed: id, title, weight, host, hint, timeout, args, run, builtin, path, pattern, command)"],
    ),
    # [[checks]]: a script (`run`) or a built-in (`builtin` with what its type takes), never both or neither
    "a check with neither run nor builtin": (
        ('run = "checks/hello-file.sh"', 'hint = "Look again."'),
        ['checks[0].run: required key is missing (or "builtin" for a built-in check)'],
    ),
    "a check with both run and builtin": (
        ('run = "checks/hello-file.sh"', 'run = "checks/hello-file.sh"\nbuiltin = "file-exists"'),
        ['checks[0].builtin: cannot be given together with "run" (a check is a script or a built-in, not both)'],
    ),
    "an unknown built-in check": (
        ('run = "checks/hello-file.sh"', 'builtin = "file-missing"\npath = "~/hello.txt"'),
        ['checks[0].builtin: unknown built-in check "file-missing" (expected one of: file-exists, file-contains, command-succeeds)'],
    ),
    "a built-in check without what its type takes": (
        ('run = "checks/hello-file.sh"', 'builtin = "file-contains"\npath = "~/hello.txt"'),
        ['checks[0].pattern: required by builtin "file-contains"'],
    ),
    "a key the built-in check does not use": (
        ('run = "checks/hello-file.sh"', 'builtin = "file-exists"\npath = "~/hello.txt"\ncommand = "true"'),
        ['checks[0].command: not used by builtin "file-exists" (it takes: path)'],
    ),
    "a built-in key on a script check": (
        ('run = "checks/hello-file.sh"', 'run = "checks/hello-file.sh"\npath = "~/hello.txt"'),
        ['checks[0].path: only for a built-in check (builtin = "file-exists" | "file-contains" | "command-succeeds")'],
    ),
    "a path on two lines": (
        ('run = "checks/hello-file.sh"', 'builtin = "file-exists"\npath = "~/a\\nb"'),
        ['checks[0].path: expected a path on one line, got "~/a\\nb"'],
    ),
    "an empty command": (
        ('run = "checks/hello-file.sh"', 'builtin = "command-succeeds"\ncommand = "  "'),
        ["checks[0].command: expected a command, got an empty string"],
    ),
    "a check timeout out of range": (
        ('run = "checks/hello-file.sh"', 'run = "checks/hello-file.sh"\ntimeout = 601'),
        ["checks[0].timeout: expected seconds 1-600, got 601"],
    ),
    "check args that are not strings": (
        ('run = "checks/hello-file.sh"', 'run = "checks/hello-file.sh"\nargs = ["learner", 2]'),
        ["checks[0].args: expected an array of strings, got an array"],
    ),
    "a check argument the grader would refuse": (
        ('run = "checks/hello-file.sh"', 'run = "checks/hello-file.sh"\nargs = ["learner", "$(id)"]'),
        ['checks[0].args[1]: expected a word of A-Z, a-z, 0-9 and _.,:=@/+-, got "$(id)"'],
    ),
    "an empty hint": (
        ('run = "checks/hello-file.sh"', 'run = "checks/hello-file.sh"\nhint = " "'),
        ["checks[0].hint: expected a hint, got an empty string"],
    ),
}


@pytest.mark.parametrize("case", REJECTIONS, ids=list(REJECTIONS))
def test_a_broken_entry_is_refused_with_the_exact_message(root: Path, case: str) -> None:
    (old, new), reasons = REJECTIONS[case]
    assert old in ENTRY
    path = write_entry(root, "lab", ENTRY.replace(old, new, 1))
    assert problems_of(path) == [f"{FILE}: {reason}" for reason in reasons]


def test_the_id_must_match_the_file_name(root: Path) -> None:
    path = root / "catalogue" / "other.toml"
    path.write_text(ENTRY)
    assert problems_of(path) == ['desktop-images/catalogue/other.toml: id: does not match the file name: expected "other", got "lab"']


def test_at_least_one_host_and_one_backend(root: Path) -> None:
    text = ENTRY.replace('tags = ["linux"]', 'tags = ["linux"]\nhosts = []\nbackends = {}').split("[[hosts]]")[0]
    assert problems_of(write_entry(root, "lab", text)) == [
        f"{FILE}: hosts: at least 1 required, got none",
        f"{FILE}: backends: at least one backend is required (heat, libvirt, vagrant, local)",
    ]


def test_every_problem_of_a_file_is_reported_at_once(root: Path) -> None:
    text = (ENTRY.replace("port = 22 }", "port = 0 }").replace('protocol = "rdp"', 'protocol = "x11"')
            .replace('base_image = "debian-lab-desktop.qcow2"', 'base_image = "pool/../x"')
            .replace('environment = "heat/env/lab.yaml"', 'environment = "heat/env/missing.yaml"')
            .replace("weight = 2", "weight = -1").replace("ram_mb = 2048\n", ""))
    assert problems_of(write_entry(root, "lab", text)) == [f"{FILE}: {p}" for p in (
        "resources.ram_mb: required key is missing",
        'hosts[0].ports[0].protocol: unknown protocol "x11" (expected one of: vnc, rdp, ssh, telnet)',
        "hosts[0].ports[1].port: expected a port number 1-65535, got 0",
        "backends.heat.environment: file not found: desktop-images/heat/env/missing.yaml",
        'backends.libvirt.base_image: expected a volume name in the host\'s image pool, got "pool/../x"',
        "checks[0].weight: expected a positive number, got -1",
    )]


def test_a_file_that_is_not_toml(root: Path) -> None:
    path = write_entry(root, "lab", "id = \n")
    assert problems_of(path) == [f"{FILE}: (toml): not valid TOML: Invalid value (at line 1, column 6)"]


def test_validating_a_folder_reports_every_file_and_duplicate_ids(root: Path, tmp_path: Path) -> None:
    write_entry(root, "good")
    write_entry(root, "bad", ENTRY.replace("vcpu = 2", "vcpu = 0"))
    again = write_entry(make_root(tmp_path / "other"), "good")
    with pytest.raises(CatalogueError) as caught:
        validate([root / "catalogue", again])
    assert caught.value.problems == [
        "desktop-images/catalogue/bad.toml: resources.vcpu: expected a whole number 1-512, got 0",
        'other/desktop-images/catalogue/good.toml: id: duplicate id "good" (also desktop-images/catalogue/good.toml)',
    ]
