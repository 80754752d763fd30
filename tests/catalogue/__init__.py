"""Catalogue tests: a small catalogue root built in a temporary folder, so the tests do not depend on
the shipped artefacts (those are checked by `test_schema.test_every_shipped_entry_validates`)."""

from __future__ import annotations

from pathlib import Path

ARTEFACTS = ("heat/single-vm.yaml", "heat/env/lab.yaml", "vagrant/Vagrantfile.tpl", "checks/hello-file.sh")

# A valid entry with every section; tests break it one key at a time with str.replace.
ENTRY = '''
id = "lab"
title = "A lab"
description = "For tests."
tags = ["linux"]
instructions = """Do **this**."""

[lab_user]
name = "learner"

[resources]
vcpu = 2
ram_mb = 2048
disk_gb = 10
gpu = false

[defaults]
idle_suspend_after = 900
reap_after_days = 14

[[hosts]]
name = "main"
ports = [{ protocol = "rdp", port = 3389 }, { protocol = "ssh", port = 22 }]

[backends.heat]
template = "heat/single-vm.yaml"
environment = "heat/env/lab.yaml"

[backends.libvirt]
base_image = "debian-lab-desktop.qcow2"
machine = "q35"
video = "virtio"
graphics = "vnc"

[backends.vagrant]
box = "labdesk/debian-lab-desktop"
vagrantfile = "vagrant/Vagrantfile.tpl"

[backends.local]
command = "xterm"

[[checks]]
id = "hello-file"
title = "Create ~/hello.txt"
weight = 2
run = "checks/hello-file.sh"
'''


def make_root(base: Path) -> Path:
    """`base/desktop-images/` with the artefacts ENTRY names and an empty `catalogue/`."""
    root = base / "desktop-images"
    for artefact in ARTEFACTS:
        (root / artefact).parent.mkdir(parents=True, exist_ok=True)
        (root / artefact).write_text("# test artefact\n")
    (root / "catalogue").mkdir(exist_ok=True)
    return root


def write_entry(root: Path, name: str, text: str = ENTRY) -> Path:
    """Write `catalogue/<name>.toml`; the entry's id is set to `name` unless the text says otherwise."""
    path = root / "catalogue" / f"{name}.toml"
    path.write_text(text.replace('id = "lab"', f'id = "{name}"', 1))
    return path
