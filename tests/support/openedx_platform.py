"""A real third-party LTI 1.3 platform for end-to-end tests: Open edX's `LtiAdvantageConsumer`, over HTTP.

No LabDesk code takes part on the platform side: the id_token, its signature and claims, the JWKS,
the token endpoint's check of the tool's client assertion (fetched from the tool's JWKS URL) and the
AGS bearer-token scope checks are Open edX's code (`lti-consumer-xblock`). It runs in its own
process (`openedx_platform_server.py`) because `lti_consumer` needs Django settings configured
globally, and those must not leak into the test process.

    with OpenEdxPlatform(login_url, launch_url, jwks_url) as platform:
        response = platform.launch(requests.Session(), user_id="learner-1", resource_link_id="rl-1")
        platform.scores()

`launch` drives the browser's part of the OIDC flow with the caller's session, so the tool's state
cookie flows: GET the login-initiation URL Open edX made, follow the tool's redirect to the
platform's auth URL, read the auto-submitting form Open edX answers with, POST it to the tool.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urljoin

import requests

from tests.support.processes import stop_process
from tests.support.openedx_platform_server import PlatformConfig  # the one description of the tool, both sides

SERVER_SCRIPT = Path(__file__).with_name("openedx_platform_server.py")
REDIRECT_CODES = (301, 302, 303, 307, 308)
ROLE_LEARNER = "student"
ROLE_INSTRUCTOR = "instructor"
ROLE_STAFF = "staff"


def openedx_missing() -> str | None:
    """Why the platform cannot run here, or None. Looks the package up without importing it (no Django)."""
    if importlib.util.find_spec("lti_consumer") is None:
        return "lti-consumer-xblock (Open edX's LTI consumer, package lti_consumer) is not installed"
    return None


class OpenEdxPlatformError(RuntimeError):
    """The platform did not start, or a launch left the OIDC flow; the message says where and why."""


@dataclass
class LaunchRequest:
    """What the LMS knows when it renders the LTI block: Lti1p3LaunchData's fields, plus extra claims.

    `role` is Open edX's vocabulary (student, staff, instructor, ...), mapped by the consumer to LIS
    role URIs. `roles`, when given, replaces that claim with exact URIs; Open edX itself cannot do
    that, so it is for tests of roles Open edX never sends.
    """

    user_id: str
    resource_link_id: str
    role: str | None = ROLE_LEARNER
    context_id: str = "course-v1:LabDesk+Lab+2025"
    context_title: str | None = "LabDesk Lab - 2025"
    context_label: str | None = None
    name: str | None = None
    email: str | None = None
    preferred_username: str | None = None
    return_url: str | None = None
    custom_parameters: dict[str, str] = field(default_factory=dict)
    extra_claims: dict[str, Any] = field(default_factory=dict)


class _FormReader(HTMLParser):
    """The first form of a page: its action and its inputs, unescaped."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and self.action is not None and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")


def read_form(page: str) -> tuple[str, dict[str, str]]:
    reader = _FormReader()
    reader.feed(page)
    if not reader.action:
        raise OpenEdxPlatformError(f"the platform's auth answer has no launch form: {page[:500]}")
    return reader.action, reader.fields


