"""The console's Backends section: the registered backends with their labs and last health check, adding,
editing and removing one (validated and sealed by broker.backend_registry, exactly as `labdesk backends
add|edit|remove`), a health check on request (queued on the backend's own queue: the web never calls a
backend), and enabled, capacity, draining and prices (broker.backend_ops). Every POST is audited by the
broker function it calls.

Secrets never come back to the browser: the edit form lists only the names that are set, each with an
empty field (empty keeps it) and a "remove" box.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Callable

from flask import flash, redirect, render_template, request, url_for
from redis.exceptions import RedisError
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from broker import backend_ops, backend_registry
from broker.errors import LabDeskError
from broker.models import Backend, Lab
from broker.registry import connector_kinds
from web.admin.auth import actor, admin, admin_required, client_address, current_admin
from web.context import rt


def _labs_by_backend() -> dict[int, dict[str, int]]:
    """Lab counts per backend and state, in one grouped query."""
    counts: dict[int, dict[str, int]] = {}
    with rt().session() as db:
        rows = db.execute(select(Lab.backend_id, Lab.state, func.count()).group_by(Lab.backend_id, Lab.state))
        for backend_id, state, count in rows:
            counts.setdefault(backend_id, {})[state] = count
    return counts


def _page(form: dict[str, str] | None = None, error: str = "", error_field: str = "", status: int = 200) -> tuple[str, int]:
    """The list and the add form; a refused add comes back with what was typed, minus the secrets."""
    with rt().session() as db:
        backends = backend_ops.statuses(db)
    return render_template(
        "admin/backends.html", admin=current_admin(), backends=backends, labs=_labs_by_backend(),
        health=_health(), kinds=sorted(connector_kinds()),
        form=form or {"name": "", "kind": "", "config": "{}"}, error=error, error_field=error_field,
    ), status


def _health() -> dict[str, dict[str, object]] | None:
    """The last recorded check per backend, its time in UTC as the audit log shows times; None when Redis,
    where the checks are kept, cannot be reached (the page still lists the backends and their actions)."""
    try:
        recorded = backend_registry.last_health(rt())
    except RedisError:
        return None
    return {name: {"ok": h.ok, "when": datetime.fromtimestamp(h.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")}
            for name, h in recorded.items()}


@admin.get("/backends")
@admin_required
def backends():  # type: ignore[no-untyped-def]
    return _page()


@admin.post("/backends")
@admin_required
def backends_add():  # type: ignore[no-untyped-def]
    """Add a backend; a refusal re-shows the form with the reason, and nothing is stored."""
    typed = {k: request.form.get(k, "").strip() for k in ("name", "kind", "config")}
    try:
        config = backend_registry.parse_config(typed["config"])
        secrets = backend_registry.parse_secrets(request.form.get("secrets", "").splitlines())
        backend_registry.register(rt(), typed["name"], typed["kind"], config, secrets,
                                  actor=actor(), address=client_address())
    except backend_registry.InvalidBackendInput as exc:
        return _page(typed, str(exc), exc.field, 400)
    except LabDeskError as exc:
        return _page(typed, str(exc), "config", 400)
    flash(f"Backend {typed['name']} ({typed['kind']}) added; its secrets are sealed.")
    return redirect(url_for("admin.backends"))


@admin.post("/backends/<name>/check")
@admin_required
def backends_check(name: str):  # type: ignore[no-untyped-def]
    return _act(name, lambda: _check(name))


@admin.post("/backends/<name>/drain")
@admin_required
def backends_drain(name: str):  # type: ignore[no-untyped-def]
    return _act(name, lambda: _drain(name, request.form.get("draining") == "1"))


@admin.post("/backends/<name>/enabled")
@admin_required
def backends_enabled(name: str):  # type: ignore[no-untyped-def]
    return _act(name, lambda: _enable(name, request.form.get("enabled") == "1"))


@admin.post("/backends/<name>/capacity")
@admin_required
def backends_capacity(name: str):  # type: ignore[no-untyped-def]
    return _act(name, lambda: _capacity(name, request.form.get("capacity", "").strip()))


@admin.post("/backends/<name>/prices")
@admin_required
def backends_prices(name: str):  # type: ignore[no-untyped-def]
    return _act(name, lambda: _prices(name, _number("hourly_price"), _number("suspended_hourly_price")))


def _check(name: str) -> str:
    queued = backend_registry.request_check(rt(), name, actor=actor(), address=client_address())
    return (f"{name}: health check queued; its result shows here once a worker has run it." if queued
            else f"{name}: a health check is queued already.")


def _drain(name: str, draining: bool) -> str:
    with rt().session() as db:
        backend_ops.set_draining(db, name, draining, actor(), client_address())
    return f"{name} is draining: no new lab starts there." if draining else f"{name} takes new labs again."


def _enable(name: str, enabled: bool) -> str:
    with rt().session() as db:
        backend_ops.set_enabled(db, name, enabled, actor(), client_address())
    return (f"{name} is enabled: it takes new labs again." if enabled else
            f"{name} is disabled: no new labs and no launches there; its labs can still be suspended and deleted.")


def _capacity(name: str, raw: str) -> str:
    """Empty gives the limit back to the backend; anything else must be a whole number (set_capacity says so)."""
    capacity: int | str | None = int(raw) if raw.isdigit() else (raw or None)
    with rt().session() as db:
        backend_ops.set_capacity(db, name, capacity, actor(), client_address())  # type: ignore[arg-type]
    return f"{name}: capacity {raw or 'left to the backend'}."


def _prices(name: str, hourly: float | str | None, suspended: float | str | None) -> str:
    with rt().session() as db:
        backend_ops.set_prices(db, name, hourly, suspended, actor(), client_address())  # type: ignore[arg-type]
    return f"{name}: prices saved."


def _number(field: str) -> float | str | None:
    """A typed price: empty is unknown (None); text that is no number goes on to be refused with its reason."""
    raw = request.form.get(field, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return raw


def _act(name: str, action: Callable[[], str]) -> Response:
    """Run one action on a backend; its outcome, or the refusal's reason, shows on the list."""
    try:
        flash(action())
    except LabDeskError as exc:
        flash(f"{name}: {exc}", "error")
    return redirect(url_for("admin.backends") + f"#backend-{name}")


