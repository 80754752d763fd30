"""The take-away bundle, for real: a learner's work in a hosted Vagrant lab is read through the lab's check
target, the bundle is built, unpacked on "the learner's machine" (an empty VAGRANT_HOME of its own, the box
added as the bundle's README says) and `vagrant up` runs on it; the work is back in the new machine."""

from __future__ import annotations

import io
import json
import subprocess
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from broker.connector import LabSpec, ObservedState
from broker.grading import CheckScript, runner_for
from broker.lab_jobs import LabSnapshot
from broker.takeaway import _work_archive
from broker.takeaway_bundle import build_bundle
from tests.support.vagrant import BOX, tiny_box, tiny_entry

pytestmark = [pytest.mark.vagrant, pytest.mark.libvirt, pytest.mark.slow, pytest.mark.timeout(900)]
NOTE = "my notes, written in the hosted lab"


def run_as_root(connector: Any, handle: dict[str, Any], script: str) -> str:
    target = connector.check_targets(handle)[0]
    outcome = runner_for(target).run(target, CheckScript("setup", script, timeout=60))
    assert outcome.passed, outcome
    return outcome.stdout


def vagrant(home: Path, project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home.parent), "VAGRANT_HOME": str(home),
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_SERVER_URL": "http://127.0.0.1:9"}
    return subprocess.run(["vagrant", *args], cwd=project, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def test_the_bundle_runs_the_same_lab_at_home_with_the_learners_work(backend: dict[str, Any], tmp_path: Path) -> None:
    from connectors.vagrant.connector import VagrantConnector

    connector = VagrantConnector("vagrant-hosted", backend)
    spec = tiny_entry().spec()
    lab = LabSpec(lab_id=int(time.time()) % 100_000 * 10 + 7, image="tiny-lab", owner="learner", params=spec)
    handle = connector.provision(lab)
    deadline = time.monotonic() + 300
    while connector.observe(handle).state != ObservedState.READY:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    run_as_root(connector, handle, f"#!/bin/sh\nmkdir -p /home/lab/work/src && echo '{NOTE}' > /home/lab/work/src/notes.txt\n")
    shim = SimpleNamespace(settings=SimpleNamespace(takeaway_work_limit_mb=32), connector=lambda _name: connector)
    archive, note = _work_archive(shim, LabSnapshot("running", handle, "vagrant-hosted", spec))  # type: ignore[arg-type]
    assert note == ""
    connector.delete(handle)  # the hosted lab is gone: what follows uses only the bundle

    bundle = zipfile.ZipFile(io.BytesIO(build_bundle(spec, archive)))
    bundle.extractall(tmp_path / "download")
    project = tmp_path / "download" / "labdesk-tiny-lab"
    readme = (project / "README.md").read_text()
    assert BOX in readme and "vagrant up" in readme
    assert json.loads((project / "box.json").read_text())["box"] == BOX

    # The learner's machine: Vagrant of their own, the box added by hand, their own storage pool setting
    # (a per-user ~/.vagrant.d/Vagrantfile is where a learner keeps such machine-specific settings).
    home = tmp_path / "learner" / ".vagrant.d"
    home.mkdir(parents=True)
    added = vagrant(home, project, "box", "add", "--name", BOX, str(tiny_box(tmp_path)))
    assert added.returncode == 0, added.stdout + added.stderr
    pool = backend["provider_options"]["storage_pool_name"]
    (home / "Vagrantfile").write_text(
        f'Vagrant.configure("2") {{ |c| c.vm.provider(:libvirt) {{ |lv| lv.storage_pool_name = "{pool}" }} }}\n')
    try:
        started = time.monotonic()
        up = vagrant(home, project, "up", "--provider=libvirt")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        print(f"take-away vagrant up: {time.monotonic() - started:.1f} s")
        assert "Your work folder is back in /home/lab/work." in up.stdout
        seen = vagrant(home, project, "ssh", "-c", "cat /home/lab/work/src/notes.txt; stat -c %U /home/lab/work/src/notes.txt")
        assert seen.stdout.split() == [*NOTE.split(), "lab"], seen.stdout + seen.stderr
        again = vagrant(home, project, "up")  # a second `up` must not restore over the learner's new work
        assert again.returncode == 0 and "Your work folder is back" not in again.stdout
    finally:
        vagrant(home, project, "destroy", "-f")