class OpenEdxPlatform:
    """Open edX's LTI 1.3 consumer as a platform process on 127.0.0.1, for the life of a `with` block."""

    def __init__(
        self,
        tool_login_url: str,
        tool_launch_url: str,
        tool_jwks_url: str,
        *,
        client_id: str = "openedx-client",
        deployment_id: str = "1",
        redirect_uris: list[str] | None = None,
        lineitem_label: str = "LabDesk lab",
        score_maximum: int = 100,
        ags_programmatic: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        self.client_id = client_id
        self.deployment_id = deployment_id
        self.registration = PlatformConfig(
            tool_login_url=tool_login_url, tool_launch_url=tool_launch_url, tool_jwks_url=tool_jwks_url,
            client_id=client_id, deployment_id=deployment_id, redirect_uris=redirect_uris or [tool_launch_url],
            lineitem_label=lineitem_label, score_maximum=score_maximum, ags_programmatic=ags_programmatic,
        )
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._issuer: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> "OpenEdxPlatform":
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Launch the server with this interpreter (the venv's) and wait until it serves its JWKS."""
        self._log = tempfile.NamedTemporaryFile("w+", prefix="openedx-platform-", suffix=".log", delete=False)
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        self._process = subprocess.Popen(
            # -P: keep tests/support off sys.path, where http.py would shadow the standard library's http
            [sys.executable, "-P", str(SERVER_SCRIPT), json.dumps(asdict(self.registration))],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, text=True, env=env,
        )
        try:
            port = self._read_port()
            self._issuer = f"http://127.0.0.1:{port}"
            requests.get(self.jwks_url, timeout=10).raise_for_status()
        except BaseException:
            self.stop()
            raise

    def _read_port(self) -> int:
        """The server prints `READY <port>` once bound and configured; its stderr explains a failure."""
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._process.stdout], [], [], 0.2)
            if ready:
                line = self._process.stdout.readline()
                if line.startswith("READY "):
                    return int(line.split()[1])
                if not line and self._process.poll() is not None:
                    break
        raise OpenEdxPlatformError(f"the Open edX platform did not start:\n{self.log_text()}")

    def stop(self) -> None:
        """Stop our own process by its PID; kill it if it ignores SIGTERM."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()

    def log_text(self) -> str:
        """The platform's stderr (request log, warnings from lti_consumer), for failure messages."""
        if self._log is None:
            return ""
        return Path(self._log.name).read_text(errors="replace")

    # -- endpoints -----------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise OpenEdxPlatformError("the platform is not running")
        return self._issuer

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def auth_login_url(self) -> str:
        return f"{self.issuer}/auth"

    @property
    def lineitems_url(self) -> str:
        return f"{self.issuer}/lineitems"

    @property
    def lineitem_url(self) -> str:
        """The declarative line item Open edX puts in the AGS claim's `lineitem`."""
        return f"{self.issuer}/lineitems/1"

    # -- the launch ----------------------------------------------------------------------------

    def launch(
        self,
        session: requests.Session,
        *,
        user_id: str,
        resource_link_id: str,
        role: str | None = ROLE_LEARNER,
        roles: list[str] | None = None,
        context_id: str = "course-v1:LabDesk+Lab+2025",
        extra_claims: dict[str, Any] | None = None,
        timeout: float = 30.0,
        **launch_data: Any,
    ) -> requests.Response:
        """One launch over HTTP with `session`; returns the tool's answer after its own redirects.

        `launch_data` takes LaunchRequest's other fields (name, email, preferred_username,
        context_title, context_label, return_url, custom_parameters).
        """
        claims = dict(extra_claims or {})
        if roles is not None:
            claims["https://purl.imsglobal.org/spec/lti/claim/roles"] = list(roles)
        wanted = LaunchRequest(user_id=user_id, resource_link_id=resource_link_id, role=role, context_id=context_id,
                               extra_claims=claims, **launch_data)
        login_url = self.login_initiation_url(wanted)
        auth_url = self._follow_tool_login(session, login_url, timeout)
        action, fields = self._auth_form(session, auth_url, timeout)
        return session.post(action, data=fields, allow_redirects=True, timeout=timeout)

    def login_initiation_url(self, wanted: LaunchRequest) -> str:
        """Open edX's `prepare_preflight_url`: the URL the LMS puts in the LTI block's iframe."""
        response = requests.post(f"{self.issuer}/_harness/preflight", json=asdict(wanted), timeout=10)
        response.raise_for_status()
        url: str = response.json()["url"]
        return url

    def _follow_tool_login(self, session: requests.Session, url: str, timeout: float) -> str:
        """GET the tool's login initiation, following its redirects until one points at our auth URL."""
        for _ in range(5):
            response = session.get(url, allow_redirects=False, timeout=timeout)
            if response.status_code not in REDIRECT_CODES:
                raise OpenEdxPlatformError(
                    f"the tool's login initiation answered {response.status_code}, not a redirect to "
                    f"{self.auth_login_url}: {response.text[:500]}")
            url = urljoin(response.url, response.headers["Location"])
            if url.split("?")[0] == self.auth_login_url:
                return url
        raise OpenEdxPlatformError(f"the tool's login initiation never redirected to {self.auth_login_url}")

    def _auth_form(self, session: requests.Session, auth_url: str, timeout: float) -> tuple[str, dict[str, str]]:
        """The platform's answer to the tool's auth request: Open edX's auto-submitting launch form."""
        response = session.get(auth_url, allow_redirects=False, timeout=timeout)
        if response.status_code != 200:
            raise OpenEdxPlatformError(
                f"Open edX refused the tool's auth request ({response.status_code}): {response.text[:500]}")
        return read_form(response.text)

    # -- what arrived --------------------------------------------------------------------------

    def _records(self, kind: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.issuer}/_harness/{kind}", timeout=10)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    def scores(self) -> list[dict[str, Any]]:
        """Accepted AGS scores, oldest first: {"lineitem": url, "score": the JSON the tool posted}."""
        return self._records("scores")

    def token_requests(self) -> list[dict[str, Any]]:
        """Every token request: {"status", "error", "requested_scope", "granted_scope"}."""
        return self._records("token-requests")

    def auth_requests(self) -> list[dict[str, Any]]:
        """The parameters of every OIDC auth request the tool's redirect carried to the platform."""
        return self._records("auth-requests")
