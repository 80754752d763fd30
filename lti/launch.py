"""OIDC login initiation, the launch, and LabDesk's JWKS: the URLs an LMS is configured with.

`/lti/login` answers the platform's third-party login initiation by sending the browser to the platform's
authorisation endpoint with a fresh `state` and `nonce`; `/lti/launch` receives the signed id_token,
runs every check of `lti.idtoken`, records the user, and opens the learner's lab or the instructor view.
Every refusal is a 4xx page with a short reason and one log line.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, session, url_for

from broker import services
from lti import claims as C
from lti import handoff, keys, login_state, platforms
from lti.claims import DeepLinkSettings, Launch
from lti.enrolment import LinkNotConfigured, activity_for, record
from lti.idtoken import LaunchRejected, check_message, identifier, verify
from lti.platform_keys import PlatformKeys
from lti.roles import is_test_user, view_for
from web.context import remember_lab, rt

log = logging.getLogger(__name__)
launch_pages = Blueprint("lti", __name__, template_folder="templates")
LOGIN_PARAMS = ("iss", "login_hint", "target_link_uri", "lti_message_hint", "client_id", "lti_deployment_id")
# Longer login parameters are refused: they go back out in the redirect's Location header, which proxies
# cap at a few kB (nginx answers 502 beyond its 4-8 kB header buffer). Canvas' JWT message hints are ~1.5 kB.
MAX_LOGIN_PARAM = 4096
MAX_URL = 1024  # the service URLs' columns (lti.models.LinkServices)


@launch_pages.get("/lti/jwks")
@launch_pages.get("/.well-known/jwks.json")
def jwks() -> Response:
    response = jsonify(keys.jwks(rt()))
    response.cache_control.max_age = 300
    return response


@launch_pages.route("/lti/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    params = {name: (request.values.get(name) or "").strip() for name in LOGIN_PARAMS}
    try:
        platform = _login_platform(params)
    except LaunchRejected as rejected:
        return _rejected(rejected, params.get("iss", ""))
    state, pending = login_state.begin(rt(), platform.id, {k: v for k, v in params.items() if v})
    auth_url = platform.auth_login_url + ("&" if "?" in platform.auth_login_url else "?") + urlencode(_auth_params(platform, params, state, pending.nonce))
    if request.headers.get("Sec-Fetch-Dest") == "iframe":  # check that cookies survive in this frame first
        response = current_app.make_response(render_template("lti/cookie_probe.html", auth_url=auth_url, new_window_url=_login_url(params)))
    else:
        response = redirect(auth_url, 302)
    _set_state_cookies(response, state)
    return response


def _login_platform(params: dict[str, str]) -> platforms.PlatformInfo:
    for name in ("iss", "login_hint", "target_link_uri"):
        if not params[name]:
            raise LaunchRejected("login_params", f"The LMS did not send '{name}' when starting the login.")
    for name, value in params.items():
        if len(value) > MAX_LOGIN_PARAM or "\x00" in value:
            raise LaunchRejected("login_params", f"The LMS sent a '{name}' longer than {MAX_LOGIN_PARAM} characters or holding a NUL.")
    platform = platforms.find(rt(), params["iss"], params["client_id"] or None)
    if platform is None:
        raise LaunchRejected("unknown_platform", "This LMS is not registered with LabDesk. Ask your LabDesk administrator to add it.")
    if _netloc(params["target_link_uri"]) != urlsplit(rt().settings.public_url).netloc:
        raise LaunchRejected("target_link_uri", "The link points at another site than this LabDesk.")
    return platform


def _netloc(url: str) -> str | None:
    """The host (and port) of `url`; None for what is not a URL (`http://[` has no readable host)."""
    try:
        return urlsplit(url).netloc
    except ValueError:
        return None


def _auth_params(platform: platforms.PlatformInfo, params: dict[str, str], state: str, nonce: str) -> dict[str, str]:
    auth = dict(
        scope="openid", response_type="id_token", response_mode="form_post", prompt="none",
        client_id=platform.client_id, redirect_uri=_launch_url(), login_hint=params["login_hint"], state=state, nonce=nonce,
    )
    if params["lti_message_hint"]:
        auth["lti_message_hint"] = params["lti_message_hint"]
    return auth


def _set_state_cookies(response: Response, state: str) -> None:
    options = _cookie_options()
    response.set_cookie(login_state.cookie_name(state), state, max_age=rt().settings.lti_login_ttl, httponly=True, **options)
    response.set_cookie("ld_probe", "1", max_age=rt().settings.lti_login_ttl, httponly=False, **options)


def _cookie_options() -> dict[str, Any]:
    config = current_app.config
    return dict(
        path="/", secure=config["SESSION_COOKIE_SECURE"], samesite=config["SESSION_COOKIE_SAMESITE"],
        partitioned=config["SESSION_COOKIE_PARTITIONED"],
    )


@launch_pages.post("/lti/launch")
def launch():  # type: ignore[no-untyped-def]
    issuer = ""
    try:
        pending = _bound_login()
        platform = platforms.recent(rt(), pending.platform_id)
        issuer = platform.issuer
        payload = _validated(platform, pending)
        launch = _launch_of(platform, payload)
        return _open(launch)
    except LaunchRejected as rejected:
        return _rejected(rejected, issuer)


def _bound_login() -> login_state.PendingLogin:
    """The login this launch answers: its state must be in this browser's cookies and unused."""
    state = request.form.get("state", "")
    if not state or not request.form.get("id_token"):
        raise LaunchRejected("form", "The LMS did not send a launch (id_token and state are missing).")
    if request.cookies.get(login_state.cookie_name(state)) != state:
        pending = login_state.peek(rt(), state)
        if pending is not None:  # a real login, but this browser lost its cookie: offer a new window
            raise LaunchRejected("cookies_blocked", _login_url(pending.login_params), 403)
        raise LaunchRejected("state", "This launch is not bound to this browser, has expired or was already used. Open the link from your course again.", 403)
    pending = login_state.consume(rt(), state)
    if pending is None:
        raise LaunchRejected("state", "This launch has expired or was already used. Open the link from your course again.", 403)
    return pending


