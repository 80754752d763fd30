"""`labdesk platforms …` and `labdesk keys …` as an admin or a script uses them, on both databases:
settings from `LABDESK_*` variables, `--json` that parses, and one `error: …` line (exit 1) for bad input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner, Result

from app import cli
from broker import runtime
from broker.runtime import Runtime
from lti import keys, platforms
from tests.support.workers import settings_env

Labdesk = Callable[..., Result]
LMS = "https://lms.example.edu"
ADD = ("platforms", "add", "--issuer", LMS, "--client-id", "client-1",
       "--auth-login-url", LMS + "/mod/lti/auth.php", "--auth-token-url", LMS + "/mod/lti/token.php",
       "--key-set-url", LMS + "/mod/lti/certs.php")


@pytest.fixture
def labdesk(rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Labdesk]:
    """`labdesk(*args)` in-process, with the test's database and Redis as a fresh process would see them."""
    monkeypatch.chdir(tmp_path)  # no stray ./labdesk.toml
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LABDESK_")}
    env.update({k: v for k, v in settings_env(rt.settings).items() if k.startswith("LABDESK_")})

    def run(*args: str) -> Result:
        runtime.install(None)
        try:
            return CliRunner().invoke(cli, list(args), env=env)
        finally:
            runtime.install(rt)

    yield run


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def error_line(result: Result) -> str:
    """The single `error: …` line a refused command printed on stderr (and nothing on stdout)."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


# -- platforms ------------------------------------------------------------------------------------------
def test_add_list_and_remove_a_platform(labdesk: Labdesk, rt: Runtime) -> None:
    added = json.loads(ok(labdesk(*ADD, "--deployment", "1", "--deployment", "2", "--name", "Moodle", "--json")))
    assert (added["issuer"], added["client_id"], added["deployments"]) == (LMS, "client-1", ["1", "2"])

    listed = json.loads(ok(labdesk("platforms", "list", "--json")))
    assert [p["id"] for p in listed] == [added["id"]]
    assert listed[0]["key_set_url"] == LMS + "/mod/lti/certs.php" and listed[0]["accept_new_deployments"] is False
    assert "Moodle" in ok(labdesk("platforms", "list"))

    assert "removed" in ok(labdesk("platforms", "remove", str(added["id"])))
    assert platforms.listing(rt) == []
    assert ok(labdesk("platforms", "list")).strip() == "no platforms registered"


def test_add_prints_a_readable_line(labdesk: Labdesk) -> None:
    out = ok(labdesk(*ADD, "--accept-new-deployments"))
    assert out.startswith("platform ") and "client client-1" in out and "(+ any new)" in out


def test_a_duplicate_is_refused_unless_replaced(labdesk: Labdesk, rt: Runtime) -> None:
    ok(labdesk(*ADD, "--deployment", "1"))

    line = error_line(labdesk(*ADD))
    assert "already registered" in line and "--replace" in line

    ok(labdesk(*ADD[:-1], LMS + "/keys.json", "--deployment", "2", "--replace"))
    [platform] = platforms.listing(rt)
    assert platform.key_set_url == LMS + "/keys.json" and platform.deployments == ("1", "2")


@pytest.mark.parametrize("option, value", [
    ("--issuer", "lms.example.edu"),
    ("--issuer", "https://lms.example.edu?x=1"),
    ("--auth-login-url", "ftp://lms.example.edu/auth"),
    ("--auth-token-url", "https://"),
    ("--key-set-url", "not a url"),
    ("--audience", "canvas.instructure.com"),
])
def test_a_bad_url_is_one_error_line(labdesk: Labdesk, rt: Runtime, option: str, value: str) -> None:
    args = list(ADD)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]

    line = error_line(labdesk(*args))
    assert option in line and repr(value) in line
    assert platforms.listing(rt) == []


def test_an_empty_client_id_is_refused(labdesk: Labdesk) -> None:
    args = list(ADD)
    args[args.index("--client-id") + 1] = " "
    assert "client id" in error_line(labdesk(*args))


def test_unknown_platform_ids_are_one_error_line(labdesk: Labdesk) -> None:
    assert error_line(labdesk("platforms", "remove", "99")) == "error: no platform 99"
    assert error_line(labdesk("platforms", "deployments", "add", "99", "d-1")) == "error: no platform 99"


def test_deployments_are_added_once(labdesk: Labdesk, rt: Runtime) -> None:
    platform_id = json.loads(ok(labdesk(*ADD, "--json")))["id"]

    assert "accepts deployment d-1" in ok(labdesk("platforms", "deployments", "add", str(platform_id), "d-1"))
    assert platforms.by_id(rt, platform_id).deployments == ("d-1",)
    assert "already has deployment" in error_line(labdesk("platforms", "deployments", "add", str(platform_id), "d-1"))
    assert "must not be empty" in error_line(labdesk("platforms", "deployments", "add", str(platform_id), " "))


def test_a_missing_option_is_a_usage_error(labdesk: Labdesk) -> None:
    result = labdesk("platforms", "add", "--issuer", LMS)
    assert result.exit_code == 2 and "--client-id" in result.stderr


# -- keys -----------------------------------------------------------------------------------------------
def test_keys_list_before_and_after_first_use(labdesk: Labdesk, rt: Runtime) -> None:
    assert "no keys yet" in ok(labdesk("keys", "list"))
    assert json.loads(ok(labdesk("keys", "list", "--json"))) == []

    keys.ensure_keys(rt)
    listed = json.loads(ok(labdesk("keys", "list", "--json")))
    assert sorted(k["status"] for k in listed) == ["current", "next"]
    assert "private" not in json.dumps(listed)


def test_rotate_promotes_next_and_keeps_the_old_key_published(labdesk: Labdesk, rt: Runtime) -> None:
    keys.ensure_keys(rt)
    before = {k["status"]: k["kid"] for k in keys.listing(rt)}

    out = ok(labdesk("keys", "rotate"))
    assert before["next"] in out and "stays published" in out and "next rotation" in out

    after = {k["kid"]: k["status"] for k in keys.listing(rt)}
    assert (after[before["next"]], after[before["current"]]) == ("current", "previous")
    published = {k["kid"] for k in keys.jwks(rt)["keys"]}
    assert before["current"] in published and before["next"] in published

    again = json.loads(ok(labdesk("keys", "rotate", "--json")))
    assert again["current"] != before["next"]
    assert {k["kid"]: k["status"] for k in keys.listing(rt)}[before["current"]] == "retired"
