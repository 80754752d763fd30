"""HTML pages: the development sign-in, the activity list and the learner's lab page.

The development sign-in exists until the LTI launch (issue 3) replaces it; `dev_login = false` turns it off.
"""

from __future__ import annotations

from flask import Blueprint, abort, redirect, render_template, request, session, url_for
from sqlalchemy import select

from broker import services, takeaway, usage_limits
from broker.guacd_params import LAYOUTS
from broker.models import Activity, Lab
from web import instructions
from web.context import remember_lab, rt, user_id

pages = Blueprint("pages", __name__)

# What a learner reads for each lab state; the lab page script uses the same words (passed as data).
STATE_LABELS = {
    "requested": "Waiting for a lab machine…",
    "waiting_gpu": "Waiting for a GPU…",
    "provisioning": "Preparing your lab…",
    "running": "Your lab is running.",
    "suspending": "Saving your lab…",
    "suspended": "Your lab is suspended. Resume it to continue where you left off.",
    "resuming": "Resuming your lab…",
    "deleting": "Removing this lab…",
    "deleted": "This lab was removed.",
    "failed": "This lab failed.",
}


@pages.get("/")
def home():  # type: ignore[no-untyped-def]
    if session.get("user_id") is None:
        return render_template("signin.html", dev_login=rt().settings.dev_login, emulator=rt().settings.emulator)
    with rt().session() as db:
        activities = db.scalars(select(Activity).order_by(Activity.id)).all()
        return render_template("home.html", activities=activities, name=session.get("name"))


@pages.post("/dev/login")
def dev_login():  # type: ignore[no-untyped-def]
    if not rt().settings.dev_login:
        abort(404)
    name = request.form.get("name", "").strip()
    if not name or len(name) > 64:
        return render_template("signin.html", dev_login=True, emulator=rt().settings.emulator, error="Enter a name of 1 to 64 characters."), 400
    uid = services.user_for(rt(), "dev", name, name)
    session.clear()
    session.update(user_id=uid, name=name)
    return redirect(url_for("pages.home"))


@pages.post("/activities/<id:activity_id>/launch")
def launch(activity_id: int):  # type: ignore[no-untyped-def]
    uid = user_id()
    lab = services.launch(rt(), uid, activity_id, actor=f"user:{uid}")
    remember_lab(lab.id)
    return redirect(url_for("pages.lab_page", lab_id=lab.id))


@pages.get("/labs/<id:lab_id>")
def lab_page(lab_id: int):  # type: ignore[no-untyped-def]
    with rt().session() as db:
        lab = db.get(Lab, lab_id)
        if lab is None or lab.user_id != user_id():
            abort(404)
        remember_lab(lab.id)
        return render_template(
            "lab.html", lab=lab, settings=rt().settings, labels=STATE_LABELS, layouts=LAYOUTS, watch=False, learner_name="",
            instructions=instructions.render(lab.activity.image.spec),
            takeaway=takeaway.available(lab.activity.image.spec),
            weekly_limit=usage_limits.status(db, lab),
        )
