"""LTI Dynamic Registration 1.0 (1EdTech) at `/lti/register`, and Canvas' developer-key JSON at
`/lti/canvas.json`: the two ways an LMS admin installs LabDesk without copying its URLs by hand.

Dynamic Registration: the LMS opens `/lti/register?openid_configuration=URL&registration_token=TOKEN` in a
frame or window. LabDesk reads the platform's OpenID configuration, checks that the issuer it names
contains that URL (so a configuration cannot claim another platform's issuer), posts its client
registration with the token, records the client id and deployment the platform assigned, and asks the
LMS to close the frame. Any failure is a 400 page saying what was wrong, plus one log line: the admin is
looking at this page and needs the reason, never a trace.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

import requests
from flask import Blueprint, Response, jsonify, render_template, request

from broker.config import Settings
from broker.runtime import Runtime
from lti import invites, platforms
from lti.claims import (
    DEEP_LINKING_REQUEST,
    RESOURCE_LINK_REQUEST,
    SCOPE_LINEITEM,
    SCOPE_LINEITEM_READONLY,
    SCOPE_NRPS,
    SCOPE_RESULT_READONLY,
    SCOPE_SCORE,
)
from web.context import rt

log = logging.getLogger(__name__)
registration = Blueprint("registration", __name__, template_folder="templates")

PLATFORM_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-platform-configuration"
TOOL_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-tool-configuration"
SERVICE_SCOPES = (SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_RESULT_READONLY, SCOPE_SCORE, SCOPE_NRPS)
CLAIMS = ("iss", "sub", "name", "given_name", "family_name", "email")
# Where an LMS offers "add content": Canvas' module and assignment pickers, Moodle's add-content menu,
# the spec's example name. Only those the platform advertises are requested.
PICKER_PLACEMENTS = ("link_selection", "assignment_selection", "AddContentMenu", "ContentArea")
REQUIRED_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri", "registration_endpoint")
MAX_ANSWER_BYTES = 1 << 20
DESCRIPTION = "Remote lab desktops in the browser: instructors pick a lab, learners open their own desktop."
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}  # the URL carries the token


class RegistrationFailed(Exception):
    """Why a registration cannot complete, in a sentence an LMS admin can act on."""


@dataclass(frozen=True)
class ToolUrls:
    """LabDesk's own URLs as an LMS must know them, all derived from `public_url`."""

    base: str

    @classmethod
    def of(cls, settings: Settings) -> "ToolUrls":
        return cls(settings.public_url.rstrip("/"))

    @property
    def login(self) -> str:
        return self.base + "/lti/login"

    @property
    def launch(self) -> str:
        return self.base + "/lti/launch"

    @property
    def jwks(self) -> str:
        return self.base + "/lti/jwks"

    @property
    def logo(self) -> str:
        return self.base + "/lti/logo.svg"

    @property
    def domain(self) -> str:
        return urlsplit(self.base).netloc


@dataclass(frozen=True)
class PlatformConfiguration:
    """The parts of a platform's OpenID configuration that registration and launches use."""

    url: str
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    registration_endpoint: str
    audience: str = ""  # the token `aud`, when the platform names one other than its token endpoint
    scopes_supported: tuple[str, ...] | None = None  # None: the platform did not say
    messages: dict[str, tuple[str, ...]] | None = None  # message type -> placements offered; None: not said
    product: str = ""


@dataclass(frozen=True)
class Registered:
    """What the registration page reports back to the admin."""

    platform: platforms.PlatformInfo
    scopes: tuple[str, ...]
    product: str
    warnings: tuple[str, ...] = field(default=())


# -- routes ---------------------------------------------------------------------------------------------
@registration.get("/lti/register")
def register():  # type: ignore[no-untyped-def]
    config_url = (request.args.get("openid_configuration") or "").strip()
    token = (request.args.get("registration_token") or "").strip()
    invite = (request.args.get("invite") or "").strip()
    try:
        if not rt().settings.open_registration and not invites.valid(rt(), invite):
            raise RegistrationFailed(
                "This registration URL is not valid: it was already used, has expired or has no invitation. "
                "Ask the LabDesk administrator for a new one (labdesk platforms invite)."
            )
        done = dynamic_registration(rt(), config_url, token)
        invites.use(rt(), invite)
    except RegistrationFailed as failed:
        log.warning("lti dynamic registration failed: configuration=%s reason=%s", _without_query(config_url), failed)
        return render_template("registration/failed.html", reason=str(failed)), 400, NO_STORE
    log.info("lti dynamic registration: platform %s issuer=%s client_id=%s deployments=%s",
             done.platform.id, done.platform.issuer, done.platform.client_id, ",".join(done.platform.deployments) or "any")
    return render_template("registration/done.html", done=done), 200, NO_STORE


