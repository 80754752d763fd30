"""A platform of the test's own for launch tests: RSA keys published as a JWKS over real HTTP, and
id_tokens signed on demand, so each security check can be fed exactly the token that should fail it.

It speaks the real protocol (JWKS over HTTP, RS256 id_tokens with the LTI claims) and is driven by the
test, like an LMS would drive a browser through login and launch.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"
INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"
REMOVE = object()
TOP_LEVEL = {"iss", "aud", "azp", "sub", "exp", "iat", "nbf", "nonce", "name", "email", "given_name", "family_name"}


class SigningPlatform:
    """Keys, a JWKS endpoint and a token factory; `rotate` adds a key that signs from then on."""

    def __init__(self, client_id: str = "tool-client", deployment_id: str = "deploy-1") -> None:
        self.client_id, self.deployment_id = client_id, deployment_id
        self.keys: list[tuple[str, Any]] = []
        self.jwks_fetches = 0
        self.rotate()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self.issuer = self.url
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def rotate(self, publish: bool = True) -> str:
        kid = secrets.token_hex(6)
        self.keys.append((kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        self._published = [k for k, _ in self.keys] if publish else [k for k, _ in self.keys[:-1]]
        return kid

    def publish_all(self) -> None:
        self._published = [k for k, _ in self.keys]

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/jwks":
            self.jwks_fetches += 1
            return Response(json.dumps(self.jwks()), content_type="application/json")(environ, start_response)
        return Response("not found", status=404)(environ, start_response)

    def jwks(self) -> dict[str, Any]:
        found = []
        for kid, key in self.keys:
            if kid in self._published:
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                found.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": found}

    def registration(self) -> dict[str, Any]:
        """What `lti.platforms.add` needs."""
        return dict(
            issuer=self.issuer, client_id=self.client_id, auth_login_url=self.url + "/auth",
            auth_token_url=self.url + "/token", key_set_url=self.url + "/jwks", deployments=[self.deployment_id],
        )

    def claims(self, nonce: str, /, roles: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer, "aud": self.client_id, "sub": "learner-7", "iat": now, "exp": now + 300, "nonce": nonce,
            "name": "Ada Lovelace", "email": "ada@example.edu",
            LTI + "version": "1.3.0", LTI + "message_type": "LtiResourceLinkRequest",
            LTI + "deployment_id": self.deployment_id, LTI + "target_link_uri": "",
            LTI + "resource_link": {"id": "link-1", "title": "Linux lab"},
            LTI + "roles": roles if roles is not None else [LEARNER],
            LTI + "context": {"id": "course-1", "title": "Networks 101"},
            LTI + "custom": {"lab": "linux-desktop"},
        }
        for name, value in overrides.items():
            key = name if name in payload or name in TOP_LEVEL or "://" in name else LTI + name
            if value is REMOVE:
                payload.pop(key, None)
            else:
                payload[key] = value
        return payload

    def sign(self, payload: dict[str, Any], kid: str | None = None, algorithm: str = "RS256", key: Any = None) -> str:
        kid = kid or self.keys[-1][0]
        private = key or dict(self.keys)[kid]
        return jwt.encode(payload, private, algorithm=algorithm, headers={"kid": kid})


class Browser:
    """A browser on the tool: starts logins like an LMS page would and posts the launch form."""

    def __init__(self, tool_url: str) -> None:
        self.tool_url = tool_url
        self.http = requests.Session()

    def login(self, platform: SigningPlatform, **params: str) -> tuple[str, str]:
        """Run the OIDC login initiation; returns the (state, nonce) the tool sent to the platform."""
        query = dict(
            iss=platform.issuer, login_hint="learner-7", target_link_uri=self.tool_url + "/lti/launch",
            client_id=platform.client_id, lti_message_hint="hint-1", **params,
        )
        response = self.http.get(self.tool_url + "/lti/login", params=query, allow_redirects=False, timeout=10)
        assert response.status_code == 302, response.text
        sent = parse_qs(urlsplit(response.headers["Location"]).query)
        return sent["state"][0], sent["nonce"][0]

    def launch(self, id_token: str, state: str, follow: bool = True) -> requests.Response:
        return self.http.post(
            self.tool_url + "/lti/launch", data={"id_token": id_token, "state": state}, allow_redirects=follow, timeout=10
        )
