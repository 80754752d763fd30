"""`labdesk admins …`: local bootstrap admins of the console (docs/admin.md).

A new admin's password is generated and printed once (or read from `--password-file`); only its scrypt
hash is stored. Every change is written to the audit log as `cli:<os user>`.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from broker import admins, audit
from broker.cli import emit, fails_cleanly, json_option, rt


def _actor() -> str:
    """Who ran the command, as the audit log names them."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@click.group("admins")
def admins_group() -> None:
    """Admins of the web console (/admin/)."""


@admins_group.command("add")
@click.argument("username")
@click.option("--email", default="", help="Their email; an OIDC sign-in with this verified email links to them.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read the password from this file (at least 12 characters) instead of generating one.")
@click.option("--oidc-subject", default="", help="Link to this subject (`sub`) of the configured OpenID Connect "
              "provider instead of a password: for providers that send no email_verified claim.")
@fails_cleanly
def admins_add(username: str, email: str, password_file: Path | None, oidc_subject: str) -> None:
    """Add an admin: local with a password (generated and printed once), or linked to the provider by subject."""
    if oidc_subject:
        _add_linked(username, email, oidc_subject)
        return
    password = password_file.read_text().strip() if password_file else admins.new_password()
    with rt().session() as session:
        admins.create_local(session, username, password, email)
        audit.record(session, _actor(), "admin.add", target=f"admin:{username}", detail="local admin added")
        session.commit()
    click.echo(f"admin {username} added")
    if password_file is None:
        click.echo(f"password (shown once, store it now): {password}")


def _add_linked(username: str, email: str, subject: str) -> None:
    issuer = rt().settings.admin_oidc_issuer
    with rt().session() as session:
        admins.create_linked(session, username, issuer, subject, email)
        audit.record(session, _actor(), "admin.add", target=f"admin:{username}", detail=f"linked to {issuer} subject {subject}")
        session.commit()
    click.echo(f"admin {username} added; they sign in with {issuer} as subject {subject}")


@admins_group.command("list")
@json_option
@fails_cleanly
def admins_list(as_json: bool) -> None:
    """List admins (no password hashes)."""
    with rt().session() as session:
        rows = [
            {"username": a.username, "email": a.email, "kind": "oidc" if a.subject else "local",
             "issuer": a.issuer or "", "disabled": a.disabled, "created_at": a.created_at,
             "last_sign_in_at": a.last_sign_in_at}
            for a in admins.all_admins(session)
        ]
    emit(rows, as_json, lambda rs: [f"{r['username']:<30} {r['kind']:<6} {'disabled' if r['disabled'] else 'active'}"
                                    for r in rs] or ["no admins"])


@admins_group.command("disable")
@click.argument("username")
@fails_cleanly
def admins_disable(username: str) -> None:
    """Disable an admin: they can no longer sign in, and open sessions end at their next request."""
    with rt().session() as session:
        admins.disable(session, username)
        audit.record(session, _actor(), "admin.disable", target=f"admin:{username}")
        session.commit()
    click.echo(f"admin {username} disabled")
