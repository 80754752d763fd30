"""The LTI 1.3 security checks on a launch's id_token (1EdTech Security Framework §5.1.3), one function
each, so every refusal has a name, a readable reason and a test.

Order matters: nothing in the token is trusted before its signature is verified with the key its
registered platform publishes, and no claim is read before the token's issuer and audience match the
registration that the login (the `state`) started.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from lti import claims as C
from lti.platform_keys import KeySetError, PlatformKeys
from lti.platforms import PlatformInfo


class LaunchRejected(Exception):
    """A launch LabDesk refuses. `code` names the check (logs, tests); `reason` is for the person."""

    def __init__(self, code: str, reason: str, status: int = 400) -> None:
        super().__init__(f"{code}: {reason}")
        self.code, self.reason, self.status = code, reason, status


def verify(token: str, platform: PlatformInfo, keys: PlatformKeys, leeway: int, max_age: int) -> dict[str, Any]:
    """The token's claims once its signature, issuer, audience and times check out."""
    header = _header(token)
    key = _key(keys, platform, header.get("kid"))
    try:
        payload = jwt.decode(
            token, key, algorithms=["RS256"], audience=platform.client_id, issuer=platform.issuer,
            leeway=leeway, options={"require": ["exp", "iat", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise LaunchRejected("expired", "The launch has expired. Go back to your course and open the link again.") from None
    except jwt.ImmatureSignatureError:
        raise LaunchRejected("not_yet_valid", "The launch was issued in the future; the LMS clock is wrong.") from None
    except jwt.InvalidIssuerError:
        raise LaunchRejected("issuer", "The launch did not come from the LMS that started it.") from None
    except jwt.InvalidAudienceError:
        raise LaunchRejected("audience", "The launch was meant for another tool.") from None
    except jwt.MissingRequiredClaimError as exc:
        raise LaunchRejected("claims", f"The launch lacks the required claim '{exc.claim}'.") from None
    except jwt.InvalidSignatureError:
        raise LaunchRejected("signature", "The launch's signature does not verify.", 401) from None
    except jwt.PyJWTError as exc:
        raise LaunchRejected("token", f"The launch token is not valid: {exc}.") from None
    _check_azp(payload, platform.client_id)
    _check_age(payload, leeway, max_age)
    return payload


def _header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise LaunchRejected("token", "The launch token is not a JSON Web Token.") from None
    if header.get("alg") != "RS256":
        raise LaunchRejected("algorithm", f"The launch is signed with {header.get('alg')!r}; LTI requires RS256.", 401)
    return header


def _key(keys: PlatformKeys, platform: PlatformInfo, kid: str | None) -> Any:
    try:
        key = keys.key(platform.key_set_url, kid)
    except KeySetError as exc:
        raise LaunchRejected("keyset", f"The LMS's public keys could not be read ({exc}).", 502) from None
    if key is None:
        raise LaunchRejected("kid", f"The LMS does not publish the key ({kid!r}) this launch was signed with.", 401)
    return key


def _check_azp(payload: dict[str, Any], client_id: str) -> None:
    """With several audiences the authorised party must be us; a present `azp` must be us in any case."""
    audiences = payload["aud"] if isinstance(payload["aud"], list) else [payload["aud"]]
    azp = payload.get("azp")
    if (len(audiences) > 1 and azp is None) or (azp is not None and azp != client_id):
        raise LaunchRejected("azp", "The launch's authorised party is not this tool.")


def _check_age(payload: dict[str, Any], leeway: int, max_age: int) -> None:
    issued = payload["iat"]
    if not isinstance(issued, (int, float)) or time.time() - issued > max_age + leeway:
        raise LaunchRejected("too_old", "The launch was issued too long ago. Open the link from your course again.")


def check_message(payload: dict[str, Any]) -> None:
    """The LTI claims every launch LabDesk handles must carry."""
    if payload.get(C.VERSION) != "1.3.0":
        raise LaunchRejected("version", f"LTI version {payload.get(C.VERSION)!r} is not supported; 1.3.0 is.")
    message_type = payload.get(C.MESSAGE_TYPE)
    if message_type not in C.MESSAGE_TYPES:
        raise LaunchRejected("message_type", f"LabDesk does not handle {message_type!r} messages.")
    required = [C.DEPLOYMENT_ID, C.ROLES, "sub"]
    if message_type == C.RESOURCE_LINK_REQUEST:
        required += [C.RESOURCE_LINK, C.TARGET_LINK_URI]
    else:
        required += [C.DL_SETTINGS]
    for name in required:
        if name not in payload:
            raise LaunchRejected("claims", f"The launch lacks the required claim '{name.rsplit('/', 1)[-1]}'.")
    if message_type == C.RESOURCE_LINK_REQUEST and not str(payload[C.RESOURCE_LINK].get("id", "")):
        raise LaunchRejected("claims", "The launch's resource link has no id.")
    if message_type == C.DEEP_LINKING_REQUEST and not payload[C.DL_SETTINGS].get("deep_link_return_url"):
        raise LaunchRejected("claims", "The deep-linking request has no return URL.")
    if not isinstance(payload[C.ROLES], list):
        raise LaunchRejected("claims", "The launch's roles claim is not a list.")
