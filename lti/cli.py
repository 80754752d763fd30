"""`labdesk platforms …` and `labdesk keys …`: the LMS registrations and LabDesk's signing keys.

Same conventions as `broker.cli`: `--json` where a script may read the output, and one `error: …` line
with exit status 1 for bad input (a URL that is not one, a duplicate, an unknown id).
"""

from __future__ import annotations

from typing import Any

import click

from broker.cli import emit, fails_cleanly, json_option, rt
from lti import invites
from lti import keys as tool_keys
from lti import platforms as registry
from lti.platforms import PlatformInfo, RegistrationError


@click.group()
def platforms() -> None:
    """LMS platforms that may launch LabDesk."""


@platforms.command("add")
@click.option("--issuer", required=True, help="The platform's issuer (`iss` of its launches), e.g. https://lms.example.edu.")
@click.option("--client-id", required=True, help="The client id the platform gave LabDesk.")
@click.option("--auth-login-url", required=True, help="The platform's OIDC authorisation (auth request) URL.")
@click.option("--auth-token-url", required=True, help="The platform's OAuth 2 access token URL.")
@click.option("--key-set-url", required=True, help="The platform's public keyset (JWKS) URL.")
@click.option("--deployment", "deployments", multiple=True, metavar="ID", help="A deployment id; repeat for several.")
@click.option("--name", default="", help="A name for admins (default: the issuer).")
@click.option("--audience", default="", help="Token request `aud`, if the platform wants one other than the token URL.")
@click.option("--accept-new-deployments", is_flag=True, help="Record unknown deployment ids at their first launch.")
@click.option("--replace", is_flag=True, help="Update the registration with this issuer and client id if it exists.")
@json_option
@fails_cleanly
def platforms_add(issuer: str, client_id: str, auth_login_url: str, auth_token_url: str, key_set_url: str,
                  deployments: tuple[str, ...], name: str, audience: str, accept_new_deployments: bool,
                  replace: bool, as_json: bool) -> None:
    """Register a platform (an LMS) that may launch LabDesk."""
    deployments = tuple(d.strip() for d in deployments)
    registry.validate(dict(issuer=issuer, client_id=client_id, auth_login_url=auth_login_url, auth_token_url=auth_token_url,
                           key_set_url=key_set_url, auth_audience=audience, name=name, deployments=deployments), OPTIONS)
    try:
        info = registry.add(
            rt(), issuer, client_id, auth_login_url, auth_token_url, key_set_url, deployments=deployments,
            name=name, auth_audience=audience, accept_new_deployments=accept_new_deployments, replace=replace,
        )
    except registry.PlatformExists as exc:
        raise RegistrationError(f"{exc} (use --replace to update it)") from None
    emit(info.as_dict(), as_json, lambda d: [f"platform {d['id']} registered: {_summary(info)}"])


# The options that carry each value, so a refusal names what to fix (lti.platforms.validate checks them).
OPTIONS = {
    "issuer": "--issuer", "client_id": "--client-id", "auth_login_url": "--auth-login-url",
    "auth_token_url": "--auth-token-url", "key_set_url": "--key-set-url", "auth_audience": "--audience",
    "deployments": "--deployment", "name": "--name",
}


def _summary(info: PlatformInfo) -> str:
    deployments = ", ".join(info.deployments) or "none"
    if info.accept_new_deployments:
        deployments += " (+ any new)"
    named = f"{info.name}  " if info.name != info.issuer else ""
    return f"{named}issuer {info.issuer}  client {info.client_id}  deployments: {deployments}"


@platforms.command("list")
@json_option
@fails_cleanly
def platforms_list(as_json: bool) -> None:
    """List registered platforms with their deployments."""
    found = registry.listing(rt())
    emit([p.as_dict() for p in found], as_json,
         lambda _: [f"{p.id:>4}  {_summary(p)}" for p in found] or ["no platforms registered"])


@platforms.command("remove")
@click.argument("platform_id", type=int)
@fails_cleanly
def platforms_remove(platform_id: int) -> None:
    """Remove a platform, its deployments and what launches remembered of its services."""
    info = registry.by_id(rt(), platform_id)
    registry.remove(rt(), platform_id)
    click.echo(f"platform {platform_id} ({info.name}) removed")


@platforms.command("invite")
@fails_cleanly
def platforms_invite() -> None:
    """Print a one-time Dynamic Registration URL (valid a week) to paste into an LMS."""
    click.echo(invites.create(rt()))
    click.echo("Paste it as the tool URL of the LMS's Dynamic Registration; it works once.")


@platforms.group("deployments")
def deployments() -> None:
    """Deployment ids a platform may launch with."""


@deployments.command("add")
@click.argument("platform_id", type=int)
@click.argument("deployment_id")
@fails_cleanly
def deployments_add(platform_id: int, deployment_id: str) -> None:
    """Allow launches from one more deployment of a platform."""
    info = registry.allow_deployment(rt(), platform_id, deployment_id, name="the deployment id")
    click.echo(f"platform {platform_id} ({info.name}) accepts deployment {deployment_id.strip()}")


@click.group()
def keys() -> None:
    """LabDesk's LTI signing keys."""


@keys.command("list")
@json_option
@fails_cleanly
def keys_list(as_json: bool) -> None:
    """Every signing key with its status (private keys are never shown)."""
    found = tool_keys.listing(rt())
    emit(found, as_json, lambda rows: [_key_line(r) for r in rows] or ["no keys yet: LabDesk creates them at first use"])


def _key_line(row: dict[str, Any]) -> str:
    published = "published" if row["status"] in tool_keys.PUBLISHED else ""
    return f"{row['kid']:<18} {row['status']:<9} {row['created_at']}  {published}".rstrip()


@keys.command("rotate")
@json_option
@fails_cleanly
def keys_rotate(as_json: bool) -> None:
    """Sign with the next key from now on; the one it replaces stays published until the next rotation."""
    kid = tool_keys.rotate(rt())
    emit({"current": kid}, as_json, lambda _: [
        f"LabDesk now signs with key {kid}.",
        "The previous key stays published in /lti/jwks until the next rotation, so platforms that cached it keep "
        "verifying; rotate again only after their JWKS caches have expired.",
    ])
