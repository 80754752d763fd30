"""Sign-in with the institution's OpenID Connect provider, through authlib's Flask client.

authlib does the protocol: discovery from `<issuer>/.well-known/openid-configuration`, the authorization
code flow with PKCE (S256), `state` and `nonce` kept in the session, the code exchange, and the id_token's
checks (signature against the provider's JWKS, `iss`, `aud`, `exp`, `nonce`). This module only turns the
verified claims into a `broker.admins.OidcIdentity`; whether that person may be an admin is the broker's rule.
"""

from __future__ import annotations

from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Flask, current_app
from joserfc.errors import JoseError

from broker.admins import OidcIdentity
from broker.config import Settings

CLIENT = "institution"
EXTENSION = "labdesk.admin_oidc"


class OidcFailed(Exception):
    """The provider's answer could not be trusted or was an error; the message is for the admin."""


def setup(app: Flask, settings: Settings) -> None:
    """Register the client when an issuer is configured; discovery happens at the first sign-in."""
    if not settings.admin_oidc_issuer:
        return
    oauth = OAuth(app)
    oauth.register(
        CLIENT,
        client_id=settings.admin_oidc_client_id,
        client_secret=settings.admin_oidc_client_secret,
        server_metadata_url=settings.admin_oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256",
                       "timeout": settings.lti_http_timeout},
    )
    app.extensions[EXTENSION] = oauth.create_client(CLIENT)


def client() -> Any | None:
    """The registered client, or None when OIDC sign-in is not configured."""
    return current_app.extensions.get(EXTENSION)


def callback_url(settings: Settings) -> str:
    """The redirect URI registered at the provider: built from `public_url`, never from the request's Host."""
    return settings.public_url.rstrip("/") + "/admin/oidc/callback"


def start(oidc_client: Any, settings: Settings) -> Any:
    """The redirect to the provider's authorization endpoint (discovery happens here the first time)."""
    try:
        return oidc_client.authorize_redirect(callback_url(settings))
    except (AuthlibBaseError, requests.RequestException, ValueError, KeyError, RuntimeError) as exc:
        raise OidcFailed(_reason(exc)) from exc


def identity_from_callback(oidc_client: Any) -> OidcIdentity:
    """Finish the code flow on the callback request and return who the verified id_token names."""
    try:
        token = oidc_client.authorize_access_token()
    except (AuthlibBaseError, JoseError, requests.RequestException, ValueError, KeyError) as exc:
        raise OidcFailed(_reason(exc)) from exc
    claims = token.get("userinfo")
    if not claims or not claims.get("sub"):
        raise OidcFailed("the provider sent no id_token")
    return OidcIdentity(
        issuer=str(claims["iss"]), subject=str(claims["sub"]), email=str(claims.get("email", "")),
        email_verified=claims.get("email_verified") is True, name=str(claims.get("name", "")),
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, requests.RequestException):
        return "the identity provider could not be reached"
    if isinstance(exc, AuthlibBaseError) and getattr(exc, "error", "") == "mismatching_state":
        return "this sign-in was not started here or has expired"
    return f"the identity provider's answer was refused ({type(exc).__name__}: {exc})"[:300]
