"""A browser that arrives at LabDesk the way an LMS sends people: through a launch from the built-in emulator."""

from __future__ import annotations

import re

import requests

from broker.runtime import Runtime
from lti.emulator import launches
from tests.emulator.flow import auto_forms


class Person:
    """A browser that arrived through an emulator launch."""

    def __init__(self, rt: Runtime, sub: str) -> None:
        self.http = requests.Session()
        page = self.http.get(launches.start(rt, sub), timeout=10)
        form = auto_forms(page.text)[0]
        self.landed = self.http.post(form.action, data=form.fields, timeout=10)
        assert self.landed.status_code == 200, self.landed.text
        self.base = form.action.split("/lti/")[0]

    def csrf(self, path: str) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.http.get(self.base + path, timeout=10).text)
        assert found, f"no CSRF token on {path}"
        return found.group(1)

    def post(self, path: str, csrf_from: str, **kwargs: object) -> requests.Response:
        headers = {"X-CSRF-Token": self.csrf(csrf_from)}
        return self.http.post(self.base + path, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]
