"""An OpenID Connect provider double on loopback that speaks the real protocol, for the admin sign-in.

It serves discovery (`/.well-known/openid-configuration`), `/authorize` (auto-consent: it redirects back at
once with a code for the configured user), `/token` (checks the client secret, the redirect URI and the
PKCE verifier, then returns an RS256 id_token with the login's nonce) and `/jwks`. `mode` makes it
misbehave the way a test needs: sign with a key it does not publish, tamper with the signed claims, or
answer with another nonce.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "labdesk-admin"
CLIENT_SECRET = "s3cret-of-the-client"
KID = "idp-key-1"
MODES = ("ok", "other_key", "tampered", "wrong_nonce")


@dataclass
class OidcUser:
    sub: str
    email: str
    email_verified: bool | None = True  # None: the claim is left out, as some providers do
    name: str = ""


@dataclass
class IdpState:
    user: OidcUser = field(default_factory=lambda: OidcUser("grace-1", "grace@uni.example"))
    mode: str = "ok"
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pkce_verified: int = 0
    token_requests: int = 0
    redirect_uris: list[str] = field(default_factory=list)


class OidcProvider:
    """The provider on 127.0.0.1:<free port>; `issuer` is its URL. Stop with `close`."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.state = IdpState()
        provider = self

        class Handler(_Handler):
            idp = provider

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-idp", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS256"}]}

    def id_token(self, login: dict[str, Any]) -> str:
        """The id_token for a login, spoiled as `mode` says."""
        user, now, mode = self.state.user, int(time.time()), self.state.mode
        claims = {"iss": self.issuer, "sub": user.sub, "aud": CLIENT_ID, "iat": now, "exp": now + 300,
                  "nonce": "not-the-nonce" if mode == "wrong_nonce" else login["nonce"],
                  "email": user.email, "email_verified": user.email_verified, "name": user.name}
        if user.email_verified is None:
            del claims["email_verified"]
        key = self.other_key if mode == "other_key" else self.key
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})
        if mode == "tampered":
            head, _, sig = token.split(".")
            forged = {**claims, "email": "root@uni.example", "sub": "root"}
            body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
            token = f"{head}.{body}.{sig}"
        return token


class _Handler(BaseHTTPRequestHandler):
    idp: OidcProvider

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def _json(self, data: dict[str, Any], status: int = 200) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path == "/.well-known/openid-configuration":
            return self._json(self.idp.discovery())
        if url.path == "/jwks":
            return self._json(self.idp.jwks())
        if url.path == "/authorize":
            return self._authorize({k: v[0] for k, v in parse_qs(url.query).items()})
        self._json({"error": "not_found"}, 404)

    def _authorize(self, query: dict[str, str]) -> None:
        if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code" or "openid" not in query.get("scope", ""):
            return self._json({"error": "invalid_request"}, 400)
        self.idp.state.redirect_uris.append(query["redirect_uri"])
        code = secrets.token_urlsafe(16)
        self.idp.state.codes[code] = {
            "nonce": query.get("nonce", ""), "challenge": query.get("code_challenge", ""),
            "method": query.get("code_challenge_method", ""), "redirect_uri": query["redirect_uri"],
        }
        self.send_response(302)
        self.send_header("Location", query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")}))
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        if urlparse(self.path).path != "/token":
            return self._json({"error": "not_found"}, 404)
        self.idp.state.token_requests += 1
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()).items()}
        login = self.idp.state.codes.pop(form.get("code", ""), None)
        if not self._client_ok(form) or login is None or form.get("redirect_uri") != login["redirect_uri"]:
            return self._json({"error": "invalid_grant"}, 400)
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if login["method"] != "S256" or digest != login["challenge"]:
            return self._json({"error": "invalid_grant", "error_description": "PKCE verification failed"}, 400)
        self.idp.state.pkce_verified += 1
        self._json({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                    "id_token": self.idp.id_token(login)})

    def _client_ok(self, form: dict[str, str]) -> bool:
        basic = self.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == CLIENT_ID and secret == CLIENT_SECRET
