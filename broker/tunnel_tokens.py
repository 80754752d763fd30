"""Connection tokens: the web's one-minute, single-use permission to open one lab's desktop.

In the spirit of Guacamole's encrypted-JSON authentication, a token is a Fernet token (AES-128-CBC plus
HMAC-SHA256: encrypted and signed) over a small JSON grant. It names the user, the lab, the host of the
lab and whether the session is read-only; it holds no address, port or password. The tunnel resolves
those from the lab's sealed endpoints, so a browser can neither read them nor change them. The key is
derived from the secret key for this one purpose, so a token is useless as a session cookie and back.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import asdict, dataclass

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

USED_PREFIX = "labdesk:tunnel:used:"
MAX_TTL = 60


class Refused(Exception):
    """A desktop session may not open: `message` is for the person, `status` a Guacamole status code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class TokenRefused(Refused):
    """The token cannot open anything (0x0301, unauthorized); `reason` is safe to show and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"This desktop link cannot be used: {reason}. Reload the page.", 0x0301)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """What one token allows: `user_id` may open `host` of `lab_id`, read-only or not."""

    user_id: int
    lab_id: int
    host: str
    read_only: bool
    watch: bool = False  # an instructor joining the learner's live session (implies read_only)
    jti: str = ""


class TokenMinter:
    """Mints and opens tokens with a key derived from the secret key."""

    def __init__(self, secret_key: str, ttl: int = MAX_TTL) -> None:
        self._fernet = Fernet(_derive(secret_key))
        self.ttl = min(ttl, MAX_TTL)

    def mint(self, grant: Grant, now: float | None = None) -> str:
        body = asdict(grant) | {"jti": secrets.token_urlsafe(16), "read_only": grant.read_only or grant.watch}
        moment = int(time.time() if now is None else now)
        return self._fernet.encrypt_at_time(json.dumps(body).encode(), moment).decode()

    def open(self, token: str, now: float | None = None) -> Grant:
        """The grant in `token` if it is ours, untampered and younger than the TTL."""
        moment = int(time.time() if now is None else now)
        try:
            body = self._fernet.decrypt_at_time(token.encode(), self.ttl, moment)
        except InvalidToken:
            raise TokenRefused(self._why(token, moment)) from None
        try:
            return Grant(**json.loads(body))
        except (TypeError, ValueError):
            raise TokenRefused("the token is malformed") from None

    def _why(self, token: str, moment: int) -> str:
        """Tell an expired token (a slow page, a clock problem) from a forged or damaged one."""
        try:
            self._fernet.decrypt_at_time(token.encode(), 10**9, moment)
        except InvalidToken:
            return "the token is invalid (tampered with or not ours)"
        return "the token has expired"


def _derive(secret_key: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"labdesk tunnel tokens")
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))
