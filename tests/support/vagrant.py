"""A real Vagrant + vagrant-libvirt for the Vagrant connector's tests, on the tiny guest of ../shared/tools.

* `vagrant_reason()`: why this machine cannot run them ("" when it can);
* `tiny_box()`: the tiny guest built with Vagrant's insecure key in its own directory (the libvirt tests' guest
  may have been built before Vagrant was installed, without any key) and packaged by `make-vagrant-box`;
* `vagrant_backend()`: a `vagrant` backend config on the running libvirtd: a transient storage pool under
  /var/tmp, a VAGRANT_HOME with the box added as BOX, a state dir, its own port range; everything (machines,
  pool volumes, pool, dirs) removed afterwards;
* `tiny_entry()`: the catalogue entry of tests/connectors/vagrant/catalogue (template, credentials script).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tests.support.libvirt import TOOLS, running_libvirtd, unavailable, usable_reason

VAGRANT_GUEST_DIR = Path("/var/tmp/labdesk-tiny-guest-vagrant")  # built with Vagrant's insecure key
CATALOGUE = Path(__file__).resolve().parents[1] / "connectors/vagrant/catalogue"
BOX = "labdesk-test/tiny"


def insecure_public_key() -> Path | None:
    keys = sorted(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-2*/keys/vagrant.pub"))
    return keys[-1] if keys else None


def vagrant_reason() -> str:
    """Why the real-Vagrant tests cannot run here, or "" when they can."""
    if not shutil.which("vagrant"):
        return "vagrant is not installed (scripts/test installs vagrant and vagrant-libvirt)"
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "VAGRANT_CHECKPOINT_DISABLE": "1"})
    if "vagrant-libvirt" not in plugins.stdout:
        return "the vagrant-libvirt plugin is not installed"
    if insecure_public_key() is None:
        return "Vagrant's insecure key (keys/vagrant.pub) is not where Debian's vagrant puts it"
    return usable_reason()


def tiny_box(directory: Path) -> Path:
    """The tiny guest as a vagrant-libvirt box in `directory` (the guest is built once and cached)."""
    key = insecure_public_key()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "GUEST_AUTHORIZED_KEY": str(key), "HOME": "/root"}
    VAGRANT_GUEST_DIR.mkdir(parents=True, exist_ok=True)
    built = subprocess.run([TOOLS / "build-guest", VAGRANT_GUEST_DIR], capture_output=True, text=True, env=env)
    if built.returncode != 0:
        unavailable(f"build-guest failed: {built.stderr.strip()[-500:]}")
    box = directory / "tiny.box"
    subprocess.run([TOOLS / "make-vagrant-box", box, VAGRANT_GUEST_DIR], check=True, capture_output=True)
    return box


@contextmanager
def vagrant_backend() -> Iterator[dict[str, Any]]:
    """A vagrant backend config with the tiny box installed; skips (fails in CI) where impossible."""
    reason = vagrant_reason()
    if reason:
        unavailable(reason)
    with running_libvirtd() as uri:
        root = Path(tempfile.mkdtemp(prefix="labdesk-vagrant-", dir="/var/tmp"))
        root.chmod(0o755)
        pool = f"labdesk-vt-{secrets.token_hex(4)}"
        (root / "pool").mkdir(mode=0o755)
        virsh(uri, "pool-create-as", pool, "dir", "--target", str(root / "pool"))
        first = 46000 + 100 * secrets.randbelow(40)
        config = {
            "state_dir": str(root / "state"), "home": str(root / "vagrant.d"),
            "forward_ports": [first, first + 99], "credential_seed": "vagrant-tests-" + secrets.token_hex(8),
            "provider_options": {"uri": uri, "storage_pool_name": pool, "default_prefix": f"ldvt{secrets.token_hex(3)}-"},
            "timeouts": {"up": 300, "lock": 120},
        }
        try:
            add_box(config, tiny_box(root))
            yield config
        finally:
            destroy_leftovers(config)
            for line in virsh(uri, "vol-list", pool, check=False).splitlines()[2:]:  # a header, a rule, then "name path"
                if line.split():
                    virsh(uri, "vol-delete", "--pool", pool, line.split()[0], check=False)
            virsh(uri, "pool-destroy", pool, check=False)
            shutil.rmtree(root, ignore_errors=True)


def add_box(config: dict[str, Any], box: Path, name: str = BOX) -> None:
    from connectors.vagrant.cli import VagrantCli

    VagrantCli(Path(config["home"])).run("box", "add", "--name", name, str(box), timeout=300)


def destroy_leftovers(config: dict[str, Any]) -> None:
    """Destroy every machine a test left in the backend's state dir (by directory, then by Vagrant's id)."""
    from connectors.vagrant.connector import VagrantConnector

    connector = VagrantConnector("leftovers", config)
    for managed in connector.list_managed():
        try:
            connector.delete(managed.handle)
        except Exception as exc:  # noqa: BLE001 - cleaning up: report and go on with the rest
            print(f"could not delete leftover lab {managed.lab_id}: {exc}")


def virsh(uri: str, *args: str, check: bool = True) -> str:
    done = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def tiny_entry() -> Any:
    """The tiny guest's catalogue entry (broker.catalogue.Entry)."""
    from broker.catalogue import load

    return load(CATALOGUE / "catalogue/tiny-lab.toml")