def _validated(platform: platforms.PlatformInfo, pending: login_state.PendingLogin) -> dict[str, Any]:
    settings = rt().settings
    payload = verify(request.form["id_token"], platform, _platform_keys(), settings.lti_leeway, settings.lti_token_max_age)
    if payload.get("nonce") != pending.nonce:
        raise LaunchRejected("nonce", "The launch does not answer the login this browser started.", 403)
    if not login_state.claim_nonce(rt(), platform.issuer, pending.nonce):
        raise LaunchRejected("replay", "This launch was already used.", 403)
    check_message(payload)
    _check_deployment(platform, str(payload[C.DEPLOYMENT_ID]))
    return payload


def _platform_keys() -> PlatformKeys:
    cache = current_app.extensions.get("labdesk_platform_keys")
    if cache is None:
        settings = rt().settings
        cache = current_app.extensions["labdesk_platform_keys"] = PlatformKeys(settings.jwks_cache_seconds, settings.lti_http_timeout)
    return cache


def _check_deployment(platform: platforms.PlatformInfo, deployment_id: str) -> None:
    if deployment_id in platform.deployments:
        return
    if not platform.accept_new_deployments:
        raise LaunchRejected("deployment", f"Deployment {deployment_id!r} of this LMS is not registered with LabDesk.", 403)
    platforms.add_deployment(rt(), platform.id, deployment_id)
    log.info("lti: recorded new deployment %s of %s", deployment_id, platform.issuer)


