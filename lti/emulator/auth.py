"""The OIDC authorization endpoint (step 2 of an LTI launch): the tool sends the browser here after login
initiation; the emulator checks the request and answers with a page that posts the id_token back.
"""

from __future__ import annotations

from flask import Response, render_template, request

from broker.runtime import Runtime
from lti.claims import DEEP_LINKING_REQUEST
from lti.emulator import launches, messages, people, signing, site, store
from lti.emulator.blueprint import emulator
from lti.emulator.errors import EmulatorError

# Parameter -> the only value the LTI 1.3 security framework allows.
FIXED = {"scope": "openid", "response_type": "id_token", "response_mode": "form_post", "prompt": "none"}


@emulator.route("/auth", methods=["GET", "POST"])
def authorize() -> Response:
    rt = site.current_rt()
    store.ensure_seeded(rt)
    params = {key: request.values.get(key, "") for key in (*FIXED, "client_id", "redirect_uri", "login_hint",
                                                          "lti_message_hint", "nonce", "state")}
    hint, person = _check(rt, params)
    data = launches.new_deep_link_data(rt, hint.context, person.sub) if hint.message_type == DEEP_LINKING_REQUEST else ""
    id_token = signing.sign(rt.settings, messages.id_token_claims(rt, hint, person, params["nonce"], data))
    page = render_template("emulator/form_post.html", action=params["redirect_uri"],
                           fields={"id_token": id_token, **({"state": params["state"]} if params["state"] else {})})
    return Response(page, 200, mimetype="text/html", headers={"Cache-Control": "no-store"})


def _check(rt: Runtime, params: dict[str, str]) -> tuple[launches.LaunchHint, people.Person]:
    """The launch the request stands for, or a 400 naming the first thing wrong with it."""
    for name, expected in FIXED.items():
        if params[name] != expected:
            raise EmulatorError(f"{name} must be {expected!r}, got {params[name]!r}")
    if params["client_id"] != site.CLIENT_ID:
        raise EmulatorError(f"unknown client_id {params['client_id']!r} (the emulator knows {site.CLIENT_ID!r})")
    allowed = site.redirect_uris(rt.settings)
    if params["redirect_uri"] not in allowed:
        raise EmulatorError(f"redirect_uri {params['redirect_uri']!r} is not registered for this tool "
                            f"(registered: {', '.join(allowed)})")
    if not params["nonce"]:
        raise EmulatorError("nonce is missing")
    if not params["login_hint"]:
        raise EmulatorError("login_hint is missing")
    hint = launches.find(rt, params["lti_message_hint"])
    if hint is None:
        raise EmulatorError("lti_message_hint is missing, unknown or expired; launch again from the course page")
    if hint.sub != params["login_hint"]:
        raise EmulatorError("login_hint does not match the user of lti_message_hint")
    person = store.member(rt, hint.context, hint.sub)
    if person is None:
        raise EmulatorError(f"user {hint.sub!r} is not a member of course {hint.context!r}")
    if hint.link_id and store.link(rt, hint.context, hint.link_id) is None:
        raise EmulatorError(f"resource link {hint.link_id!r} no longer exists")
    return hint, person
