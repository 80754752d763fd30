"""A browser on the admin console (requests, real HTTP): its CSRF tokens, signing in, and the signed-in
local admin `root` that most admin page tests start from."""

from __future__ import annotations

import re
from typing import Any

import requests

from broker import admins
from tests.support.http import Learner

PASSWORD = "correct horse battery staple"


class Browser(Learner):
    """A browser on the console: the CSRF token comes from the admin sign-in form or the nav's sign-out form."""

    def token(self, path: str = "/admin/login") -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.get(path).text)
        assert found, f"no form with a CSRF token on {path}"
        return found.group(1)

    def admin_sign_in(self, username: str, password: str, **extra: str) -> requests.Response:
        return self.post("/admin/login", data={"username": username, "password": password, "csrf_token": self.token(), **extra})


def signed_in_root(rt: Any, url: str) -> Browser:
    """A browser signed in as the local admin `root` (created here)."""
    with rt.session() as db:
        admins.create_local(db, "root", PASSWORD)
        db.commit()
    browser = Browser(url)
    assert browser.admin_sign_in("root", PASSWORD).url == url + "/admin/"
    return browser
