"""The take-away bundle (broker.takeaway_bundle.build_bundle, exposed as broker.takeaway.build_bundle): the
zip's files, the Vagrantfile filled for a learner's computer, the README, quoting of nasty values, and the
restore trigger run for real: Ruby evaluates the appended block against a stand-in machine whose commands
sh then runs on this host, so what comes back is the learner's folder, byte for byte.
"""

from __future__ import annotations

import getpass
import io
import os
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from broker.takeaway import build_bundle
from broker.takeaway_bundle import RESTORED_MARK, restore_block, template_values
from broker.vagrantfile import TemplateError
from tests.takeaway_support import TEMPLATE, VAGRANT, vagrant_spec

FOLDER = "labdesk-net-lab"


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert bundle.testzip() is None
        return {info.filename: bundle.read(info) for info in bundle.infolist()}


def work_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def spec(tmp_path: Path) -> dict[str, Any]:
    return vagrant_spec(tmp_path)


def test_the_zip_holds_one_folder_with_the_vagrantfile_readme_box_and_work(spec: dict[str, Any]) -> None:
    archive = work_tar({"./notes.txt": b"my notes\n"})
    files = members(build_bundle(spec, archive))

    assert sorted(files) == [f"{FOLDER}/{name}" for name in ("README.md", "Vagrantfile", "box.json", "work.tar.gz")]
    assert files[f"{FOLDER}/work.tar.gz"] == archive, "the work archive travels unchanged"
    assert json.loads(files[f"{FOLDER}/box.json"]) == {
        "box": "labdesk/debian-lab-desktop", "box_version": ">= 1.2, < 2",
        "box_url": "https://boxes.example.edu/debian-lab-desktop.box"}
    assert build_bundle(spec, archive) == build_bundle(spec, archive), "the same inputs give the same bytes"


def test_the_vagrantfile_is_the_template_filled_for_the_learners_computer(spec: dict[str, Any]) -> None:
    vagrantfile = members(build_bundle(spec, None))[f"{FOLDER}/Vagrantfile"].decode()

    for line in ("config.vm.box = 'labdesk/debian-lab-desktop'",
                 "config.vm.box_version = '>= 1.2, < 2' if '>= 1.2, < 2'",
                 "config.vm.hostname = 'net-lab'",
                 "hosted = false",
                 "work_folder = '/home/learner/work'",
                 "host_ip = '127.0.0.1'",
                 'id: "ssh", guest: 22, host: 2222,',
                 "guest: 3389, host: 33389, host_ip: host_ip if 33389 > 0",  # the first host offers RDP
                 "guest: 5901, host: 0, host_ip: host_ip if 0 > 0",  # ... and no VNC: not forwarded
                 "guest: 80, host: 41000,", "guest: 53, host: 41001,",  # other ports, in template order
                 "vb.memory = 2048", "vb.cpus = 2"):
        assert line in vagrantfile, line
    assert "${" not in vagrantfile
    assert "config.trigger" not in vagrantfile, "no work archive, no restore trigger"
    assert f"{FOLDER}/work.tar.gz" not in members(build_bundle(spec, None))


def test_values_without_a_version_a_folder_or_rdp_are_nil_and_zero(tmp_path: Path) -> None:
    vagrant = VAGRANT.replace('box_version = ">= 1.2, < 2"\n', "").replace('work_folder = "/home/learner/work"\n', "")
    spec = vagrant_spec(tmp_path, vagrant=vagrant)
    spec["hosts"][0]["ports"] = [{"protocol": "vnc", "port": 5901}]

    values = template_values(spec)
    assert (values["BOX_VERSION"], values["WORK_FOLDER"], values["RDP_PORT"], values["VNC_PORT"]) == (None, None, 0, 55901)
    vagrantfile = members(build_bundle(spec, None))[f"{FOLDER}/Vagrantfile"].decode()
    assert "config.vm.box_version = nil if nil" in vagrantfile and "work_folder = nil" in vagrantfile


def test_nasty_values_stay_ruby_string_literals(tmp_path: Path) -> None:
    """A quote, a backslash or #{...} in a value can never become Ruby code (single-quoted literals)."""
    spec = vagrant_spec(tmp_path)
    vagrant = spec["backends"]["vagrant"]
    vagrant["box_version"] = "1.0' ; system('id') ; '"
    vagrant["work_folder"] = "/home/learner/it's #{`id`} \\ work"
    spec["lab_user"]["name"] = "o'neil"

    vagrantfile = members(build_bundle(spec, work_tar({})))[f"{FOLDER}/Vagrantfile"].decode()
    assert "config.vm.box_version = '1.0\\' ; system(\\'id\\') ; \\''" in vagrantfile
    assert "work_folder = '/home/learner/it\\'s #{`id`} \\\\ work'" in vagrantfile
    assert "folder = '/home/learner/it\\'s #{`id`} \\\\ work'" in vagrantfile
    assert "user = 'o\\'neil'" in vagrantfile
    ruby_syntax_ok(tmp_path, vagrantfile)


