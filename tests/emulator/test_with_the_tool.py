"""The emulator and the real LabDesk tool in one server agree: a deep-linking launch from the course page
goes through the tool's login and launch checks to its lab picker, and the picker's signed answer comes
back through the emulator's deep-link return (a cancel, so no catalogue is needed)."""

from __future__ import annotations

import requests

from lti.emulator import people
from tests.emulator.conftest import Emulated
from tests.emulator.flow import Form, auto_forms, parse


def _submit(browser: requests.Session, form: Form, base: str, **extra: str) -> requests.Response:
    action = form.action if form.action.startswith("http") else base + form.action
    return browser.post(action, data={**form.fields, **extra}, timeout=10)


def test_a_deep_linking_round_trip_through_the_real_tool(emulated: Emulated) -> None:
    browser = requests.Session()
    course = browser.post(emulated.emulator + "/launch", data={"user": people.GRACE.sub, "deep_linking": "1"}, timeout=10)
    login = browser.get(parse(course.text).iframes[0]["src"], timeout=10)  # the tool's login → the emulator's auth
    assert login.status_code == 200 and login.url.startswith(emulated.emulator + "/auth"), login.text

    picker = _submit(browser, auto_forms(login.text)[0], emulated.url)  # id_token → /lti/launch → the picker
    assert picker.status_code == 200 and "/lti/deep-link/" in picker.url, picker.text
    (choice,) = [f for f in auto_forms(picker.text) if "csrf_token" in f.fields]

    answer = _submit(browser, choice, emulated.url, action="cancel")  # the tool signs an empty response
    (response,) = auto_forms(answer.text)
    assert response.action == emulated.emulator + "/deep-link-return" and response.fields["JWT"]
    returned = _submit(browser, response, emulated.url)
    assert returned.status_code == 200 and "Nothing was added" in returned.text, returned.text
