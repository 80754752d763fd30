"""A small LMS of the tests' own for grades and rosters, on loopback HTTP, speaking the real protocols:

- `POST /token`: the client_credentials grant with a JWT client assertion, verified against LabDesk's
  JWKS fetched over HTTP (signature, iss = sub = client id, aud, exp, single-use jti); issues bearer
  tokens for the scopes it allows, and counts the requests.
- `/courses/<ctx>/lineitems` (GET filtered by resource_link_id, POST to create), and
  `…/lineitems/<n>/lineitem/scores` (line item URLs carry a query string, as Moodle's do). A score needs
  the score media type, a user who is a member of the course (else 400 with the reason), and a
  timestamp newer than the last one it holds for that user and line item (else 409).
- `/courses/<ctx>/memberships`: NRPS, paged with `Link: <…>; rel="next"`.
- `down = True` answers 503 everywhere, like an LMS under maintenance; `revoke_tokens()` makes the next
  service call answer 401, like an LMS restart that forgets its tokens.

The test drives it directly (members, switches) and reads what it received.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable
from urllib.parse import urlencode

import jwt
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

SCOPE_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_LINEITEM_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
ALL_SCOPES = frozenset({SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_SCORE, SCOPE_NRPS})
SCORE_MEDIA = "application/vnd.ims.lis.v1.score+json"
LINEITEM_MEDIA = "application/vnd.ims.lis.v2.lineitem+json"
LINEITEMS_MEDIA = "application/vnd.ims.lis.v2.lineitemcontainer+json"
MEMBERSHIPS_MEDIA = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"


class Served:
    """A threaded werkzeug server on a free loopback port around one WSGI callable."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class ToolJwks(Served):
    """LabDesk's JWKS on HTTP, as `/lti/jwks` would serve it (`document` from `lti.keys.jwks(rt)`)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        super().__init__(self._app)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.fetches += 1
        return Response(json.dumps(self.document), mimetype="application/json")(environ, start_response)


@dataclass
class Course:
    members: list[dict[str, Any]] = field(default_factory=list)
    lineitems: dict[int, dict[str, Any]] = field(default_factory=dict)
    last_stamp: dict[tuple[int, str], datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    """A score the platform accepted."""

    context: str
    lineitem: int
    payload: dict[str, Any]


class PlatformDouble(Served):
    def __init__(self, tool_jwks_url: str, client_id: str = "labdesk-tool", audience: str = "", page_size: int = 3) -> None:
        self.client_id = client_id
        self.page_size = page_size
        self.token_lifetime = 3600
        self.allowed_scopes = set(ALL_SCOPES)
        self.down = False
        self.token_requests = 0
        self.assertions: list[dict[str, Any]] = []  # verified claims of each client assertion
        self.token_forms: list[dict[str, str]] = []
        self.unauthorized = 0  # service calls answered 401
        self.log: list[str] = []  # "METHOD /path?query" of every request
        self.received: list[Received] = []
        self.courses: dict[str, Course] = {}
        self._tokens: dict[str, frozenset[str]] = {}
        self._jtis: set[str] = set()
        self._lock = threading.Lock()
        self._jwks = jwt.PyJWKClient(tool_jwks_url, cache_keys=False)
        self._routes = Map([
            Rule("/token", endpoint="token", methods=["POST"]),
            Rule("/courses/<ctx>/lineitems", endpoint="lineitems", methods=["GET", "POST"]),
            Rule("/courses/<ctx>/lineitems/<int:item>/lineitem/scores", endpoint="scores", methods=["POST"]),
            Rule("/courses/<ctx>/memberships", endpoint="memberships", methods=["GET"]),
            Rule("/status/<int:code>", endpoint="status", methods=["GET", "POST"]),
        ])
        super().__init__(self._app)
        self.token_url = self.url + "/token"
        self.audience = audience or self.token_url

    # -- what the test sets up and reads ----------------------------------------------------------------
    def course(self, ctx: str) -> Course:
        with self._lock:
            return self.courses.setdefault(ctx, Course())

    def enrol(self, ctx: str, user_id: str, name: str = "", roles: tuple[str, ...] = (LEARNER,), status: str = "Active") -> None:
        member = {"user_id": user_id, "name": name or user_id, "email": f"{user_id}@example.edu", "roles": list(roles), "status": status}
        self.course(ctx).members.append(member)

    def lineitems_url(self, ctx: str) -> str:
        return f"{self.url}/courses/{ctx}/lineitems"

    def memberships_url(self, ctx: str) -> str:
        return f"{self.url}/courses/{ctx}/memberships"

    def lineitem_url(self, ctx: str, item: int) -> str:
        return f"{self.url}/courses/{ctx}/lineitems/{item}/lineitem?type_id=7"

    def add_lineitem(self, ctx: str, resource_link_id: str, label: str = "Lab", score_maximum: float = 10, **extra: Any) -> dict[str, Any]:
        course = self.course(ctx)
        with self._lock:
            number = len(course.lineitems) + 1
            course.lineitems[number] = {
                **extra, "id": self.lineitem_url(ctx, number), "label": label, "scoreMaximum": score_maximum,
                "resourceLinkId": resource_link_id,
            }
            return course.lineitems[number]

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def scores_for(self, user_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r.payload for r in self.received if r.payload.get("userId") == user_id]

    # -- HTTP ---------------------------------------------------------------------------------------------
    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        with self._lock:
            self.log.append(f"{request.method} {request.full_path.rstrip('?')}")
        try:
            if self.down:
                response = Response("Service Unavailable: the LMS is under maintenance", status=503)
            else:
                endpoint, args = self._routes.bind_to_environ(environ).match()
                response = getattr(self, f"_{endpoint}")(request, **args)
        except HTTPException as exc:
            response = exc.get_response()
        return response(environ, start_response)

    def _token(self, request: Request) -> Response:
        form = request.form.to_dict()
        with self._lock:
            self.token_requests += 1
            self.token_forms.append(form)
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != ASSERTION_TYPE:
            return _json({"error": "unsupported_grant_type"}, 400)
        try:
            claims = self._verified(form.get("client_assertion", ""))
        except (jwt.PyJWTError, ValueError) as exc:
            return _json({"error": "invalid_client", "error_description": str(exc)}, 401)
        granted = frozenset(form.get("scope", "").split()) & self.allowed_scopes
        if not granted:
            return _json({"error": "invalid_scope"}, 400)
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.assertions.append(claims)
            self._tokens[token] = granted
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime, "scope": " ".join(sorted(granted))}
        return _json(body, 200)

    def _verified(self, assertion: str) -> dict[str, Any]:
        key = self._jwks.get_signing_key_from_jwt(assertion)
        claims = jwt.decode(
            assertion, key.key, algorithms=["RS256"], audience=self.audience, issuer=self.client_id,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
        )
        if claims["sub"] != self.client_id:
            raise ValueError("sub must be the client id")
        with self._lock:
            if claims["jti"] in self._jtis:
                raise ValueError("jti already used")
            self._jtis.add(claims["jti"])
        return claims

    def _authorised(self, request: Request, *scopes: str) -> bool:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        with self._lock:
            ok = bool(self._tokens.get(token, frozenset()) & set(scopes))
            if not ok:
                self.unauthorized += 1
        return ok

    def _lineitems(self, request: Request, ctx: str) -> Response:
        if request.method == "POST":
            return self._create_lineitem(request, ctx)
        if not self._authorised(request, SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY):
            return _unauthorised()
        wanted = request.args.get("resource_link_id")
        items = [i for i in self.course(ctx).lineitems.values() if wanted is None or i.get("resourceLinkId") == wanted]
        return _json(items, 200, LINEITEMS_MEDIA)

    def _create_lineitem(self, request: Request, ctx: str) -> Response:
        if not self._authorised(request, SCOPE_LINEITEM):
            return _unauthorised()
        if request.mimetype != LINEITEM_MEDIA:
            return _json({"error": f"Content-Type must be {LINEITEM_MEDIA}"}, 415)
        body = request.get_json(force=True)
        if not body.get("label") or not body.get("scoreMaximum"):
            return _json({"error": "label and scoreMaximum are required"}, 400)
        extra = {k: v for k, v in body.items() if k not in ("id", "label", "scoreMaximum", "resourceLinkId")}
        item = self.add_lineitem(ctx, body.get("resourceLinkId", ""), body["label"], body["scoreMaximum"], **extra)
        return _json(item, 201, LINEITEM_MEDIA)

    def _scores(self, request: Request, ctx: str, item: int) -> Response:
        if not self._authorised(request, SCOPE_SCORE):
            return _unauthorised()
        course = self.course(ctx)
        if item not in course.lineitems:
            raise NotFound()
        if request.mimetype != SCORE_MEDIA:
            return _json({"error": f"Content-Type must be {SCORE_MEDIA}"}, 415)
        score = request.get_json(force=True)
        user = score.get("userId")
        if user not in {m["user_id"] for m in course.members}:
            return _json({"error": f"userId {user!r} is not a member of course {ctx}"}, 400)
        stamp = datetime.fromisoformat(score["timestamp"])
        with self._lock:
            last = course.last_stamp.get((item, user))
            if last is not None and stamp <= last:
                return _json({"error": f"timestamp {score['timestamp']} is not after {last.isoformat()}"}, 409)
            course.last_stamp[(item, user)] = stamp
            self.received.append(Received(ctx, item, score))
        return Response(status=204)

    def _memberships(self, request: Request, ctx: str) -> Response:
        if not self._authorised(request, SCOPE_NRPS):
            return _unauthorised()
        limit = int(request.args.get("limit", self.page_size))
        offset = int(request.args.get("offset", 0))
        members = self.course(ctx).members
        body = {"id": request.url, "context": {"id": ctx}, "members": members[offset:offset + limit]}
        response = _json(body, 200, MEMBERSHIPS_MEDIA)
        if offset + limit < len(members):
            following = f"{self.memberships_url(ctx)}?{urlencode({'limit': limit, 'offset': offset + limit})}"
            response.headers["Link"] = f'<{following}>; rel="next"'
        return response

    def _status(self, request: Request, code: int) -> Response:
        """Any status, after an optional delay (`?sleep=`): for the error classification tests."""
        if not self._authorised(request, *ALL_SCOPES):
            return _unauthorised()
        time.sleep(float(request.args.get("sleep", 0)))
        return Response(request.args.get("body", f"status {code}"), status=code)


def _json(body: Any, status: int, mimetype: str = "application/json") -> Response:
    return Response(json.dumps(body), status=status, mimetype=mimetype)


def _unauthorised() -> Response:
    response = _json({"error": "invalid_token"}, 401)
    response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


# -- wiring it to LabDesk (fixtures import these) ------------------------------------------------------------
def connect(
    rt: Any, activity_id: int, context_id: str, double: PlatformDouble, lineitem_url: str = "",
    scopes: frozenset[str] = ALL_SCOPES, auth_audience: str = "",
) -> int:
    """Register the double as a platform and record, as a launch would, its services for the activity;
    returns the platform id."""
    from lti import platforms
    from lti.models import LinkServices

    info = platforms.add(
        rt, issuer=double.url, client_id=double.client_id, auth_login_url=double.url + "/auth",
        auth_token_url=double.token_url, key_set_url=double.url + "/jwks", deployments=["deployment-1"],
        auth_audience=auth_audience,
    )
    with rt.session() as session:
        session.add(LinkServices(
            activity_id=activity_id, platform_id=info.id, lineitem_url=lineitem_url,
            lineitems_url=double.lineitems_url(context_id), ags_scopes=sorted(scopes & ALL_SCOPES - {SCOPE_NRPS}),
            memberships_url=double.memberships_url(context_id) if SCOPE_NRPS in scopes else "",
        ))
        session.commit()
    return info.id


def serve_platform(rt: Any, **options: Any) -> Any:
    """A generator for fixtures: LabDesk's JWKS and the double, both closed afterwards."""
    from lti.keys import jwks

    tool = ToolJwks(jwks(rt))
    double = PlatformDouble(tool.url, **options)
    try:
        yield double
    finally:
        double.close()
        tool.close()
