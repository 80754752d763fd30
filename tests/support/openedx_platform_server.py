"""An LTI 1.3 platform whose protocol work is done by Open edX's own consumer core, served over HTTP.

Run by `tests/support/openedx_platform.py` as a separate process, so that the Django settings that
`lti_consumer` needs (`settings.configure`, `django.setup`) never exist in the test process. The
process binds 127.0.0.1 on a free port, prints `READY <port>` on stdout, and serves until SIGTERM.

What is Open edX's and what is ours: the OIDC login URL, the id_token (claims, signature, nonce,
state, the preflight checks), the JWKS, the token endpoint (client-assertion check against the
tool's JWKS over HTTP, scope filtering, the access token) and the bearer-token/scope checks are all
`LtiAdvantageConsumer` calls, used the way `lti_consumer.plugin.views` uses them. Only the glue that
Open edX does with Django REST framework and its models (routing, content types, the score
serializer's rules, storage) is re-stated here in a few lines, keeping Open edX's status codes.

Argument: one JSON object with tool_login_url, tool_launch_url, tool_jwks_url, client_id,
deployment_id, redirect_uris, platform_name, lineitem_label, score_maximum, ags_programmatic.
"""

from __future__ import annotations

import html
import json
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

MEDIA_SCORE = "application/vnd.ims.lis.v1.score+json"
MEDIA_LINEITEM = "application/vnd.ims.lis.v2.lineitem+json"
MEDIA_LINEITEMS = "application/vnd.ims.lis.v2.lineitemcontainer+json"
SCOPE_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_LINEITEM_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
NO_PERMISSION = "You do not have permission to perform this action."

Json = dict[str, Any]


def configure_django(platform_name: str) -> None:
    """The smallest Django that `lti_consumer` runs on.

    Why each setting: PLATFORM_NAME feeds the tool_platform claim; the locmem cache holds the launch
    data between the login initiation and the auth request (TieredCache); OPENEDX_TELEMETRY=[] keeps
    edx-django-utils from looking for New Relic. No app needs installing: the consumer core uses no
    model, and `django.setup()` makes the app registry and translations ready for its error paths.
    """
    import django
    from django.conf import settings

    settings.configure(
        PLATFORM_NAME=platform_name,
        INSTALLED_APPS=[],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "openedx"}},
        OPENEDX_TELEMETRY=[],
        USE_TZ=True,
    )
    django.setup()


def new_private_key_pem() -> str:
    """A fresh RSA key per process, as an Open edX LtiConfiguration has its own."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode()


def json_response(body: Any, status: int = 200, mimetype: str = "application/json") -> Response:
    return Response(json.dumps(body), status=status, mimetype=mimetype)


def media_type(request: Request) -> str:
    """The request's media type without parameters, as DRF's parser matching sees it."""
    return (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()


def negotiate(accept: str | None, offered: list[str]) -> str | None:
    """DRF-style content negotiation: no Accept means the first renderer, else a match or None (406)."""
    if not accept:
        return offered[0]
    for item in accept.split(","):
        wanted = item.split(";")[0].strip().lower()
        for media in offered:
            if wanted in ("*/*", media) or (wanted.endswith("/*") and media.startswith(wanted[:-1])):
                return media
    return None


def launch_form_page(action: str, fields: dict[str, str]) -> Response:
    """The auto-submitting form of Open edX's `html/lti_1p3_launch.html`, escaped as Django would."""
    inputs = "".join(
        f'<input name="{html.escape(name)}" value="{html.escape(value)}" />' for name, value in fields.items()
    )
    page = (
        '<!DOCTYPE html><html><head><title>LTI</title></head><body>'
        f'<form id="lti-launch" action="{html.escape(action)}" method="post" style="display: none" '
        f'enctype="application/x-www-form-urlencoded">{inputs}<input type="submit" value="Press to Launch" /></form>'
        '<script>document.getElementById("lti-launch").submit();</script></body></html>'
    )
    return Response(page, mimetype="text/html")


