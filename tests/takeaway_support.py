"""What the take-away tests share: a Vagrantfile template in the catalogue's bare-placeholder style, and a
real catalogue entry's spec built from it (as `labdesk images import` stores it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.catalogue import load
from tests.catalogue import ENTRY, make_root, write_entry

# A template like the catalogue's: the same file serves hosted labs (HOSTED true) and take-aways.
TEMPLATE = """# A lab for tests.
Vagrant.configure("2") do |config|
  config.vm.box = ${BOX}
  config.vm.box_version = ${BOX_VERSION} if ${BOX_VERSION}
  config.vm.hostname = ${LAB_NAME}
  hosted = ${HOSTED}
  work_folder = ${WORK_FOLDER}
  host_ip = ${HOST_IP}
  config.vm.network "forwarded_port", id: "ssh", guest: 22, host: ${SSH_PORT}, host_ip: host_ip
  config.vm.network "forwarded_port", guest: 3389, host: ${RDP_PORT}, host_ip: host_ip if ${RDP_PORT} > 0
  config.vm.network "forwarded_port", guest: 5901, host: ${VNC_PORT}, host_ip: host_ip if ${VNC_PORT} > 0
  config.vm.network "forwarded_port", guest: 80, host: ${HTTP_PORT}, host_ip: host_ip
  config.vm.network "forwarded_port", guest: 53, host: ${DNS_PORT}, host_ip: host_ip, protocol: "udp"
  config.vm.provider "virtualbox" do |vb|
    vb.memory = ${MEMORY_MB}
    vb.cpus = ${CPUS}
  end
end
"""

VAGRANT = '''[backends.vagrant]
box = "labdesk/debian-lab-desktop"
vagrantfile = "vagrant/Vagrantfile.tpl"
box_version = ">= 1.2, < 2"
box_url = "https://boxes.example.edu/debian-lab-desktop.box"
work_folder = "/home/learner/work"
'''


def vagrant_spec(tmp_path: Path, template: str = TEMPLATE, vagrant: str = VAGRANT, name: str = "net-lab") -> dict[str, Any]:
    """A real catalogue entry's normalized spec, with `vagrant` as its [backends.vagrant] section."""
    root = make_root(tmp_path / f"catalogue-{name}")
    (root / "vagrant" / "Vagrantfile.tpl").write_text(template)
    default = '[backends.vagrant]\nbox = "labdesk/debian-lab-desktop"\nvagrantfile = "vagrant/Vagrantfile.tpl"\n'
    assert default in ENTRY
    text = ENTRY.replace(default, vagrant).replace('title = "A lab"', 'title = "Networking basics"')
    return load(write_entry(root, name, text)).spec()
