"""First boot of a hosted Vagrant lab: replace the box's well-known credentials with the lab's own.

A Vagrant box lets anyone in with Vagrant's published insecure key and a default password
("vagrant"/"vagrant", or the tiny guest's "lab"): fine on a laptop, not on a server reachable by other
learners. So right after the first `vagrant up`, while Vagrant's key still works, LabDesk runs the
catalogue's credentials script (`backends.vagrant.credentials`, or the shipped
desktop-images/vagrant/credentials.sh) as the account Vagrant logs in with. The script gets

    $1 lab user   $2 the lab password's crypt(3) hash   $3 the learner's public key
    $4 LabDesk's service public key   $5 the VNC password file, base64 (may be empty)

and must set the lab user's password and key, make the service key the only key of the account Vagrant
logs in with (which drops the insecure key), and lock the box's default passwords. From then on Vagrant
itself logs in with the service key (the Vagrantfile's server block reads LABDESK_SSH_KEY).

Why Vagrant's `insert_key` is off: it would make a key of its own and keep it unencrypted in `.vagrant/`;
ours is derived from the backend's encrypted seed (connectors.credentials) and written to disk only for the
length of one Vagrant call. Why not a shell provisioner: a provisioner is uploaded with scp, which minimal
guests lack; broker.remote sends the script on an SSH command's stdin, which any sshd takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.errors import PermanentError, TransientError
from broker.remote import SshTarget, run_script
from connectors.vagrant import records
from connectors.vagrant.cli import VagrantCli, VagrantError
from connectors.vagrant.labdir import LabDir
from connectors.vagrant.records import SshConfig

TIMEOUT = 120.0


class InjectionFailed(Exception):
    """The credentials script could not run or failed: the lab must not be handed out."""


def ensure(lab: LabDir, cli: VagrantCli, job: dict[str, Any], service_key: str, timeout: float, env: dict[str, str]) -> None:
    """Vagrant's SSH settings for the lab (recorded in lab.json, with the box's own keys the first time),
    then `inject`; afterwards the lab's credentials hold and lab.json says so."""
    found = records.for_machine(records.ssh_configs(cli.run("ssh-config", cwd=lab.path, timeout=timeout, env=env).output), lab.machine)
    if found is None:
        raise VagrantError("no-ssh-config", f"vagrant ssh-config named no machine {lab.machine}")
    if not lab.read().get("credentials_set"):
        lab.update(box_keys=[path for path in found.identity_files if Path(path).is_file()])
    inject(found, job, service_key)
    lab.update(credentials_set=True, ssh={"host": found.host, "port": found.port, "user": found.user})


def inject(config: SshConfig, job: dict[str, Any], service_key: str) -> None:
    """Run the credentials script with Vagrant's current key, or confirm the service key already works."""
    refused: list[str] = []
    for key in _vagrant_keys(config):
        target = SshTarget(config.host, config.port, config.user, key)
        try:
            result = run_script(target, job["script"], TIMEOUT, args=job["args"], output_limit=16384)
        except (TransientError, PermanentError) as exc:  # refused, or a key file paramiko cannot read
            refused.append(str(exc))
            continue
        if not result.ok:
            raise InjectionFailed(f"the credentials script failed (exit {result.exit_status}): {result.stderr.strip()[-1000:]}")
        return
    if _service_key_works(config, service_key):
        return  # an earlier run set them and was interrupted before recording it
    raise InjectionFailed(f"no key got into {config.user}@{config.host}:{config.port}: {'; '.join(refused)[-1000:]}")


def _vagrant_keys(config: SshConfig) -> list[str]:
    """The private keys Vagrant itself would try (ssh-config's IdentityFile lines) that exist."""
    return [Path(path).read_text() for path in config.identity_files if Path(path).is_file()]


def _service_key_works(config: SshConfig, service_key: str) -> bool:
    try:
        return run_script(SshTarget(config.host, config.port, config.user, service_key), "true", 30).ok
    except TransientError:
        return False
