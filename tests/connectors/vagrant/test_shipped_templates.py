"""Every catalogue entry with a Vagrant section renders to a Vagrantfile that the real Vagrant (with
vagrant-libvirt) validates: hosted (the connector's rendering, server blocks included) and taken away (the
bundle's). A broken template is found here, not by a learner."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from broker.catalogue import load
from broker.connector import LabSpec
from broker.takeaway_bundle import build_bundle
from tests.support.libvirt import unavailable
from tests.support.vagrant import CATALOGUE, vagrant_reason

pytestmark = [pytest.mark.vagrant]
REPO = Path(__file__).resolve().parents[3]
ENTRIES = [path for path in sorted((REPO / "desktop-images/catalogue").glob("*.toml")) + [CATALOGUE / "catalogue/tiny-lab.toml"]
           if "vagrant" in load(path).spec()["backends"]]


@pytest.fixture(scope="module")
def connector(tmp_path_factory: pytest.TempPathFactory) -> Any:
    reason = vagrant_reason()
    if reason:
        unavailable(reason)
    from connectors.vagrant.connector import VagrantConnector

    root = tmp_path_factory.mktemp("shipped")
    return VagrantConnector("shipped", {"state_dir": str(root / "state"), "home": str(root / "home"), "credential_seed": "s"})


def validate(connector: Any, project: Path) -> None:
    done = subprocess.run(["vagrant", "validate", "--machine-readable"], cwd=project, env=connector.cli.environment(project),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0 and "validated successfully" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_shipped_catalogue_has_vagrant_entries() -> None:
    assert {path.stem for path in ENTRIES} >= {"linux-desktop", "linux-terminal", "tiny-lab"}


@pytest.mark.parametrize("path", ENTRIES, ids=lambda path: path.stem)
def test_a_hosted_labs_vagrantfile_is_valid(connector: Any, path: Path) -> None:
    from connectors.vagrant.labdir import LabDir

    spec = load(path).spec()
    lab = LabDir.of(connector.settings.state_dir, abs(hash(path.stem)) % 10_000)
    connector._create(lab, LabSpec(lab.lab_id, spec["id"], "learner", spec))
    validate(connector, lab.path)


@pytest.mark.parametrize("path", ENTRIES, ids=lambda path: path.stem)
def test_a_take_away_bundles_vagrantfile_is_valid(connector: Any, path: Path, tmp_path: Path) -> None:
    spec = load(path).spec()
    zipfile.ZipFile(io.BytesIO(build_bundle(spec, None))).extractall(tmp_path)
    validate(connector, tmp_path / f"labdesk-{spec['id']}")