def _launch_of(platform: platforms.PlatformInfo, payload: dict[str, Any]) -> Launch:
    """The launch in LabDesk's words. `check_message` has vouched for the types of the identifiers and
    objects; the free-text and URL claims are read here so that a wrong type reads as absent."""
    roles = tuple(role for role in payload[C.ROLES] if isinstance(role, str))
    context = payload.get(C.CONTEXT) or {}
    link = payload.get(C.RESOURCE_LINK) or {}
    ags = payload.get(C.AGS) or {}
    dl_claim = payload.get(C.DL_SETTINGS)
    scopes = ags.get("scope")
    return Launch(
        platform_id=platform.id, issuer=platform.issuer, client_id=platform.client_id,
        deployment_id=str(payload[C.DEPLOYMENT_ID]), message_type=payload[C.MESSAGE_TYPE], subject=str(payload["sub"]),
        name=_display_name(payload), email=_text(payload.get("email")), roles=roles, view=view_for(roles),
        test_user=is_test_user(roles, payload.get("https://purl.imsglobal.org/spec/lti/claim/test_user")),
        context_id=identifier(context.get("id")) or "", context_title=_text(context.get("title")) or _text(context.get("label")),
        resource_link_id=identifier(link.get("id")) or "", resource_link_title=_text(link.get("title")),
        custom=_custom(payload.get(C.CUSTOM) or {}), lineitem_url=_url(ags.get("lineitem")), lineitems_url=_url(ags.get("lineitems")),
        ags_scopes=tuple(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else (),
        memberships_url=_url((payload.get(C.NRPS) or {}).get("context_memberships_url")),
        return_url=_url((payload.get(C.LAUNCH_PRESENTATION) or {}).get("return_url")),
        deep_link=DeepLinkSettings.of(dl_claim) if dl_claim else None,
    )


def _display_name(payload: dict[str, Any]) -> str:
    given = " ".join(filter(None, (_text(payload.get("given_name")), _text(payload.get("family_name")))))
    return (_text(payload.get("name")) or given or _text(payload.get("email")) or "Learner")[:255]


def _text(value: Any, limit: int = 255) -> str:
    """A display text claim (a name, a title): a string or number, without NUL (PostgreSQL refuses it),
    cut to its column; anything else reads as absent."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return str(value).replace("\x00", "")[:limit]


def _url(value: Any) -> str:
    """A service or return URL: http(s), fitting its column; anything else reads as absent."""
    ok = isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) <= MAX_URL and "\x00" not in value
    return value if ok else ""


def _custom(custom: dict[str, Any]) -> dict[str, str]:
    """The custom parameters, which the spec makes strings (numbers are read as such); others are dropped."""
    return {str(key).replace("\x00", ""): _text(value, 4096) for key, value in custom.items()
            if isinstance(value, (str, int, float)) and not isinstance(value, bool)}


def _open(launch: Launch):  # type: ignore[no-untyped-def]
    """Sign the browser in and take it where the launch asked."""
    settings = rt().settings
    with rt().session() as db:
        user_id, course_id = record(db, launch)
        activity_id = None
        if launch.message_type == C.RESOURCE_LINK_REQUEST:
            defaults = dict(idle_suspend_after=settings.idle_suspend_after, keepalive_interval=settings.keepalive_interval, reap_after_days=settings.reap_after_days)
            try:
                activity_id = activity_for(db, launch, course_id, settings.default_backend, defaults)
            except LinkNotConfigured as missing:
                db.commit()
                _sign_in(launch, user_id, course_id)
                return render_template("lti/not_configured.html", launch=launch, lab=str(missing)), 404
        db.commit()
    _sign_in(launch, user_id, course_id)
    if launch.deep_link is not None:
        return _deep_link(launch)
    if launch.view == "instructor":
        return redirect(url_for("instructor.activity", activity_id=activity_id), 303)
    lab = services.launch(rt(), user_id, activity_id, actor=f"user:{user_id}")  # type: ignore[arg-type]
    remember_lab(lab.id)
    return redirect(url_for("pages.lab_page", lab_id=lab.id), 303)


def _sign_in(launch: Launch, user_id: int, course_id: int) -> None:
    previous = session.get("user_id")
    if previous is not None and previous != user_id:
        session.clear()  # another person in the same browser: nothing of theirs carries over
    session.update(user_id=user_id, name=launch.name, test_user=launch.test_user)
    teaching = set(session.get("instructor_courses", []))
    teaching.discard(course_id)
    if launch.view == "instructor":
        teaching.add(course_id)
    session["instructor_courses"] = sorted(teaching)[-20:]


def _deep_link(launch: Launch):  # type: ignore[no-untyped-def]
    if launch.view != "instructor":
        raise LaunchRejected("role", "Only instructors can add labs to a course.", 403)
    token = handoff.save(rt(), launch)
    session["deep_links"] = session.get("deep_links", [])[-4:] + [token]
    return redirect(url_for("deep_linking.picker", token=token), 303)


def _rejected(rejected: LaunchRejected, issuer: str):  # type: ignore[no-untyped-def]
    log.warning("lti launch rejected: check=%s issuer=%s path=%s reason=%s", rejected.code, issuer[:200] or "-", request.path, rejected.reason[:500])
    if rejected.code == "cookies_blocked":
        return render_template("lti/cookies_blocked.html", new_window_url=rejected.reason), rejected.status
    return render_template("lti/rejected.html", reason=rejected.reason, code=rejected.code), rejected.status


def _launch_url() -> str:
    return rt().settings.public_url.rstrip("/") + "/lti/launch"


def _login_url(params: dict[str, str]) -> str:
    return rt().settings.public_url.rstrip("/") + "/lti/login?" + urlencode({k: v for k, v in params.items() if v})
