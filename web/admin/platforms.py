"""The console's Platforms section: the LMSs that may launch LabDesk, and what an LMS admin needs to add it.

An admin lists registrations (with the courses and activities launched through each), adds one by hand,
edits it, allows or drops deployments, removes one behind a confirmation page, and creates one-time
Dynamic Registration invitations. Everything goes through lti.platforms and lti.invites, the code behind
`labdesk platforms …`, so the browser refuses exactly what the CLI refuses, in the same words, and every
change is audited in the same transaction as the change itself.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from broker import audit
from lti import invites
from lti import platforms as registry
from lti.platforms import InvalidPlatformInput, PlatformInfo, RegistrationError
from lti.registration import ToolUrls
from web.admin.auth import actor, admin, admin_required, client_address, current_admin
from web.context import rt

TYPED = ("name", "issuer", "client_id", "auth_login_url", "auth_token_url", "key_set_url", "auth_audience")
EMPTY_FORM: dict[str, Any] = {**{key: "" for key in TYPED}, "deployments": "", "accept_new_deployments": False}


def _typed() -> dict[str, Any]:
    """The form as typed (trimmed), kept to show again when it is refused."""
    return {**{key: request.form.get(key, "").strip() for key in TYPED},
            "deployments": request.form.get("deployments", ""),
            "accept_new_deployments": request.form.get("accept_new_deployments") == "1"}


def _deployment_lines(text: str) -> list[str]:
    """One deployment id a line; blank lines are only spacing."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _sentence(error: Exception) -> str:
    text = str(error)
    return text[:1].upper() + text[1:]


# -- the list, adding, registration help ----------------------------------------------------------------
def _list_page(form: dict[str, Any] | None = None, error: str = "", error_field: str = "",
               invite: dict[str, str] | None = None, status: int = 200) -> tuple[str, int]:
    settings = rt().settings
    urls = ToolUrls.of(settings)
    return render_template(
        "admin/platforms.html", admin=current_admin(), platforms=registry.listing(rt()), usage=registry.usage(rt()),
        form=form or EMPTY_FORM, error=error, error_field=error_field, labels=registry.LABELS, invite=invite,
        tool={"login": urls.login, "launch": urls.launch, "jwks": urls.jwks, "logo": urls.logo,
              "canvas_json": urls.base + "/lti/canvas.json", "register": urls.base + "/lti/register"},
        open_registration=settings.open_registration, invite_days=invites.TTL // 86400,
    ), status


@admin.get("/platforms")
@admin_required
def platforms():  # type: ignore[no-untyped-def]
    return _list_page()


@admin.post("/platforms")
@admin_required
def platforms_add():  # type: ignore[no-untyped-def]
    """Register a platform; a refusal shows the form again as typed, the reason beside the field at fault."""
    typed = _typed()
    values = {key: typed[key] for key in TYPED}
    try:
        info = registry.add(rt(), **values, deployments=_deployment_lines(typed["deployments"]),
                             accept_new_deployments=typed["accept_new_deployments"], actor=actor(), address=client_address())
    except InvalidPlatformInput as exc:
        return _list_page(typed, _sentence(exc), exc.field, status=400)
    flash(f"Platform {info.name} added (issuer {info.issuer}, client ID {info.client_id}).")
    return redirect(url_for("admin.platforms") + f"#platform-{info.id}")


@admin.post("/platforms/invite")
@admin_required
def platforms_invite():  # type: ignore[no-untyped-def]
    """A one-time Dynamic Registration URL, shown on this answer only (never stored in a page or link)."""
    url = invites.create(rt())
    expires = (datetime.now(UTC) + timedelta(seconds=invites.TTL)).strftime("%Y-%m-%d %H:%M UTC")
    fingerprint = hashlib.sha256(url.rsplit("=", 1)[-1].encode()).hexdigest()[:12]
    with rt().session() as db:
        audit.record(db, actor(), "platform.invite", target="invite:" + fingerprint, address=client_address(),
                     detail=f"Dynamic Registration invitation valid once until {expires} (token sha256 {fingerprint}…)")
        db.commit()
    return _list_page(invite={"url": url, "expires": expires})


# -- one platform ---------------------------------------------------------------------------------------
def _edit_page(info: PlatformInfo, form: dict[str, Any] | None = None, error: str = "", error_field: str = "",
               status: int = 200, deployment_error: str = "", new_deployment: str = "") -> tuple[str, int]:
    """The edit form (as stored, or as typed when refused) and the deployments with their own forms."""
    stored = {**{key: getattr(info, key) for key in TYPED}, "accept_new_deployments": info.accept_new_deployments}
    return render_template(
        "admin/platform_edit.html", admin=current_admin(), platform=info,
        usage=registry.usage(rt()).get(info.id, registry.PlatformUsage()), form=form or stored,
        error=error, error_field=error_field, labels=registry.LABELS,
        deployment_error=deployment_error, new_deployment=new_deployment,
    ), status