@dataclass
class PlatformConfig:
    """The tool as an Open edX course author registers it (LtiConfiguration fields); the parent process
    builds it and passes it to this platform process as JSON."""

    tool_login_url: str
    tool_launch_url: str
    tool_jwks_url: str
    client_id: str
    deployment_id: str
    redirect_uris: list[str]
    platform_name: str = "Open edX"
    lineitem_label: str = "LabDesk lab"
    score_maximum: int = 100
    ags_programmatic: bool = False

    @classmethod
    def from_json(cls, text: str) -> "PlatformConfig":
        return cls(**json.loads(text))


@dataclass
class Store:
    """What the platform remembers; guarded by one lock because the server is threaded."""

    lineitems: dict[int, Json] = field(default_factory=dict)
    scores: list[Json] = field(default_factory=list)
    token_requests: list[Json] = field(default_factory=list)
    auth_requests: list[Json] = field(default_factory=list)
    extra_claims: dict[str, Json] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Platform:
    """The WSGI app: Open edX's consumer for the protocol, a dict store for the rest."""

    def __init__(self, config: PlatformConfig, issuer: str) -> None:
        self.config = config
        self.issuer = issuer
        from lti_consumer.lti_1p3.key_handlers import PlatformKeyHandler

        self.key_handler = PlatformKeyHandler(new_private_key_pem(), uuid.uuid4().hex)
        self.store = Store()
        self.store.lineitems[1] = {"label": config.lineitem_label, "scoreMaximum": config.score_maximum,
                                   "resourceId": "openedx-harness", "resourceLinkId": None}
        self.routes = Map([
            Rule("/jwks", endpoint="jwks", methods=["GET"]),
            Rule("/token", endpoint="token", methods=["POST"]),
            Rule("/auth", endpoint="auth", methods=["GET", "POST"]),
            Rule("/lineitems", endpoint="lineitems", methods=["GET", "POST"]),
            Rule("/lineitems/<int:item_id>", endpoint="lineitem", methods=["GET"]),
            Rule("/lineitems/<int:item_id>/scores", endpoint="scores", methods=["POST"]),
            Rule("/_harness/preflight", endpoint="preflight", methods=["POST"]),
            Rule("/_harness/<kind>", endpoint="records", methods=["GET"]),
        ], strict_slashes=False)

    # -- the consumer --------------------------------------------------------------------------

    def lineitem_url(self, item_id: int) -> str:
        return f"{self.issuer}/lineitems/{item_id}"

    def consumer(self) -> Any:
        """A fresh consumer per request, as Open edX builds one from its LtiConfiguration each time.

        Its PlatformKeyHandler is built once and shared: loading the PEM costs about 0.25 s (RSA key
        validation), which every request would otherwise pay. The handler is read-only after init.
        """
        from lti_consumer.lti_1p3.consumer import LtiAdvantageConsumer

        consumer = LtiAdvantageConsumer(
            iss=self.issuer, lti_oidc_url=self.config.tool_login_url, lti_launch_url=self.config.tool_launch_url,
            client_id=self.config.client_id, deployment_id=self.config.deployment_id, rsa_key=None,
            rsa_key_id=None, redirect_uris=self.config.redirect_uris, tool_keyset_url=self.config.tool_jwks_url,
        )
        consumer.key_handler = self.key_handler
        consumer.enable_ags(lineitems_url=f"{self.issuer}/lineitems", lineitem_url=self.lineitem_url(1),
                            allow_programmatic_grade_interaction=self.config.ags_programmatic)
        return consumer

    # -- WSGI ----------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        try:
            endpoint, args = self.routes.bind_to_environ(environ).match()
            response = getattr(self, f"on_{endpoint}")(request, **args)
        except HTTPException as error:
            response = error.get_response()
        return response(environ, start_response)

    def on_jwks(self, request: Request) -> Response:
        return json_response(self.consumer().get_public_keyset())

    def on_records(self, request: Request, kind: str) -> Response:
        """Harness only: what arrived, for the test to assert on."""
        names = {"scores": "scores", "token-requests": "token_requests", "auth-requests": "auth_requests"}
        if kind not in names:
            raise NotFound()
        with self.store.lock:
            return json_response(list(getattr(self.store, names[kind])))

    # -- launch: login initiation URL, then the auth request (Open edX's launch_gate_endpoint) ---

    def on_preflight(self, request: Request) -> Response:
        """Harness only: what the LMS does when it renders the LTI block: cache launch data, make the URL."""
        from lti_consumer.data import Lti1p3LaunchData

        wanted: Json = request.get_json()
        launch_data = Lti1p3LaunchData(
            user_id=wanted["user_id"], user_role=wanted.get("role"), config_id="openedx-harness",
            resource_link_id=wanted["resource_link_id"], preferred_username=wanted.get("preferred_username"),
            name=wanted.get("name"), email=wanted.get("email"), launch_presentation_document_target="iframe",
            launch_presentation_return_url=wanted.get("return_url"), context_id=wanted.get("context_id"),
            context_type=wanted.get("context_type") or ["course_offering"], context_title=wanted.get("context_title"),
            context_label=wanted.get("context_label") or wanted.get("context_id"),
            custom_parameters=wanted.get("custom_parameters") or {},
        )
        url: str = self.consumer().prepare_preflight_url(launch_data)
        hint = dict(parse_qsl(url.split("?", 1)[1]))["lti_message_hint"]
        with self.store.lock:
            self.store.extra_claims[hint] = wanted.get("extra_claims") or {}
        return json_response({"url": url})

    def on_auth(self, request: Request) -> Response:
        """Open edX's launch_gate_endpoint: check the tool's auth request and answer with the launch form."""
        from lti_consumer.lti_1p3.exceptions import Lti1p3Exception
        from lti_consumer.utils import get_data_from_cache

        params = dict((request.args if request.method == "GET" else request.form).items())
        with self.store.lock:
            self.store.auth_requests.append(params)
        hint, login_hint = params.get("lti_message_hint"), params.get("login_hint")
        launch_data = get_data_from_cache(hint) if hint and login_hint else None
        if launch_data is None:
            return Response("The lti_message_hint or login_hint is missing, or matches no launch.", status=400)
        try:
            launch = self.build_launch(launch_data, params)
        except (Lti1p3Exception, ValueError) as error:  # ValueError: a role or context type Open edX rejects
            return Response(f"Error preparing LTI 1.3 launch: {type(error).__name__} {error}", status=400)
        return launch_form_page(params["redirect_uri"], launch)

    def build_launch(self, launch_data: Any, preflight: dict[str, str]) -> dict[str, str]:
        """The claim-setting sequence of launch_gate_endpoint, then `generate_launch_request`."""
        from lti_consumer.utils import get_lti_1p3_context_types_claim

        consumer = self.consumer()
        consumer.set_user_data(user_id=launch_data.user_id, role=launch_data.user_role, full_name=launch_data.name,
                               email_address=launch_data.email, preferred_username=launch_data.preferred_username)
        consumer.set_resource_link_claim(launch_data.resource_link_id)
        consumer.set_launch_presentation_claim(document_target=launch_data.launch_presentation_document_target,
                                               return_url=launch_data.launch_presentation_return_url)
        context_types = get_lti_1p3_context_types_claim(launch_data.context_type) if launch_data.context_type else None
        consumer.set_context_claim(launch_data.context_id, context_types, launch_data.context_title,
                                   launch_data.context_label)
        if launch_data.custom_parameters:
            consumer.set_custom_parameters(launch_data.custom_parameters)
        with self.store.lock:
            extra = self.store.extra_claims.get(preflight["lti_message_hint"], {})
        if extra:
            consumer.set_extra_claim(extra)
        launch: dict[str, str] = consumer.generate_launch_request(preflight_response=preflight)
        return launch

    # -- token endpoint (Open edX's access_token_endpoint) ---------------------------------------

    def on_token(self, request: Request) -> Response:
        """Hand the form to `consumer.access_token`, mapping its errors as Open edX does (all 400)."""
        form = dict(parse_qsl(request.get_data(as_text=True), keep_blank_values=True))
        try:
            token: Json = self.consumer().access_token(form)
            status, body = 200, token
        except Exception as error:  # Open edX catches broadly too, then maps by type
            status, body = 400, {"error": token_error_code(error)}
        with self.store.lock:
            self.store.token_requests.append({"status": status, "error": body.get("error"),
                                              "requested_scope": form.get("scope"), "granted_scope": body.get("scope")})
        return json_response(body, status=status)

    # -- AGS (Open edX's LtiAgsLineItemViewset, authentication and permission classes) ------------

    def authorize(self, request: Request, scopes: list[str]) -> Response | None:
        """Lti1p3ApiAuthentication then LtiAgsPermissions; DRF answers both failures with 403."""
        auth = request.headers.get("Authorization", "").split()
        if len(auth) != 2 or auth[0].lower() != "bearer":
            return json_response({"detail": "Missing or malformed LTI 1.3 authentication token."}, status=403)
        consumer = self.consumer()
        try:
            consumer.check_token(auth[1])
        except Exception:
            return json_response({"detail": "Invalid token signature."}, status=403)
        if not consumer.check_token(auth[1], scopes):
            return json_response({"detail": NO_PERMISSION}, status=403)
        return None

    def lineitem_json(self, item_id: int) -> Json:
        fields = {k: v for k, v in self.store.lineitems[item_id].items() if v is not None}
        return {"id": self.lineitem_url(item_id), **fields}

    def on_lineitems(self, request: Request) -> Response:
        if request.method == "POST":
            return self.create_lineitem(request)
        refused = self.authorize(request, [SCOPE_LINEITEM_READONLY, SCOPE_LINEITEM])
        if refused:
            return refused
        media = negotiate(request.headers.get("Accept"), [MEDIA_LINEITEMS, MEDIA_LINEITEM])
        if media is None:
            return json_response({"detail": "Could not satisfy the request Accept header."}, status=406)
        filters = {k: v for k, v in request.args.items() if k in ("resource_link_id", "resource_id", "tag")}
        with self.store.lock:
            items = [self.lineitem_json(i) for i in self.store.lineitems]
        items = [item for item in items if all(str(item.get(camel(k))) == v for k, v in filters.items())]
        return json_response(items, mimetype=media)

    def on_lineitem(self, request: Request, item_id: int) -> Response:
        refused = self.authorize(request, [SCOPE_LINEITEM_READONLY, SCOPE_LINEITEM])
        if refused:
            return refused
        media = negotiate(request.headers.get("Accept"), [MEDIA_LINEITEMS, MEDIA_LINEITEM])
        if media is None:
            return json_response({"detail": "Could not satisfy the request Accept header."}, status=406)
        with self.store.lock:
            if item_id not in self.store.lineitems:
                return json_response({"detail": "Not found."}, status=404)
            return json_response(self.lineitem_json(item_id), mimetype=media)

    def create_lineitem(self, request: Request) -> Response:
        """Needs the lineitem scope, which Open edX grants on request whatever the AGS mode."""
        refused = self.authorize(request, [SCOPE_LINEITEM])
        if refused:
            return refused
        if media_type(request) != MEDIA_LINEITEM:
            return json_response({"detail": f'Unsupported media type "{media_type(request)}" in request.'}, status=415)
        body: Json = request.get_json(force=True, silent=True) or {}
        errors = lineitem_errors(body)
        if errors:
            return json_response(errors, status=400)
        with self.store.lock:
            item_id = max(self.store.lineitems) + 1
            self.store.lineitems[item_id] = {k: body.get(k) for k in
                                             ("label", "scoreMaximum", "resourceId", "resourceLinkId", "tag")}
            created = self.lineitem_json(item_id)
        return json_response(created, status=201, mimetype=MEDIA_LINEITEM)

    def on_scores(self, request: Request, item_id: int) -> Response:
        """The `scores` action: score+json only, LtiAgsScoreSerializer's rules, 201 with the score."""
        refused = self.authorize(request, [SCOPE_SCORE])
        if refused:
            return refused
        if media_type(request) != MEDIA_SCORE:
            return json_response({"detail": f'Unsupported media type "{media_type(request)}" in request.'}, status=415)
        score: Json = request.get_json(force=True, silent=True) or {}
        with self.store.lock:
            if item_id not in self.store.lineitems:
                return json_response({"detail": "Not found."}, status=404)
            previous = [s["score"] for s in self.store.scores
                        if s["lineitem"] == self.lineitem_url(item_id) and s["score"].get("userId") == score.get("userId")]
            errors = score_errors(score, previous[-1] if previous else None)
            if errors:
                return json_response(errors, status=400)
            self.store.scores.append({"lineitem": self.lineitem_url(item_id), "score": score})
        return json_response(score, status=201, mimetype=MEDIA_SCORE)


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def token_error_code(error: Exception) -> str:
    """access_token_endpoint's mapping from exception type to the OAuth error code."""
    import jwt
    from lti_consumer.lti_1p3 import exceptions as lti

    kind = type(error)
    if kind is lti.MissingRequiredClaim:
        return "invalid_request"
    if kind in (lti.MalformedJwtToken, lti.TokenSignatureExpired, jwt.exceptions.DecodeError):
        return "invalid_grant"
    if kind in (lti.NoSuitableKeys, lti.UnknownClientId, jwt.exceptions.InvalidSignatureError, KeyError, AttributeError):
        return "invalid_client"
    if kind is lti.UnsupportedGrantType:
        return "unsupported_grant_type"
    return "unidentified_error"


