"""Playing the tool's part against the emulator over HTTP: following the pages a browser would
auto-submit, asking for a service token with LabDesk's key, reading launch parameters.

Also usable by tests of the tool side: `auto_forms` reads the auto-posting pages both parties send.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import requests

from broker.runtime import Runtime
from lti import keys
from lti.emulator import site

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.iframes: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(values.get("action", ""), values.get("method", "get").lower()))
        elif tag == "input" and self.forms and values.get("name"):
            self.forms[-1].fields[values["name"]] = values.get("value", "")
        elif tag == "iframe":
            self.iframes.append(values)


def parse(html: str) -> _FormParser:
    parser = _FormParser()
    parser.feed(html)
    return parser


def auto_forms(html: str) -> list[Form]:
    return parse(html).forms


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def auth_request(rt: Runtime, login: dict[str, str], **changes: str) -> dict[str, str]:
    """The authorization request a tool sends after the login initiation `login` (its query parameters)."""
    params = {
        "scope": "openid", "response_type": "id_token", "response_mode": "form_post", "prompt": "none",
        "client_id": login["client_id"], "redirect_uri": site.tool_launch_url(rt.settings),
        "login_hint": login["login_hint"], "lti_message_hint": login["lti_message_hint"],
        "state": secrets.token_urlsafe(8), "nonce": secrets.token_urlsafe(8),
    }
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


def verify_id_token(base_url: str, token: str, issuer: str) -> dict[str, Any]:
    """The id_token's claims, verified the way the tool does: with the emulator's published key set."""
    key = jwt.PyJWKClient(base_url + "/emulator/jwks").get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=site.CLIENT_ID, issuer=issuer)


def assertion(rt: Runtime, **changes: Any) -> str:
    """A client assertion signed with LabDesk's current key, as the tool makes it."""
    now = int(time.time())
    claims = {"iss": site.CLIENT_ID, "sub": site.CLIENT_ID, "aud": site.token_url(rt.settings),
              "iat": now, "exp": now + 300, "jti": secrets.token_urlsafe(16)}
    claims.update(changes)
    return keys.signing_key(rt).sign({k: v for k, v in claims.items() if v is not None})


def token_request(rt: Runtime, scopes: list[str], client_assertion: str | None = None) -> requests.Response:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion or assertion(rt), "scope": " ".join(scopes)}
    return requests.post(site.token_url(rt.settings), data=form, timeout=10)


def access_token(rt: Runtime, scopes: list[str]) -> str:
    response = token_request(rt, scopes)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]