# -- edit -----------------------------------------------------------------------------------------------
@admin.get("/backends/<name>/edit")
@admin_required
def backends_edit_form(name: str):  # type: ignore[no-untyped-def]
    backend = _found(name)
    return _edit_page(backend, {"config": json.dumps(backend.config, indent=2, sort_keys=True), "remove": []})


@admin.post("/backends/<name>/edit")
@admin_required
def backends_edit(name: str):  # type: ignore[no-untyped-def]
    """Save the config and the secret changes; a refusal re-shows the form with the reason next to the
    field at fault and what was typed (except secret values), and changes nothing."""
    backend = _found(name)
    typed = {"config": request.form.get("config", ""), "remove": request.form.getlist("remove")}
    try:
        config = backend_registry.parse_config(typed["config"])
        changes = _secret_changes(backend_registry.secret_names(rt(), name))
        summary = backend_registry.edit(rt(), name, config, changes, actor=actor(), address=client_address())
    except backend_registry.InvalidBackendInput as exc:
        return _edit_page(backend, typed, str(exc), exc.field, 400)
    except LabDeskError as exc:  # ConfigError from the connector's parser, naming the key
        return _edit_page(backend, typed, str(exc), "config", 400)
    flash(f"{name} saved ({summary}). Running labs keep running; new operations use the new settings.")
    return redirect(url_for("admin.backends") + f"#backend-{name}")


def _secret_changes(names: list[str]) -> backend_registry.SecretChanges:
    """Each set secret's field (empty keeps it), its "remove" box, and new KEY=VALUE lines."""
    replace = {n: request.form.get(f"secret:{n}", "") for n in names}
    replace = {n: value for n, value in replace.items() if value}
    added = backend_registry.parse_secrets(request.form.get("new_secrets", "").splitlines())
    twice = sorted(set(replace) & set(added))
    if twice:
        raise backend_registry.InvalidBackendInput("secrets", f"{twice[0]}: given twice (in its own field and in the new lines)")
    return backend_registry.SecretChanges(replace | added, frozenset(request.form.getlist("remove")))


def _edit_page(backend: Backend, typed: dict[str, object], error: str = "", error_field: str = "",
               status: int = 200) -> tuple[str, int]:
    return render_template(
        "admin/backend_edit.html", admin=current_admin(), backend=backend,
        secret_names=backend_registry.secret_names(rt(), backend.name), form=typed, error=error,
        error_field=error_field,
    ), status


# -- remove ---------------------------------------------------------------------------------------------
@admin.get("/backends/<name>/remove")
@admin_required
def backends_remove_confirm(name: str):  # type: ignore[no-untyped-def]
    """The confirmation page: what removing does, or why it is refused now."""
    backend = _found(name)
    return render_template("admin/backend_remove.html", admin=current_admin(), backend=backend,
                           usage=backend_registry.usage(rt(), name))


@admin.post("/backends/<name>/remove")
@admin_required
def backends_remove(name: str):  # type: ignore[no-untyped-def]
    try:
        backend_registry.remove(rt(), name, actor=actor(), address=client_address())
    except backend_registry.BackendInUse as exc:
        flash(f"Not removed: {exc}.", "error")
        return redirect(url_for("admin.backends_remove_confirm", name=name))
    except LabDeskError as exc:
        flash(f"{name}: {exc}", "error")
        return redirect(url_for("admin.backends"))
    flash(f"Backend {name} removed, with its sealed secrets.")
    return redirect(url_for("admin.backends"))


def _found(name: str) -> Backend:
    """The backend's row (detached); NoSuchBackend otherwise, which goes back to the list saying so."""
    with rt().session() as db:
        backend = db.scalar(select(Backend).where(Backend.name == name))
        if backend is None:
            raise backend_registry.NoSuchBackend(f"no backend named '{name}'")
        db.expunge(backend)
        return backend


@admin.errorhandler(backend_registry.NoSuchBackend)
def _no_such_backend(exc: backend_registry.NoSuchBackend) -> Response:
    flash(f"{exc} (removed meanwhile?).", "error")
    return redirect(url_for("admin.backends"))