@registration.get("/lti/canvas.json")
def canvas_json() -> Response:
    return jsonify(canvas_configuration(rt().settings))


@registration.get("/lti/logo.svg")
def logo() -> Response:
    """The icon LMSs show beside LabDesk links (registration and the Canvas JSON point here)."""
    response = Response(LOGO_SVG, mimetype="image/svg+xml")
    response.cache_control.max_age = 86400
    return response


LOGO_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" role="img" aria-label="LabDesk">'
    '<rect x="4" y="8" width="56" height="38" rx="4" fill="#1f4e79"/>'
    '<rect x="9" y="13" width="46" height="28" rx="2" fill="#e8f1fa"/>'
    '<path d="M14 22l6 5-6 5" fill="none" stroke="#1f4e79" stroke-width="3" stroke-linecap="round"/>'
    '<rect x="24" y="30" width="12" height="3" fill="#1f4e79"/>'
    '<rect x="26" y="46" width="12" height="6" fill="#1f4e79"/><rect x="18" y="52" width="28" height="4" rx="2" fill="#1f4e79"/>'
    "</svg>"
)


# -- the registration flow ------------------------------------------------------------------------------
def dynamic_registration(runtime: Runtime, config_url: str, token: str) -> Registered:
    """Run the whole exchange with one platform and record what it assigned."""
    if not config_url:
        raise RegistrationFailed(
            "This address is LabDesk's Dynamic Registration URL. Paste it into your LMS's tool registration "
            "(for example Moodle's 'Tool URL' beside 'Add LTI Advantage'); the LMS opens it with its "
            "openid_configuration and registration_token."
        )
    _check_http_url(config_url, "the openid_configuration parameter")
    timeout = runtime.settings.lti_http_timeout
    config = read_configuration(config_url, call("GET", config_url, token, timeout, "the platform's OpenID configuration"))
    urls = ToolUrls.of(runtime.settings)
    body, warnings = client_registration(urls, runtime.settings.tool_name, config)
    answer = call("POST", config.registration_endpoint, token, timeout, "the platform's registration endpoint", body)
    platform = record(runtime, config, answer)
    granted = tuple(str(answer.get("scope") or body["scope"]).split())
    if not platform.deployments:
        warnings.append("The platform did not name a deployment; LabDesk accepts the deployments it launches with.")
    return Registered(platform, granted, config.product, tuple(warnings))


def check_issuer(issuer: str, config_url: str) -> None:
    """The spec's check: the configuration must live under the issuer it names. Compared at a path
    boundary, so `https://lms.example.edu` does not vouch for `https://lms.example.edu.evil.test/…`."""
    parts = _split(issuer)
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment or "@" in parts.netloc:
        raise RegistrationFailed(f"The platform's issuer {issuer!r} is not an http(s) URL without query or fragment.")
    prefix = issuer if issuer.endswith("/") else issuer + "/"
    if config_url != issuer and not config_url.startswith(prefix):
        raise RegistrationFailed(
            f"The configuration at {config_url} names the issuer {issuer}, which does not contain that address. "
            "A platform's configuration must be served under its own issuer URL."
        )


def read_configuration(config_url: str, doc: dict[str, Any]) -> PlatformConfiguration:
    """Check the OpenID configuration has everything a registration and later launches need."""
    issuer = doc.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise RegistrationFailed("The platform's OpenID configuration has no 'issuer'.")
    check_issuer(issuer, config_url)
    endpoints = {name: _endpoint(doc, name) for name in REQUIRED_ENDPOINTS}
    lti = doc.get(PLATFORM_CONFIGURATION)
    if not isinstance(lti, dict):
        raise RegistrationFailed(
            f"The platform's OpenID configuration lacks the LTI platform configuration ({PLATFORM_CONFIGURATION}); "
            "is this an LTI 1.3 platform?"
        )
    scopes = doc.get("scopes_supported")
    return PlatformConfiguration(
        url=config_url, issuer=issuer, **endpoints, audience=_audience(doc.get("authorization_server")),
        scopes_supported=tuple(str(s) for s in scopes) if isinstance(scopes, list) else None,
        messages=offered_messages(lti), product=_product(lti),
    )


