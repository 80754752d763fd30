"""The take-away bundle itself: a zip to run a course's lab at home with `vagrant up` (pure, no I/O).

`build_bundle(spec, work_archive)` turns an image version's stored spec (and, when the catalogue entry names
a work folder, the learner's folder as a tar.gz) into the zip's bytes. Everything in it comes from the
catalogue entry and the learner's own files: nothing of the hosted lab (its password, keys, address) is
passed in, so nothing of it can end up in the bundle.

The zip holds one folder, `labdesk-<image id>/`:

- `Vagrantfile`: the catalogue's template (the one the Vagrant connector renders for hosted labs, see
  `broker.vagrantfile`), filled for a learner's machine: `HOSTED` false, fixed ports on 127.0.0.1. When a
  work archive comes along, a second `Vagrant.configure` block is appended whose trigger restores it at
  the first `vagrant up`.
- `README.md`: what it is, what to install, how to get the box, how to start and reach the machine, and
  the lab's instructions.
- `box.json`: the box reference (name, version constraint, where to get it), for scripts and for people.
- `work.tar.gz`: the learner's work folder, when the entry defines one.
"""

from __future__ import annotations

import io
import json
import shlex
import zipfile
from typing import Any

from broker.vagrantfile import TemplateError, port_placeholders, render, ruby_literal

HOST_IP = "127.0.0.1"
SSH_PORT = 2222
RDP_PORT = 33389
VNC_PORT = 55901
FIRST_OTHER_PORT = 41000
WORK_FILE = "work.tar.gz"
RESTORED_MARK = "/var/lib/labdesk-work-restored"
UPLOAD_CHUNK = 32 * 1024  # characters of base64 per shell command of the restore trigger
ZIP_TIME = (2026, 1, 1, 0, 0, 0)  # one fixed time for every member: the same inputs give the same bytes

__all__ = ["build_bundle", "vagrant_section", "template_values", "render_vagrantfile", "restore_block", "readme",
           "bundle_folder", "TemplateError"]


