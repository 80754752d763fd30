"""The emulator's registration, key and demo course: made once, the same for every process, even when
several processes start at the same moment."""

from __future__ import annotations

import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import requests
from sqlalchemy import func, select

from broker.runtime import Runtime
from lti import platforms
from lti.emulator import register_with_tool, signing, site, store
from lti.models import Deployment, Platform
from tests.emulator.conftest import Emulated


def _together(count: int, action: Callable[[], Any]) -> list[Any]:
    """Run `action` in `count` threads released at the same moment."""
    gate = threading.Barrier(count)

    def run() -> Any:
        gate.wait()
        return action()

    with ThreadPoolExecutor(count) as pool:
        return [f.result() for f in [pool.submit(run) for _ in range(count)]]


def test_registration_is_idempotent_and_safe_when_processes_race(rt: Runtime) -> None:
    found = _together(4, lambda: register_with_tool(rt))
    register_with_tool(rt)
    with rt.session() as session:
        assert session.scalar(select(func.count()).select_from(Platform)) == 1
        assert session.scalar(select(func.count()).select_from(Deployment)) == 1
    info = platforms.find(rt, site.issuer(rt.settings), site.CLIENT_ID)
    assert info is not None and {f.id for f in found} == {info.id}
    base = rt.settings.public_url + "/emulator"
    assert (info.auth_login_url, info.auth_token_url, info.key_set_url) == (base + "/auth", base + "/token", base + "/jwks")
    assert info.deployments == (site.DEPLOYMENT_ID,)


def test_the_key_is_made_once_private_to_its_owner_and_the_same_for_every_process(tmp_path: Path) -> None:
    path = tmp_path / "data" / signing.FILE_NAME
    pems = _together(4, lambda: signing._read_or_create(path))
    assert len(set(pems)) == 1 and pems[0] == path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [signing.FILE_NAME]  # no temporary file left behind
    assert signing._from_pem(pems[0]).kid == signing._from_pem(path.read_bytes()).kid


def test_the_demo_course_is_seeded_once_when_processes_race(rt: Runtime) -> None:
    _together(4, lambda: store.ensure_seeded(rt))
    assert [link["id"] for link in store.links(rt, site.COURSE_ID)] == [store.SEED_LINK_ID]
    (item,) = store.line_items(rt, site.COURSE_ID)
    assert (item["id"], item["scoreMaximum"], item["resourceLinkId"]) == (store.SEED_LINE_ITEM_ID, 10, store.SEED_LINK_ID)
    assert store.link(rt, site.COURSE_ID, store.SEED_LINK_ID)["custom"] == {"lab": "local-desktop"}
    assert store.course(rt, site.COURSE_ID)["title"] == "Demo course"
    assert len(store.members(rt, site.COURSE_ID)) == 29


def test_the_published_key_set_verifies_what_the_emulator_signs(emulated: Emulated) -> None:
    published = requests.get(emulated.emulator + "/jwks", timeout=10).json()
    (key,) = published["keys"]
    assert key["kid"] == signing.key(emulated.rt.settings).kid and key["alg"] == "RS256" and "d" not in key
    assert (Path(emulated.rt.settings.data_dir) / signing.FILE_NAME).exists()