def _platform(platform_id: int) -> PlatformInfo | None:
    try:
        return registry.by_id(rt(), platform_id)
    except RegistrationError:
        return None


def _missing(platform_id: int) -> tuple[str, int]:
    return render_template("error.html", code=404, title="Not found",
                           advice=f"There is no platform {platform_id}; it may have been removed."), 404


@admin.get("/platforms/<int:platform_id>")
@admin_required
def platforms_edit(platform_id: int):  # type: ignore[no-untyped-def]
    info = _platform(platform_id)
    return _edit_page(info) if info else _missing(platform_id)


@admin.post("/platforms/<int:platform_id>")
@admin_required
def platforms_update(platform_id: int):  # type: ignore[no-untyped-def]
    """Save the registration's values; a refusal (a bad URL, another platform's issuer and client ID)
    shows the form again as typed."""
    info = _platform(platform_id)
    if info is None:
        return _missing(platform_id)
    typed = _typed()
    try:
        info = registry.update(rt(), platform_id, **{key: typed[key] for key in TYPED},
                               accept_new_deployments=typed["accept_new_deployments"], actor=actor(), address=client_address())
    except InvalidPlatformInput as exc:
        return _edit_page(info, typed, _sentence(exc), exc.field, 400)
    except RegistrationError as exc:  # removed meanwhile
        return _gone(exc)
    flash(f"Platform {info.name} saved.")
    return redirect(url_for("admin.platforms_edit", platform_id=platform_id))


@admin.post("/platforms/<int:platform_id>/deployments")
@admin_required
def platforms_deployment_add(platform_id: int):  # type: ignore[no-untyped-def]
    info = _platform(platform_id)
    if info is None:
        return _missing(platform_id)
    typed = request.form.get("deployment_id", "")
    try:
        registry.allow_deployment(rt(), platform_id, typed, actor=actor(), address=client_address())
    except InvalidPlatformInput as exc:
        return _edit_page(info, status=400, deployment_error=_sentence(exc), new_deployment=typed)
    except RegistrationError as exc:  # removed meanwhile
        return _gone(exc)
    flash(f"Deployment {typed.strip()} of {info.name} may launch LabDesk now.")
    return redirect(url_for("admin.platforms_edit", platform_id=platform_id) + "#deployments")


@admin.post("/platforms/<int:platform_id>/deployments/remove")
@admin_required
def platforms_deployment_remove(platform_id: int):  # type: ignore[no-untyped-def]
    deployment_id = request.form.get("deployment_id", "")
    try:
        info = registry.remove_deployment(rt(), platform_id, deployment_id, actor=actor(), address=client_address())
    except RegistrationError as exc:
        flash(_sentence(exc), "error")
        return _back(platform_id)
    accepted = " It is recorded again at its next launch, since this platform accepts new deployments." \
        if info.accept_new_deployments else ""
    flash(f"Deployment {deployment_id} of {info.name} removed: its launches are refused.{accepted}")
    return _back(platform_id)


def _gone(error: RegistrationError) -> Response:
    flash(f"{_sentence(error)}: it was removed meanwhile, nothing was saved.", "error")
    return redirect(url_for("admin.platforms"))


def _back(platform_id: int) -> Response:
    if _platform(platform_id) is None:
        return redirect(url_for("admin.platforms"))
    return redirect(url_for("admin.platforms_edit", platform_id=platform_id) + "#deployments")


@admin.get("/platforms/<int:platform_id>/remove")
@admin_required
def platforms_remove_confirm(platform_id: int):  # type: ignore[no-untyped-def]
    """Ask first, saying what removal does to what came through the platform."""
    info = _platform(platform_id)
    if info is None:
        return _missing(platform_id)
    return render_template("admin/platform_remove.html", admin=current_admin(), platform=info,
                           usage=registry.usage(rt()).get(info.id, registry.PlatformUsage()))


@admin.post("/platforms/<int:platform_id>/remove")
@admin_required
def platforms_remove(platform_id: int):  # type: ignore[no-untyped-def]
    """Remove the platform the confirmation page showed: the form names its issuer and client ID, so a
    stale page never removes another registration that took the id since (SQLite reuses ids)."""
    confirmed = (request.form.get("issuer", ""), request.form.get("client_id", ""))
    info = _platform(platform_id)
    if info is None:
        flash(f"No platform {platform_id}: nothing was removed.", "error")
    elif (info.issuer, info.client_id) != confirmed:
        flash(f"Platform {platform_id} is now {info.name} (issuer {info.issuer}, client ID {info.client_id}), not the one "
              "you confirmed: nothing was removed.", "error")
    else:
        registry.remove(rt(), platform_id, actor=actor(), address=client_address())
        flash(f"Platform {info.name} removed: launches from it are refused from now on. "
              "Its courses, labs and scores stay in LabDesk.")
    return redirect(url_for("admin.platforms"))
