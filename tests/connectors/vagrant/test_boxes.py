"""`labdesk boxes add|list|remove` on a vagrant backend: a real Vagrant adding the tiny guest's box from a
local file, a loopback HTTP server and a metadata .json, refusing what it must with one clear line; and
the box messages of the recorded outputs (recorded/box-*.txt), read without Vagrant.

No libvirt is needed: `vagrant box` only unpacks into VAGRANT_HOME. The database is SQLite only: the
commands read one backend row, which tests/test_cli.py already covers on PostgreSQL.
"""

from __future__ import annotations

import json
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from click.testing import Result
from redis import Redis

from broker.config import Settings
from broker.connector import Box, LabSpec
from broker.errors import PermanentError, TransientError
from broker.runtime import Runtime
from connectors.vagrant import boxes, errors, records
from connectors.vagrant.connector import VagrantConnector
from connectors.vagrant.labdir import LabDir
from tests.conftest import make_settings
from tests.support.libvirt import unavailable
from tests.support.vagrant import tiny_box
from tests.test_cli import as_json, cli_env, invoke, one_error_line

RECORDED = Path(__file__).parent / "recorded"
Labdesk = Callable[..., Result]


def recorded(name: str) -> records.Output:
    return records.parse((RECORDED / name).read_text())


# -- the recorded outputs (no Vagrant needed) --------------------------------------------------------------
@pytest.mark.parametrize("name, said", [
    ("box-add-provider.txt", [Box("lab/tiny", "libvirt", "0")]),
    ("box-add-url.txt", [Box("lab/web", "libvirt", "0")]),
    ("box-add-metadata.txt", [Box("lab/meta", "libvirt", "1.0.0")]),
])
def test_an_added_box_is_read_from_vagrants_success_line(name: str, said: list[Box]) -> None:
    assert boxes.said(recorded(name), boxes.ADDED) == said


def test_removed_boxes_are_read_from_vagrants_removing_lines() -> None:
    assert boxes.said(recorded("box-remove-all.txt"), boxes.REMOVING) == [
        Box("lab/meta", "libvirt", "1.1.0"), Box("lab/meta", "libvirt", "1.0.0")]
    assert boxes.said(recorded("box-remove-version.txt"), boxes.REMOVING) == [Box("lab/meta", "libvirt", "1.0.0")]


def test_box_list_gives_each_version_of_a_box() -> None:
    versions = [(entry.name, entry.version) for entry in records.boxes(recorded("box-list-versions.txt"))]
    assert ("lab/meta", "1.0.0") in versions and ("lab/meta", "1.1.0") in versions and ("lab/tiny", "0") in versions


@pytest.mark.parametrize("name, first_line", [
    ("box-add-exists.txt", "box b from s: already installed (--force replaces it) (Version: 0)"),
    ("box-add-missing-file.txt", "box b from s: could not be read or downloaded (Couldn't open file /tmp/vrec/missing.box)"),
    ("box-add-url-404.txt", "box b from s: could not be downloaded (The requested URL returned error: 404)"),
    ("box-add-direct-version.txt", "box b from s: is a box file, which has no versions (only a metadata .json source has)"),
    ("box-add-other-provider.txt", "box b from s: is a box for another provider (Provider of box: libvirt)"),
    ("box-add-not-a-box.txt", "box b from s: is not a Vagrant box (it did not unpack) (bsdtar: Error exit delayed from previous errors.)"),
    ("box-add-name-mismatch.txt", "box b from s: is named otherwise in its metadata (add it under that name) (Actual name: lab/meta)"),
    ("box-add-no-matching-version.txt", "box b from s: has no such version (Available versions: 1.0.0, 1.1.0)"),
    ("box-remove-not-found.txt", "box b from s: is not installed"),
    ("box-remove-version-not-found.txt", "box b from s: is not installed in that version (installed: 0)"),
    ("box-remove-multi-version.txt", "box b from s: has several versions: name one with --version (installed: 1.0.0, 1.1.0)"),
])
def test_each_recorded_box_failure_is_one_line_an_admin_can_act_on(name: str, first_line: str) -> None:
    kind, message = records.error_exit(recorded(name)) or ("", "")
    error = errors.box_failure(kind, message, "box b from s")
    assert isinstance(error, PermanentError)
    assert str(error).splitlines()[0] == first_line
    assert kind in str(error)  # Vagrant's own words follow, for the log


def test_a_box_a_machine_vagrant_knows_uses_is_reported_as_such() -> None:
    # Not recorded: it needs a libvirt domain Vagrant created. The message is Vagrant 2.3.4's ui_expects_tty.
    message = "Vagrant is attempting to interface with the UI in a way that requires\na TTY."
    error = errors.box_failure("Vagrant::Errors::UIExpectsTTY", message, "box b (libvirt) of backend vg")
    assert str(error).splitlines()[0] == ("box b (libvirt) of backend vg: is used by a machine Vagrant knows "
                                          "(`vagrant global-status`; --force removes it)")


