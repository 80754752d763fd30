"""`labdesk backends edit|enable|disable|remove|drain|undrain|capacity|price|status`: the admin console's
backend operations, for admins who prefer a shell. Added to the `backends` group of broker.cli; each calls
the same broker function as the console and is audited as `cli:<os user>`.
"""

from __future__ import annotations

from typing import Callable

import click
from sqlalchemy.orm import Session

from broker import backend_ops, backend_registry
from broker.cli import backends, cli_actor, emit, fails_cleanly, json_option, rt


def _number_or_none(value: str, convert: type, what: str) -> object:
    """`none` gives the setting back (no limit, no price); anything else must be a number."""
    if value.strip().lower() == "none":
        return None
    try:
        return convert(value)
    except ValueError:
        raise click.BadParameter(f"expected a number or 'none', got {value!r}", param_hint=what) from None


@backends.command("edit")
@click.argument("name")
@click.option("--config", "config_json", help="The new settings as a JSON object (replaces the config; default: keep it).")
@click.option("--secret", "secret_pairs", multiple=True, help="KEY=VALUE: set or replace one secret (stored encrypted).")
@click.option("--remove-secret", "removed", multiple=True, help="KEY: drop one secret.")
@fails_cleanly
def backends_edit(name: str, config_json: str | None, secret_pairs: tuple[str, ...], removed: tuple[str, ...]) -> None:
    """Change NAME's config and secrets, validated by its connector exactly as on add; secrets not named are kept.
    Running labs keep running; new operations use the new settings."""
    try:
        config = backend_registry.parse_config(config_json) if config_json is not None else backend_registry.config_of(rt(), name)
        changes = backend_registry.SecretChanges(backend_registry.parse_secrets(secret_pairs), frozenset(removed))
        summary = backend_registry.edit(rt(), name, config, changes, actor=cli_actor())
    except backend_registry.InvalidBackendInput as exc:
        hint = {"config": "--config", "secrets": "--secret/--remove-secret"}.get(exc.field, "NAME")
        raise click.BadParameter(str(exc), param_hint=hint) from None
    click.echo(f"backend {name} saved: {summary}")


def _switch(command: str, setter: Callable[[Session, str, bool, str], object], value: bool, summary: str, said: str) -> None:
    """`labdesk backends COMMAND NAME`: turn one of the backend's switches (audited by the setter)."""

    @backends.command(command, help=summary)
    @click.argument("name")
    @fails_cleanly
    def switch(name: str) -> None:
        with rt().session() as session:
            setter(session, name, value, cli_actor())
        click.echo(said.format(name=name))


_switch("enable", backend_ops.set_enabled, True, "Put NAME back in service: new labs and launches again.",
        "backend {name} is enabled")
_switch("disable", backend_ops.set_enabled, False,
        "Put NAME out of service: no new labs, no launches or resumes; its labs can still be suspended and deleted.",
        "backend {name} is disabled: no new labs and no launches there")
_switch("drain", backend_ops.set_draining, True, "Start no new labs on NAME; the labs it holds live on.",
        "backend {name} is draining: it takes no new labs")
_switch("undrain", backend_ops.set_draining, False, "Let NAME take new labs again.", "backend {name} takes new labs again")


@backends.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@fails_cleanly
def backends_remove(name: str, yes: bool) -> None:
    """Remove NAME with its sealed secrets; refused while any activity or lab uses it."""
    found = backend_registry.usage(rt(), name)
    if found.in_use:
        raise backend_registry.BackendInUse(f"{name} is in use: {found.reason()}")
    if not yes:
        click.confirm(f"Remove backend {name} and its sealed secrets? This cannot be undone", abort=True)
    backend_registry.remove(rt(), name, actor=cli_actor())
    click.echo(f"backend {name} removed")


@backends.command("capacity")
@click.argument("name")
@click.argument("labs")
@fails_cleanly
def backends_capacity(name: str, labs: str) -> None:
    """Hold at most LABS labs at once on NAME (suspended ones count); `none` removes the limit."""
    capacity = _number_or_none(labs, int, "LABS")
    with rt().session() as session:
        backend_ops.set_capacity(session, name, capacity, cli_actor())  # type: ignore[arg-type]
    click.echo(f"backend {name}: capacity {labs if capacity is not None else 'none (the backend decides)'}")


@backends.command("price")
@click.argument("name")
@click.argument("running")
@click.argument("suspended")
@fails_cleanly
def backends_price(name: str, running: str, suspended: str) -> None:
    """Prices per lab-hour RUNNING and SUSPENDED for the cost view; `none` means unknown (no cost shown)."""
    hourly = _number_or_none(running, float, "RUNNING")
    suspended_hourly = _number_or_none(suspended, float, "SUSPENDED")
    with rt().session() as session:
        backend_ops.set_prices(session, name, hourly, suspended_hourly, cli_actor())  # type: ignore[arg-type]
    click.echo(f"backend {name}: {running} per running lab-hour, {suspended} per suspended lab-hour")


@backends.command("status")
@json_option
@fails_cleanly
def backends_status(as_json: bool) -> None:
    """Each backend's labs held, capacity, disabled or draining, and prices."""
    with rt().session() as session:
        rows = [vars(s) for s in backend_ops.statuses(session)]

    def lines(rs: list[dict[str, object]]) -> list[str]:
        return [
            f"{r['name']:<20} {r['holding']}/{r['capacity'] if r['capacity'] is not None else '-'} labs"
            f"{'  DISABLED' if not r['enabled'] else ''}{'  DRAINING' if r['draining'] else ''}  price {r['hourly_price']}/{r['suspended_hourly_price']} per hour"
            for r in rs
        ]

    emit(rows, as_json, lines)
