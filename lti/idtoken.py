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


MAX_KID = 256


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
        raise LaunchRejected("algorithm", f"The launch is signed with {_shown(header.get('alg'))}; LTI requires RS256.", 401)
    return header


def _key(keys: PlatformKeys, platform: PlatformInfo, kid: str | None) -> Any:
    if kid is not None and len(kid) > MAX_KID:  # no platform names its keys so; not worth a JWKS fetch
        raise LaunchRejected("kid", f"The launch names a key id of {len(kid)} characters; LabDesk reads at most {MAX_KID}.", 401)
    try:
        key = keys.key(platform.key_set_url, kid)
    except KeySetError as exc:
        raise LaunchRejected("keyset", f"The LMS's public keys could not be read ({exc}).", 502) from None
    if key is None:
        raise LaunchRejected("kid", f"The LMS does not publish the key ({_shown(kid)}) this launch was signed with.", 401)
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
    """The LTI claims every launch LabDesk handles must carry, in the shapes the spec gives them: a
    platform that sends a list where an object belongs gets a named refusal, never a failed request."""
    if payload.get(C.VERSION) != "1.3.0":
        raise LaunchRejected("version", f"LTI version {_shown(payload.get(C.VERSION))} is not supported; 1.3.0 is.")
    message_type = payload.get(C.MESSAGE_TYPE)
    if message_type not in C.MESSAGE_TYPES:
        raise LaunchRejected("message_type", f"LabDesk does not handle {_shown(message_type)} messages.")
    required = [C.DEPLOYMENT_ID, C.ROLES, "sub"]
    if message_type == C.RESOURCE_LINK_REQUEST:
        required += [C.RESOURCE_LINK, C.TARGET_LINK_URI]
    else:
        required += [C.DL_SETTINGS]
    for name in required:
        if payload.get(name) is None:
            raise LaunchRejected("claims", f"The launch lacks the required claim '{_short(name)}'.")
    for name in OBJECT_CLAIMS:
        if payload.get(name) is not None and not isinstance(payload[name], dict):
            raise LaunchRejected("claims", f"The launch's '{_short(name)}' claim is not a JSON object.")
    if not isinstance(payload[C.ROLES], list):
        raise LaunchRejected("claims", "The launch's roles claim is not a list.")
    _check_identifiers(payload, message_type)
    if message_type == C.DEEP_LINKING_REQUEST:
        return_url = payload[C.DL_SETTINGS].get("deep_link_return_url")
        if not isinstance(return_url, str) or not return_url.startswith(("https://", "http://")):
            raise LaunchRejected("claims", "The deep-linking request has no return URL.")


# Claims that are JSON objects when present; the identifiers LabDesk stores, and their limit (the spec's
# and the database's: 255 characters).
OBJECT_CLAIMS = (C.RESOURCE_LINK, C.CONTEXT, C.CUSTOM, C.AGS, C.NRPS, C.LAUNCH_PRESENTATION, C.DL_SETTINGS, C.TOOL_PLATFORM)
MAX_IDENTIFIER = 255


def _check_identifiers(payload: dict[str, Any], message_type: str) -> None:
    """`sub`, the deployment id and the resource link id (and a context id when there is one) name rows:
    strings (or numbers, which some platforms send) of 1 to 255 characters, never cut to fit."""
    found = [("sub", payload["sub"]), ("deployment_id", payload[C.DEPLOYMENT_ID])]
    if message_type == C.RESOURCE_LINK_REQUEST:
        found.append(("resource link id", payload[C.RESOURCE_LINK].get("id")))
    context = payload.get(C.CONTEXT)
    if context and context.get("id") not in (None, ""):
        found.append(("context id", context["id"]))
    for name, value in found:
        if identifier(value) is None:
            raise LaunchRejected("claims", f"The launch's {name} is not a string of 1 to {MAX_IDENTIFIER} characters.")


def identifier(value: Any) -> str | None:
    """`value` as the identifier LabDesk stores, or None when it cannot be one."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_IDENTIFIER or "\x00" in value:
        return None
    return value


def _short(claim: str) -> str:
    return claim.rsplit("/", 1)[-1]


def _shown(value: Any) -> str:
    """A claim's value quoted in a refusal, short whatever the platform sent."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
