"""An LMS's side of LTI Dynamic Registration, served over real HTTP on 127.0.0.1 for the tests.

It does what a platform does and nothing LabDesk-specific: it serves an OpenID configuration with the LTI
platform configuration claim, checks the registration token as a bearer on the registration endpoint
(single use, as Moodle's is), validates the client registration the tool posts, and answers with a client
id and a tool configuration carrying a deployment id. What it received is kept for the test to inspect.

    with RegistrationPlatform() as lms:
        requests.get(tool_url + "/lti/register", params=lms.start_params())
        lms.registrations  # the bodies the tool posted

`SilentServer` is a platform that accepts connections and never answers.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

PLATFORM_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-platform-configuration"
TOOL_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-tool-configuration"
SCOPES = (
    "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem",
    "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly",
    "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly",
    "https://purl.imsglobal.org/spec/lti-ags/scope/score",
    "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly",
    "openid",
)
MESSAGES = (
    {"type": "LtiResourceLinkRequest", "placements": ["course_navigation"]},
    {"type": "LtiDeepLinkingRequest", "placements": ["link_selection", "assignment_selection", "editor_button"]},
)


class InvalidRegistration(Exception):
    """The body breaks a rule of the spec; the platform answers 400 with the OAuth error shape."""


@dataclass
class RegistrationPlatform:
    """A platform on a free loopback port. `issuer=None` means its own base URL (the honest case)."""

    token: str = "registration-token-1"
    client_id: str = "client-1"
    deployment_id: str | None = "deployment-1"
    issuer: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)  # a key set to None is removed
    config_needs_token: bool = True  # Canvas wants the token on the configuration GET as well
    refuse_with: str | None = None  # answer every registration with this invalid_client_metadata reason
    registrations: list[dict[str, Any]] = field(default_factory=list)
    config_requests: list[dict[str, str]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._spent = False
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="registration-platform", daemon=True)

    # -- lifecycle --
    def __enter__(self) -> "RegistrationPlatform":
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- what a test uses --
    @property
    def openid_configuration_url(self) -> str:
        return self.url + "/lti/openid-configuration"

    @property
    def registration_endpoint(self) -> str:
        return self.url + "/lti/registrations"

    def start_params(self, token: str | None = "default") -> dict[str, str]:
        """The query the platform opens the tool's registration URL with."""
        params = {"openid_configuration": self.openid_configuration_url}
        token = self.token if token == "default" else token
        if token is not None:
            params["registration_token"] = token
        return params

    def configuration(self) -> dict[str, Any]:
        config = {
            "issuer": self.issuer or self.url,
            "authorization_endpoint": self.url + "/lti/auth",
            "token_endpoint": self.url + "/lti/token",
            "jwks_uri": self.url + "/lti/certs",
            "registration_endpoint": self.registration_endpoint,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "iss", "name", "given_name", "family_name", "email"],
            PLATFORM_CONFIGURATION: {
                "product_family_code": "testlms", "version": "1.0", "messages_supported": list(MESSAGES),
                "variables": ["Context.id", "ResourceLink.id"],
            },
        }
        for key, value in self.config_overrides.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        return config

    # -- the platform --
    @Request.application
    def _app(self, request: Request) -> Response:
        if request.path == "/lti/openid-configuration" and request.method == "GET":
            return self._serve_configuration(request)
        if request.path == "/lti/registrations" and request.method == "POST":
            return self._register(request)
        if request.path == "/lti/moved":  # an old address that now redirects
            return Response("", 302, headers={"Location": self.openid_configuration_url})
        return _json({"error": "not_found"}, 404)

    def _serve_configuration(self, request: Request) -> Response:
        self.config_requests.append(dict(request.headers))
        if self.config_needs_token and _bearer(request) != self.token:
            return _json({"error": "invalid_token", "error_description": "registration token required"}, 401)
        return _json(self.configuration())

    def _register(self, request: Request) -> Response:
        if self._spent or _bearer(request) != self.token:
            self.rejected.append("token")
            return _json({"error": "invalid_token", "error_description": "missing, wrong or used registration token"}, 401)
        body = request.get_json(silent=True)
        try:
            if self.refuse_with:
                raise InvalidRegistration(self.refuse_with)
            check_registration(body, self.configuration())
        except InvalidRegistration as invalid:
            self.rejected.append(str(invalid))
            return _json({"error": "invalid_client_metadata", "error_description": str(invalid)}, 400)
        self._spent = True
        self.registrations.append(body)
        tool = dict(body[TOOL_CONFIGURATION])
        if self.deployment_id is not None:
            tool["deployment_id"] = self.deployment_id
        return _json({**body, "client_id": self.client_id, TOOL_CONFIGURATION: tool}, 201)


def check_registration(body: Any, config: dict[str, Any]) -> None:
    """The client registration rules of LTI-DR 1.0 (section 3.5.2), as a platform enforces them."""
    if not isinstance(body, dict):
        raise InvalidRegistration("the body is not a JSON object")
    _require(body.get("application_type") == "web", "application_type must be web")
    _require("id_token" in (body.get("response_types") or []), "response_types must include id_token")
    _require({"implicit", "client_credentials"} <= set(body.get("grant_types") or []), "grant_types must include implicit and client_credentials")
    _require(body.get("token_endpoint_auth_method") == "private_key_jwt", "token_endpoint_auth_method must be private_key_jwt")
    for name in ("initiate_login_uri", "jwks_uri", "client_name"):
        _require(isinstance(body.get(name), str) and body[name], f"{name} is required")
    redirects = body.get("redirect_uris")
    _require(isinstance(redirects, list) and redirects and all(isinstance(u, str) for u in redirects), "redirect_uris must be a list of URIs")
    scopes = str(body.get("scope") or "").split()
    _require(set(scopes) <= set(config.get("scopes_supported") or ()), f"unsupported scope in {scopes}")
    _check_tool(body.get(TOOL_CONFIGURATION), body)


def _check_tool(tool: Any, body: dict[str, Any]) -> None:
    _require(isinstance(tool, dict), f"{TOOL_CONFIGURATION} is required")
    domain = tool.get("domain")
    _require(isinstance(domain, str) and domain, "domain is required")
    _require(isinstance(tool.get("target_link_uri"), str), "target_link_uri is required")
    for uri in [body["initiate_login_uri"], tool["target_link_uri"], *body["redirect_uris"]]:
        _require(urlsplit(uri).netloc == domain, f"{uri} is not on the tool's domain {domain}")
    _require(isinstance(tool.get("claims"), list) and "sub" in tool["claims"], "claims must list at least sub")
    messages = tool.get("messages")
    _require(isinstance(messages, list) and all(isinstance(m, dict) and m.get("type") for m in messages), "messages must be objects with a type")
    offered = {m["type"]: set(m["placements"]) for m in MESSAGES}
    for message in messages:
        _require(message["type"] in offered, f"message type {message['type']} is not supported")
        _require(set(message.get("placements", ())) <= offered[message["type"]], f"placement not offered in {message}")
    custom = tool.get("custom_parameters", {})
    _require(isinstance(custom, dict) and all(isinstance(v, str) for v in custom.values()), "custom_parameters values must be strings")


def _require(condition: object, reason: str) -> None:
    if not condition:
        raise InvalidRegistration(reason)


def _bearer(request: Request) -> str:
    scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
    return value if scheme.lower() == "bearer" else ""


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


class SilentServer:
    """A platform that accepts TCP connections (the kernel completes them) and never says a word."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def __enter__(self) -> "SilentServer":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._socket.close()