def test_a_box_failure_vagrant_names_otherwise_is_mapped_as_any_other() -> None:
    assert isinstance(errors.box_failure("timeout", "no answer within 1800 s", "box b from s"), TransientError)


def test_a_box_vagrant_kept_is_an_error_naming_its_version() -> None:
    wanted = [Box("lab/a", "libvirt", "1"), Box("lab/a", "libvirt", "2")]
    with pytest.raises(PermanentError, match="Vagrant kept version 2: a machine it knows uses it"):
        boxes._check_removed(wanted, wanted[:1], "box lab/a")
    assert boxes._check_removed(wanted, wanted, "box lab/a") == wanted


@pytest.mark.parametrize("source, reason", [
    ("ftp://example.org/tiny.box", "only local files and http/https/file URLs are supported"),
    ("/nowhere/tiny.box", "/nowhere/tiny.box: no such file"),
])
def test_a_source_vagrant_cannot_read_is_refused_before_vagrant_runs(source: str, reason: str, tmp_path: Path) -> None:
    config = {"state_dir": str(tmp_path / "state"), "binary": str(tmp_path / "no-vagrant"), "credential_seed": "s" * 32}
    with pytest.raises(PermanentError, match=reason):  # running Vagrant would have said "not installed"
        VagrantConnector("vg", config).add_box("lab/a", source)


# -- a real Vagrant, through the command line --------------------------------------------------------------
@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's VAGRANT_HOME, state dir and served folder, with the tiny guest's box in it."""
    if not shutil.which("vagrant"):
        unavailable("vagrant is not installed (scripts/test installs vagrant and vagrant-libvirt)")
    root = tmp_path_factory.mktemp("boxes")
    (root / "served").mkdir()
    shutil.copy(tiny_box(root), root / "served" / "tiny.box")
    return root


@pytest.fixture(scope="module")
def server(place: Path) -> Iterator[str]:
    """A loopback HTTP server of the served folder (the box, metadata files); its base URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(place / "served")))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


@pytest.fixture
def settings(sqlite_db_url: str, tmp_path: Path, redis_client: Redis) -> Settings:
    return make_settings(sqlite_db_url, tmp_path)


@pytest.fixture
def labdesk(rt: Runtime, place: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Labdesk]:
    """`labdesk(*args)` in-process on the test's database, run from the served folder; backend `vg`
    (vagrant, on the module's VAGRANT_HOME and state dir) is registered."""
    from broker import runtime

    monkeypatch.chdir(place / "served")

    def run(*args: str) -> Result:
        try:
            return invoke(cli_env(rt.settings), *args)
        finally:
            runtime.install(rt)

    config = {"state_dir": str(place / "state"), "home": str(place / "vagrant.d")}
    assert run("backends", "add", "vg", "--kind", "vagrant", "--config", json.dumps(config)).exit_code == 0
    yield run


def listed(labdesk: Labdesk) -> list[dict[str, str]]:
    result = labdesk("boxes", "list", "vg", "--json")
    assert result.exit_code == 0, result.output
    return as_json(result)  # type: ignore[return-value]


def lab_using(place: Path, lab_id: int, box: str) -> None:
    """A lab directory of backend vg whose record names `box`, as provisioning leaves it."""
    lab = LabDir.of(place / "state", lab_id)
    lab.path.mkdir(parents=True)
    lab.write({"lab_id": lab_id, "box": box})


@pytest.mark.vagrant
def test_a_box_from_a_local_file_is_added_and_listed(labdesk: Labdesk, place: Path) -> None:
    added = labdesk("boxes", "add", "vg", "lab/local", "tiny.box")  # relative to where the admin is
    assert added.exit_code == 0, added.output
    assert added.output == "added box lab/local 0 (libvirt) to vg\n"
    assert {"name": "lab/local", "provider": "libvirt", "version": "0"} in listed(labdesk)
    text = labdesk("boxes", "list", "vg")
    assert any(line.split() == ["lab/local", "0", "libvirt"] for line in text.output.splitlines())


@pytest.mark.vagrant
def test_a_box_from_a_loopback_url_is_added(labdesk: Labdesk, server: str) -> None:
    added = labdesk("boxes", "add", "vg", "lab/web", f"{server}/tiny.box", "--json")
    assert added.exit_code == 0, added.output
    assert as_json(added) == {"name": "lab/web", "provider": "libvirt", "version": "0"}


@pytest.mark.vagrant
def test_a_version_comes_from_metadata_and_a_box_file_has_none(labdesk: Labdesk, place: Path, server: str) -> None:
    versions = [{"version": v, "providers": [{"name": "libvirt", "url": f"{server}/tiny.box"}]} for v in ("1.0.0", "1.1.0")]
    (place / "served" / "meta.json").write_text(json.dumps({"name": "lab/meta", "versions": versions}))
    added = labdesk("boxes", "add", "vg", "lab/meta", f"{server}/meta.json", "--version", "1.0.0", "--json")
    assert as_json(added) == {"name": "lab/meta", "provider": "libvirt", "version": "1.0.0"}
    refused = labdesk("boxes", "add", "vg", "lab/versioned", "tiny.box", "--version", "1.0.0")
    assert "is a box file, which has no versions (only a metadata .json source has)" in one_error_line(refused)
    assert not [box for box in listed(labdesk) if box["name"] == "lab/versioned"]