def _endpoint(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise RegistrationFailed(f"The platform's OpenID configuration has no '{name}'.")
    _check_http_url(value, f"The platform's '{name}'")
    return value


def _audience(value: Any) -> str:
    """`authorization_server` names the token audience; a bare host name (Canvas sends one) is not one."""
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else ""


def _product(lti: dict[str, Any]) -> str:
    return " ".join(str(lti.get(key) or "") for key in ("product_family_code", "version")).strip()


def offered_messages(lti: dict[str, Any]) -> dict[str, tuple[str, ...]] | None:
    """Message type -> placements the platform offers. The spec lists objects with their placements;
    Moodle lists bare type names with one `placements` list beside them."""
    listed = lti.get("messages_supported")
    if not isinstance(listed, list):
        return None
    shared = _strings(lti.get("placements"))
    offered: dict[str, tuple[str, ...]] = {}
    for item in listed:
        if isinstance(item, str):
            offered[item] = shared
        elif isinstance(item, dict) and isinstance(item.get("type"), str):
            offered[item["type"]] = _strings(item.get("placements")) or shared
    return offered


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def client_registration(urls: ToolUrls, name: str, config: PlatformConfiguration) -> tuple[dict[str, Any], list[str]]:
    """LabDesk's registration request, shaped by what the platform offers, and warnings for the admin."""
    scopes = [s for s in SERVICE_SCOPES if config.scopes_supported is None or s in config.scopes_supported]
    messages, warnings = _messages(urls, name, config.messages)
    if len(scopes) < len(SERVICE_SCOPES):
        warnings.append("The platform does not offer every grade and roster scope; LabDesk asked for those it offers.")
    body = {
        "application_type": "web",
        "response_types": ["id_token"],
        "grant_types": ["implicit", "client_credentials"],
        "initiate_login_uri": urls.login,
        "redirect_uris": [urls.launch],
        "client_name": name,
        "jwks_uri": urls.jwks,
        "logo_uri": urls.logo,
        "token_endpoint_auth_method": "private_key_jwt",
        "scope": " ".join(scopes),
        TOOL_CONFIGURATION: {
            "domain": urls.domain,
            "target_link_uri": urls.launch,
            "description": DESCRIPTION,
            "claims": list(CLAIMS),
            "messages": messages,
            # Labs are bound per link by deep linking's content items; nothing is needed tool-wide.
            "custom_parameters": {},
            "https://canvas.instructure.com/lti/privacy_level": "public",
            "https://canvas.instructure.com/lti/tool_id": "labdesk",
        },
    }
    return body, warnings


def _messages(urls: ToolUrls, name: str, offered: dict[str, tuple[str, ...]] | None) -> tuple[list[dict[str, Any]], list[str]]:
    """A resource-link message (every platform launches those) and the lab picker as deep linking, at the
    picker placements the platform offers."""
    launch = {"type": RESOURCE_LINK_REQUEST, "target_link_uri": urls.launch, "label": name}
    picker: dict[str, Any] = {
        "type": DEEP_LINKING_REQUEST, "target_link_uri": urls.launch, "label": f"{name}: add a lab", "icon_uri": urls.logo,
    }
    if offered is not None and DEEP_LINKING_REQUEST not in offered:
        return [launch], ["The platform does not offer deep linking, so instructors cannot pick labs from it."]
    placements = [p for p in PICKER_PLACEMENTS if offered and p in offered[DEEP_LINKING_REQUEST]]
    if placements:
        picker["placements"] = placements
    return [launch, picker], []


def record(runtime: Runtime, config: PlatformConfiguration, answer: dict[str, Any]) -> platforms.PlatformInfo:
    """Store the registration; registering again with the same client id updates it."""
    client_id = str(answer.get("client_id") or "").strip()
    if not client_id:
        raise RegistrationFailed("The platform accepted the registration but its answer has no client_id.")
    tool = answer.get(TOOL_CONFIGURATION)
    deployment = str(tool.get("deployment_id") or "").strip() if isinstance(tool, dict) else ""
    try:
        return platforms.add(
            runtime, config.issuer, client_id, config.authorization_endpoint, config.token_endpoint, config.jwks_uri,
            deployments=[deployment] if deployment else [], name=_name(config), auth_audience=config.audience,
            accept_new_deployments=not deployment, replace=True,
        )
    except platforms.RegistrationError as exc:
        raise RegistrationFailed(f"LabDesk could not store the registration: {exc}.") from None


def _name(config: PlatformConfiguration) -> str:
    host = urlsplit(config.issuer).netloc
    family = config.product.split(" ")[0] if config.product else ""
    return f"{family} {host}".strip()


# -- HTTP to the platform -------------------------------------------------------------------------------
def call(method: str, url: str, token: str, timeout: int, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request to the platform, with the registration token as bearer when there is one. Bounded in
    time and size, no redirects followed (the token must not travel elsewhere); any failure is a sentence."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    deadline = time.monotonic() + 2 * timeout
    try:
        with requests.request(method, url, headers=headers, json=body, timeout=(timeout, timeout),
                              allow_redirects=False, stream=True) as answer:
            content = _read(answer, deadline)
    except requests.Timeout:
        raise RegistrationFailed(f"{_cap(what)} at {url} did not answer within {timeout} seconds.") from None
    except requests.RequestException as exc:
        raise RegistrationFailed(f"{_cap(what)} at {url} could not be reached ({_first_line(exc)}).") from None
    if answer.is_redirect:
        raise RegistrationFailed(
            f"{_cap(what)} at {url} redirects to {answer.headers.get('Location')}; LabDesk does not send the "
            "registration token on to another address. Configure the LMS with its final URL."
        )
    if not 200 <= answer.status_code < 300:
        raise RegistrationFailed(f"{_cap(what)} answered HTTP {answer.status_code}: {_error_text(content)}")
    return _json_object(content, what)


def _read(answer: requests.Response, deadline: float) -> bytes:
    content = b""
    for chunk in answer.iter_content(65536):
        content += chunk
        if len(content) > MAX_ANSWER_BYTES:
            raise RegistrationFailed(f"The platform's answer from {answer.url} is larger than {MAX_ANSWER_BYTES} bytes.")
        if time.monotonic() > deadline:
            raise requests.Timeout()
    return content


def _json_object(content: bytes, what: str) -> dict[str, Any]:
    data = _parsed(content)
    if not isinstance(data, dict):
        raise RegistrationFailed(f"{_cap(what)} did not answer with a JSON object.")
    return data


def _error_text(content: bytes) -> str:
    """The platform's own reason: OAuth's error/error_description, Canvas' errors list, else the text."""
    data = _parsed(content)
    if isinstance(data, dict):
        errors = data.get("errors")
        listed = [e.get("message", e) if isinstance(e, dict) else e for e in errors] if isinstance(errors, list) else [errors]
        parts = [data.get("error"), data.get("error_description"), *listed, data.get("message")]
        text = " ".join(str(p) for p in parts if p)
    else:
        text = content.decode("utf-8", "replace")
    return _first_line(text)[:300] or "no reason given"


def _parsed(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:  # not JSON, or not UTF-8
        return None


def _first_line(value: object) -> str:
    return next(iter(str(value).strip().splitlines()), "")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _without_query(url: str) -> str:
    """A URL fit for the log: some platforms may put secrets in the query."""
    parts = _split(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts and parts.netloc else (url[:100] or "-")


def _check_http_url(value: str, what: str) -> None:
    parts = _split(value)
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        raise RegistrationFailed(f"{_cap(what)} is not an http(s) URL: {value[:200]!r}.")


def _split(url: str) -> SplitResult | None:
    """`url` in parts, or None for what urlsplit cannot read (`http://[::1` raises ValueError)."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


# -- Canvas ---------------------------------------------------------------------------------------------
def canvas_configuration(settings: Settings) -> dict[str, Any]:
    """Canvas' developer-key JSON ("Paste JSON" / "Enter URL"): the lab picker in modules and assignments."""
    urls, name = ToolUrls.of(settings), settings.tool_name

    def picker(placement: str) -> dict[str, Any]:
        return {
            "placement": placement, "message_type": DEEP_LINKING_REQUEST, "target_link_uri": urls.launch,
            "text": f"{name} lab", "icon_url": urls.logo, "selection_width": 1000, "selection_height": 720,
        }

    return {
        "title": name,
        "description": DESCRIPTION,
        "oidc_initiation_url": urls.login,
        "target_link_uri": urls.launch,
        "public_jwk_url": urls.jwks,
        "scopes": list(SERVICE_SCOPES),
        "extensions": [{
            "platform": "canvas.instructure.com",
            "domain": urls.domain,
            "tool_id": "labdesk",
            "privacy_level": "public",
            "settings": {
                "text": name, "icon_url": urls.logo,
                "placements": [picker("link_selection"), picker("assignment_selection")],
            },
        }],
        "custom_fields": {},
    }