def test_an_unknown_placeholder_is_refused_by_name(tmp_path: Path) -> None:
    """The take-away fills no credentials: a template wanting them cannot be taken away (and says so)."""
    template = TEMPLATE.replace("hosted = ${HOSTED}", "hosted = ${HOSTED}\n  hash = ${LEARNER_PASSWORD_HASH}")
    spec = vagrant_spec(tmp_path, template=template)
    with pytest.raises(TemplateError, match="placeholders nobody fills: LEARNER_PASSWORD_HASH"):
        build_bundle(spec, None)
    del spec["backends"]["vagrant"]
    with pytest.raises(TemplateError, match=r"no \[backends.vagrant\] section"):
        build_bundle(spec, None)


def test_the_readme_says_how_to_get_the_box_start_and_find_the_work(spec: dict[str, Any], tmp_path: Path) -> None:
    readme = members(build_bundle(spec, work_tar({})))[f"{FOLDER}/README.md"].decode()

    assert readme.startswith("# Networking basics: your lab at home\n")
    for text in ("Vagrant 2.3", "libvirt", "VirtualBox",
                 "vagrant box add --name labdesk/debian-lab-desktop https://boxes.example.edu/debian-lab-desktop.box",
                 "vagrant up", "vagrant ssh", "127.0.0.1:33389", "`work.tar.gz` holds your work folder `/home/learner/work`",
                 "password and keys are **not** in this bundle", "## The lab's instructions\n\nDo **this**."):
        assert text in readme, text
    assert "VNC" not in readme, "the lab offers no VNC"

    no_url = vagrant_spec(tmp_path, vagrant=VAGRANT.replace('box_url = "https://boxes.example.edu/debian-lab-desktop.box"\n', ""),
                          name="other")
    other = members(build_bundle(no_url, None))["labdesk-other/README.md"].decode()
    assert "Ask your course team for box `labdesk/debian-lab-desktop`" in other
    assert "vagrant box add --name" not in other
    assert "This bundle carries none of it." in other


# -- the restore trigger, run for real -------------------------------------------------------------------
STAND_IN = r"""
require 'json'
$commands = []
class Communicator
  def test(command) $commands << ["test", command]; false end
  def sudo(command) $commands << ["sudo", command]; true end
end
class Machine
  def communicate() @communicate ||= Communicator.new end
  def ui() self end
  def info(message) $commands << ["info", message] end
end
class Trigger
  attr_accessor :name
  def ruby(&block) $block = block end
end
class Triggers
  def after(event, &block) $event = event; $trigger = Trigger.new; block.call($trigger) end
end
class Config
  def trigger() @trigger ||= Triggers.new end
end
module Vagrant
  def self.configure(version) yield Config.new end
end
load ARGV[0]
$block.call(nil, Machine.new)
puts JSON.dump({"event" => $event.to_s, "name" => $trigger.name, "commands" => $commands})
"""


def ruby_syntax_ok(tmp_path: Path, text: str) -> None:
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed")
    path = tmp_path / "syntax" / "Vagrantfile"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    checked = subprocess.run(["ruby", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_the_trigger_restores_the_work_folder_once_with_sh_base64_and_tar(tmp_path: Path) -> None:
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed")
    target = tmp_path / "machine" / "it's $(id) a `folder`"
    big = os.urandom(70_000)  # does not compress: about 93 KiB of base64, three chunks
    archive = work_tar({"./notes.txt": b"my notes\n", "./sub/data.bin": big})
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    (bundle_dir / "work.tar.gz").write_bytes(archive)
    (bundle_dir / "Vagrantfile").write_text(restore_block(str(target), getpass.getuser()))
    (tmp_path / "stand-in.rb").write_text(STAND_IN)

    ran = subprocess.run(["ruby", str(tmp_path / "stand-in.rb"), str(bundle_dir / "Vagrantfile")],
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert (result["event"], result["name"]) == ("up", "LabDesk: restore your work folder")
    commands = result["commands"]
    assert commands[0] == ["test", f"test -e {RESTORED_MARK}"]
    chunks = [c for kind, c in commands if kind == "sudo" and c.startswith("printf")]
    assert len(chunks) >= 3, "the archive went up in several chunks"
    assert all(len(c) < 33 * 1024 for c in chunks)

    # The machine's side, on this host: the same commands with the fixed paths moved into tmp_path.
    machine_tmp, marks = tmp_path / "tmp", tmp_path / "var-lib"
    machine_tmp.mkdir()
    for kind, command in commands:
        if kind != "sudo":
            continue
        command = command.replace("/tmp/labdesk-work.b64", f"{machine_tmp}/labdesk-work.b64").replace(
            "/var/lib", str(marks))
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command[:200], done.stderr)
    assert (target / "notes.txt").read_bytes() == b"my notes\n"
    assert (target / "sub" / "data.bin").read_bytes() == big
    assert (marks / "labdesk-work-restored").exists()
    assert list(machine_tmp.iterdir()) == [], "the upload was removed"