@pytest.mark.vagrant
def test_adding_a_box_twice_is_refused_until_forced(labdesk: Labdesk) -> None:
    assert labdesk("boxes", "add", "vg", "lab/twice", "tiny.box").exit_code == 0
    again = labdesk("boxes", "add", "vg", "lab/twice", "tiny.box")
    assert again.exit_code == 1
    assert one_error_line(again).startswith("error: box lab/twice from tiny.box: already installed (--force replaces it)")
    forced = labdesk("boxes", "add", "vg", "lab/twice", "tiny.box", "--force")
    assert forced.exit_code == 0, forced.output
    assert [box for box in listed(labdesk) if box["name"] == "lab/twice"] == [{"name": "lab/twice", "provider": "libvirt", "version": "0"}]


@pytest.mark.vagrant
def test_a_missing_file_is_a_clear_error_and_adds_nothing(labdesk: Labdesk, place: Path) -> None:
    before = listed(labdesk)
    result = labdesk("boxes", "add", "vg", "lab/missing", "missing.box")
    assert result.exit_code == 1
    assert one_error_line(result) == (f"error: box lab/missing from missing.box: {place / 'served' / 'missing.box'}: no such file "
                                      "(give a local box file, a metadata .json or a URL)")
    assert listed(labdesk) == before


@pytest.mark.vagrant
def test_a_url_that_is_not_found_is_a_clear_error(labdesk: Labdesk, server: str) -> None:
    result = labdesk("boxes", "add", "vg", "lab/gone", f"{server}/gone.box")
    assert one_error_line(result) == (f"error: box lab/gone from {server}/gone.box: could not be downloaded "
                                      "(The requested URL returned error: 404)")
    assert not [box for box in listed(labdesk) if box["name"] == "lab/gone"]


@pytest.mark.vagrant
def test_a_box_is_removed(labdesk: Labdesk) -> None:
    assert labdesk("boxes", "add", "vg", "lab/old", "tiny.box").exit_code == 0
    removed = labdesk("boxes", "remove", "vg", "lab/old", "--json")
    assert as_json(removed) == [{"name": "lab/old", "provider": "libvirt", "version": "0"}]
    assert not [box for box in listed(labdesk) if box["name"] == "lab/old"]
    again = labdesk("boxes", "remove", "vg", "lab/old")
    assert one_error_line(again) == "error: box lab/old (libvirt) of backend vg: not installed"


@pytest.mark.vagrant
def test_a_box_a_lab_uses_is_kept_unless_forced(labdesk: Labdesk, place: Path) -> None:
    assert labdesk("boxes", "add", "vg", "lab/used", "tiny.box").exit_code == 0
    lab_using(place, 7, "lab/used")
    refused = labdesk("boxes", "remove", "vg", "lab/used")
    assert one_error_line(refused) == ("error: box lab/used (libvirt) of backend vg: in use by lab 7 (labdesk-lab-7) "
                                       "(--force removes it anyway)")
    assert [box for box in listed(labdesk) if box["name"] == "lab/used"]
    forced = labdesk("boxes", "remove", "vg", "lab/used", "--force")
    assert forced.output == "removed box lab/used 0 (libvirt) from vg\n"
    assert not [box for box in listed(labdesk) if box["name"] == "lab/used"]


@pytest.mark.vagrant
def test_a_lab_whose_box_is_missing_is_refused_pointing_to_boxes_add(place: Path) -> None:
    connector = VagrantConnector("vg", {"state_dir": str(place / "state"), "home": str(place / "vagrant.d"), "credential_seed": "s" * 32})
    spec = LabSpec(lab_id=99, image="tiny", owner="u", params={"backends": {"vagrant": {"template": "x", "box": "lab/absent"}}})
    with pytest.raises(PermanentError, match=r"box lab/absent \(libvirt\) is not installed \(labdesk boxes add vg lab/absent SOURCE\)"):
        connector.provision(spec)


def test_an_unknown_backend_is_one_line(rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert one_error_line(invoke(cli_env(rt.settings), "boxes", "list", "nowhere")) == "error: no backend named 'nowhere'"


def test_a_backend_without_boxes_says_so_in_one_line(rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = cli_env(rt.settings)
    assert invoke(env, "backends", "add", "cloud", "--kind", "fake").exit_code == 0
    for args in (("list", "cloud"), ("add", "cloud", "lab/a", "tiny.box"), ("remove", "cloud", "lab/a")):
        result = invoke(env, "boxes", *args)
        assert result.exit_code == 1
        assert one_error_line(result) == "error: backend cloud has no boxes to manage (FakeConnector; vagrant backends have)"