def vagrant_section(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The entry's `[backends.vagrant]` section, or None: only such labs can be taken away."""
    backends = (spec or {}).get("backends")
    section = backends.get("vagrant") if isinstance(backends, dict) else None
    return section if isinstance(section, dict) and section.get("box") and section.get("template") else None


def bundle_folder(spec: dict[str, Any]) -> str:
    """The zip's one folder (and, with .zip, its download name): `labdesk-<image id>`."""
    return f"labdesk-{spec['id']}"


def build_bundle(spec: dict[str, Any], work_archive: bytes | None) -> bytes:
    """The zip's bytes. Raises TemplateError when the template names a placeholder the take-away does not
    fill (credentials, for one: a hosted lab's secrets never go into a bundle) or the entry has no
    `[backends.vagrant]` section."""
    section = _section(spec)
    folder = bundle_folder(spec)
    vagrantfile = render_vagrantfile(spec)
    if work_archive is not None:
        vagrantfile += restore_block(section["work_folder"], spec["lab_user"]["name"])
    files = [("Vagrantfile", vagrantfile.encode()), ("README.md", readme(spec, work_archive is not None).encode()),
             ("box.json", (json.dumps(_box(section), indent=2) + "\n").encode())]
    if work_archive is not None:
        files.append((WORK_FILE, work_archive))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files:
            info = zipfile.ZipInfo(f"{folder}/{name}", ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if name == WORK_FILE else zipfile.ZIP_DEFLATED  # gzip already
            bundle.writestr(info, data)
    return buffer.getvalue()


def _section(spec: dict[str, Any]) -> dict[str, Any]:
    section = vagrant_section(spec)
    if section is None:
        raise TemplateError(f"image {spec.get('id')!r} has no [backends.vagrant] section with a box and a template")
    return section


def _box(section: dict[str, Any]) -> dict[str, Any]:
    return {"box": section["box"], "box_version": section.get("box_version"), "box_url": section.get("box_url")}


# -- the Vagrantfile ----------------------------------------------------------------------------------------
def template_values(spec: dict[str, Any]) -> dict[str, Any]:
    """What the take-away fills in: the lab as the catalogue describes it, on the learner's loopback.

    Ports are fixed so the README can name them: SSH 2222, RDP 33389 and VNC 55901 when the first host
    offers them (else 0: not forwarded), and 41000, 41001, ... for any other `*_PORT` in template order.
    """
    section = _section(spec)
    resources = spec.get("resources") or {}
    protocols = {port.get("protocol") for port in _first_host(spec).get("ports") or []}
    values: dict[str, Any] = {
        "LAB_NAME": spec["id"],
        "BOX": section["box"],
        "BOX_VERSION": section.get("box_version"),
        "MEMORY_MB": resources.get("ram_mb"),
        "CPUS": resources.get("vcpu"),
        "HOST_IP": HOST_IP,
        "HOSTED": False,
        "WORK_FOLDER": section.get("work_folder"),
        "SSH_PORT": SSH_PORT,
        "RDP_PORT": RDP_PORT if "rdp" in protocols else 0,
        "VNC_PORT": VNC_PORT if "vnc" in protocols else 0,
    }
    others = [name for name in port_placeholders(section["template"]) if name not in values]
    values.update({name: FIRST_OTHER_PORT + i for i, name in enumerate(others)})
    return values


def render_vagrantfile(spec: dict[str, Any]) -> str:
    """The template filled with `template_values` (TemplateError names any placeholder left unfilled)."""
    text = render(_section(spec)["template"], template_values(spec))
    return text if text.endswith("\n") else text + "\n"


def restore_block(folder: str, user: str) -> str:
    """A second `Vagrant.configure` block whose trigger puts work.tar.gz back into the machine, once.

    Why a trigger and not a file provisioner or a synced folder: a lab box may be busybox-based, with only
    sh, base64, tar and chown (no scp, rsync or bash). So the archive goes through the machine's shell as
    base64 in chunks appended to a file, then is unpacked as root and given to the lab user. A mark file
    keeps a later `vagrant up` (or `reload`) from overwriting what the learner did since.
    """
    return f"""
# LabDesk: restore your work folder from {WORK_FILE} (beside this Vagrantfile) at the first `vagrant up`.
# A lab box may be busybox-based (sh, base64, tar, chown; no scp, rsync or bash), so neither a file
# provisioner nor a synced folder is used: the archive goes through the machine's shell in base64 chunks.
# Once restored, {RESTORED_MARK} in the machine keeps it from being restored again.
Vagrant.configure("2") do |config|
  config.trigger.after :up do |t|
    t.name = "LabDesk: restore your work folder"
    t.ruby do |env, machine|
      folder = {ruby_literal(folder)}
      user = {ruby_literal(user)}
      archive = File.join(File.dirname(__FILE__), {ruby_literal(WORK_FILE)})
      quote = lambda {{ |text| "'" + text.gsub("'") {{ "'\\\\''" }} + "'" }}
      if File.exist?(archive) && !machine.communicate.test("test -e {RESTORED_MARK}")
        upload = "/tmp/labdesk-work.b64"
        machine.communicate.sudo("rm -f #{{upload}}")
        [File.binread(archive)].pack("m0").scan(/.{{1,{UPLOAD_CHUNK}}}/m).each do |chunk|
          machine.communicate.sudo("printf '%s' '#{{chunk}}' >> #{{upload}}")
        end
        machine.communicate.sudo("mkdir -p #{{quote.call(folder)}} && base64 -d #{{upload}} | tar -xzf - -C #{{quote.call(folder)}}" \\
          " && chown -R #{{quote.call(user + ':')}} #{{quote.call(folder)}} && rm -f #{{upload}}" \\
          " && mkdir -p /var/lib && touch {RESTORED_MARK}")
        machine.ui.info("Your work folder is back in #{{folder}}.")
      end
    end
  end
end
"""


# -- the README -------------------------------------------------------------------------------------------
def readme(spec: dict[str, Any], has_work: bool) -> str:
    """What a learner reads first: what this is, what to install, how to start, where the work is."""
    section = _section(spec)
    title = spec.get("title") or spec["id"]
    parts = [f"# {title}: your lab at home\n",
             "This folder runs the lab of your course on your own computer, the very machine the course "
             "runs for you online, with [Vagrant](https://www.vagrantup.com/).\n",
             _prerequisites(), _getting_the_box(section), _starting(spec), _work(section, spec, has_work),
             _secrets()]
    instructions = (spec.get("instructions") or "").strip()
    if instructions:
        parts.append(f"## The lab's instructions\n\n{instructions}\n")
    return "\n".join(parts)


def _prerequisites() -> str:
    return ("## What you need\n\n"
            "- Vagrant 2.3 or newer.\n"
            "- A provider Vagrant drives: libvirt (with the `vagrant-libvirt` plugin) on Linux, or VirtualBox.\n"
            "- The memory and processors the lab asks for, free on your computer.\n")


def _getting_the_box(section: dict[str, Any]) -> str:
    box, url, version = section["box"], section.get("box_url"), section.get("box_version")
    text = f"## Getting the box\n\nThe lab's machine image is the Vagrant box `{box}`"
    text += f" (version `{version}`).\n\n" if version else ".\n\n"
    if url:
        return text + f"Add it once:\n\n```sh\nvagrant box add --name {shlex.quote(box)} {shlex.quote(url)}\n```\n"
    return text + f"Ask your course team for box `{box}`, then add it with `vagrant box add`.\n"


def _starting(spec: dict[str, Any]) -> str:
    values = template_values(spec)
    lines = ["## Starting and using the lab\n", "In this folder:\n", "```sh",
             "vagrant up      # the first start takes a few minutes", "vagrant ssh     # a shell in the lab",
             "vagrant halt    # stop it; vagrant up starts it again where you left off",
             "vagrant destroy # remove the machine (and everything in it)", "```\n"]
    reach = [f"- SSH: `vagrant ssh` (or port {SSH_PORT} on 127.0.0.1)"]
    if values["RDP_PORT"]:
        reach.append(f"- Remote desktop (RDP): 127.0.0.1:{values['RDP_PORT']}")
    if values["VNC_PORT"]:
        reach.append(f"- VNC: 127.0.0.1:{values['VNC_PORT']}")
    user = (spec.get("lab_user") or {}).get("name")
    if user:
        reach.append(f"- The lab's user is `{user}`.")
    return "\n".join(lines + ["The machine listens only on your own computer:\n"] + reach) + "\n"


def _work(section: dict[str, Any], spec: dict[str, Any], has_work: bool) -> str:
    folder = section.get("work_folder")
    if not folder:
        return "## Your work\n\nThis lab keeps no work folder: the machine starts as the course's lab does.\n"
    if not has_work:
        return f"## Your work\n\nYour work folder in the lab is `{folder}`. This bundle carries none of it.\n"
    return (f"## Your work\n\n`{WORK_FILE}` holds your work folder `{folder}` as it was in your online lab when "
            f"you made this bundle. The first `vagrant up` puts it back into `{folder}` in the machine, owned by "
            f"`{spec['lab_user']['name']}`; later starts leave it alone, so nothing you do at home is overwritten.\n")


def _secrets() -> str:
    return ("## Passwords and keys\n\n"
            "Your online lab's password and keys are **not** in this bundle, and you do not need them: Vagrant "
            "makes its own key for `vagrant ssh` when the machine first starts. Set a password inside the "
            "machine yourself (`vagrant ssh`, then `sudo passwd <user>`) if you want to sign in to its desktop.\n")


def _first_host(spec: dict[str, Any]) -> dict[str, Any]:
    hosts = spec.get("hosts")
    return hosts[0] if isinstance(hosts, list) and hosts and isinstance(hosts[0], dict) else {}
