"""A browser on the admin console (requests, real HTTP): its CSRF tokens, signing in, and the signed-in
local admin `root` that most admin page tests start from."""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
import requests

from app import create_app
from broker import admins
from tests.support.http import Learner, LiveServer, serve

PASSWORD = "correct horse battery staple"


class Browser(Learner):
    """A browser on the console: the CSRF token comes from the admin sign-in form or the nav's sign-out form."""

    def token(self, path: str = "/admin/login") -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.get(path).text)
        assert found, f"no form with a CSRF token on {path}"
        return found.group(1)

    def admin_sign_in(self, username: str, password: str, **extra: str) -> requests.Response:
        return self.post("/admin/login", data={"username": username, "password": password, "csrf_token": self.token(), **extra})


def add_root(rt: Any) -> None:
    """The local admin `root`, whose password is PASSWORD."""
    with rt.session() as db:
        admins.create_local(db, "root", PASSWORD)
        db.commit()


def signed_in_root(rt: Any, url: str) -> Browser:
    """A browser signed in as the local admin `root` (created here)."""
    add_root(rt)
    browser = Browser(url)
    assert browser.admin_sign_in("root", PASSWORD).url == url + "/admin/"
    return browser


@pytest.fixture
def console(rt: Any) -> Iterator[LiveServer]:
    """The app over HTTP with the local admin `root` (a module imports this fixture to use it)."""
    add_root(rt)
    yield from serve(create_app(rt.settings, rt))