def parse_timestamp(value: Any) -> datetime | None:
    """DRF's ISO-8601 DateTimeField input: Django's parser, naive values taken as UTC."""
    from django.utils.dateparse import parse_datetime

    parsed = parse_datetime(value) if isinstance(value, str) else None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def score_errors(score: Json, previous: Json | None) -> Json:
    """LtiAgsScoreSerializer's validation, field by field, in DRF's error shape."""
    errors: Json = {}
    for name in ("timestamp", "activityProgress", "gradingProgress", "userId"):
        if score.get(name) in (None, ""):
            errors[name] = ["This field is required."]
    when = parse_timestamp(score.get("timestamp"))
    if "timestamp" not in errors and when is None:
        errors["timestamp"] = ["Datetime has wrong format."]
    if when is not None and previous is not None:
        before = parse_timestamp(previous["timestamp"])
        if before is not None and before >= when:
            errors["timestamp"] = ["Score timestamp can only be updated to a later point in time"]
    if score.get("scoreGiven") is not None:
        maximum = score.get("scoreMaximum")
        if maximum is None:
            errors["scoreMaximum"] = ["scoreMaximum is a required field when providing a scoreGiven value."]
        elif not isinstance(maximum, (int, float)) or maximum <= 0:
            errors["scoreMaximum"] = ["scoreMaximum must be a positive number when scoreGiven is provided."]
    return errors


def lineitem_errors(body: Json) -> Json:
    """LtiAgsLineItemSerializer's required fields."""
    errors: Json = {}
    if not isinstance(body.get("scoreMaximum"), int):
        errors["scoreMaximum"] = ["A valid integer is required."]
    if not body.get("label"):
        errors["label"] = ["This field is required."]
    if body.get("resourceId") is None and body.get("resourceLinkId") is None:
        errors["non_field_errors"] = ["Must provide at least one of resource_id or resource_link_id"]
    return errors


def main(argv: list[str]) -> None:
    """Bind first (the issuer needs the port), then configure Django, then serve until SIGTERM."""
    config = PlatformConfig.from_json(argv[1])
    server: BaseWSGIServer = make_server("127.0.0.1", 0, lambda environ, start: [], threaded=True)
    issuer = f"http://127.0.0.1:{server.server_port}"
    configure_django(config.platform_name)
    server.app = Platform(config, issuer)
    print(f"READY {server.server_port}", flush=True)
    sys.stdout = sys.stderr  # nothing else goes to the pipe the parent stops reading
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
