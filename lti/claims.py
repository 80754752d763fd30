"""The LTI 1.3 claims LabDesk reads, and the launch they describe once validated.

Claim names are the spec's full URIs; `Launch` gives the rest of LabDesk typed, short names for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
MESSAGE_TYPE = LTI + "message_type"
VERSION = LTI + "version"
DEPLOYMENT_ID = LTI + "deployment_id"
TARGET_LINK_URI = LTI + "target_link_uri"
RESOURCE_LINK = LTI + "resource_link"
ROLES = LTI + "roles"
CONTEXT = LTI + "context"
CUSTOM = LTI + "custom"
LAUNCH_PRESENTATION = LTI + "launch_presentation"
TOOL_PLATFORM = LTI + "tool_platform"
AGS = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
NRPS = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
DL_SETTINGS = "https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"
DL_CONTENT_ITEMS = "https://purl.imsglobal.org/spec/lti-dl/claim/content_items"
DL_DATA = "https://purl.imsglobal.org/spec/lti-dl/claim/data"
DL_MSG = "https://purl.imsglobal.org/spec/lti-dl/claim/msg"

RESOURCE_LINK_REQUEST = "LtiResourceLinkRequest"
DEEP_LINKING_REQUEST = "LtiDeepLinkingRequest"
DEEP_LINKING_RESPONSE = "LtiDeepLinkingResponse"
MESSAGE_TYPES = (RESOURCE_LINK_REQUEST, DEEP_LINKING_REQUEST)

SCOPE_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_LINEITEM_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
SCOPE_RESULT_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"


@dataclass(frozen=True)
class DeepLinkSettings:
    """What the platform accepts back from the lab picker."""

    return_url: str
    accept_types: tuple[str, ...]
    accept_multiple: bool
    accept_lineitem: bool
    data: str | None
    title: str = ""

    @classmethod
    def of(cls, claim: dict[str, Any]) -> "DeepLinkSettings":
        types = claim.get("accept_types")
        title = claim.get("title")
        return cls(
            return_url=claim["deep_link_return_url"],
            accept_types=tuple(t for t in types if isinstance(t, str)) if isinstance(types, list) else (),
            accept_multiple=_flag(claim.get("accept_multiple"), False),
            # The spec makes accept_lineitem optional; absent means the platform did not say no.
            accept_lineitem=_flag(claim.get("accept_lineitem"), True),
            data=claim.get("data"),  # opaque: handed back to the platform exactly as it came
            title=title[:255] if isinstance(title, str) else "",
        )


def _flag(value: Any, default: bool) -> bool:
    """A boolean claim; anything but true or false (a string "false" included) is the default."""
    return value if isinstance(value, bool) else default


@dataclass(frozen=True)
class Launch:
    """A validated launch, in LabDesk's words."""

    platform_id: int
    issuer: str
    client_id: str
    deployment_id: str
    message_type: str
    subject: str
    name: str
    email: str
    roles: tuple[str, ...]
    view: str  # "instructor" or "learner" (lti.roles decides)
    test_user: bool
    context_id: str
    context_title: str
    resource_link_id: str
    resource_link_title: str
    custom: dict[str, Any] = field(default_factory=dict)
    lineitem_url: str = ""
    lineitems_url: str = ""
    ags_scopes: tuple[str, ...] = ()
    memberships_url: str = ""
    return_url: str = ""
    deep_link: DeepLinkSettings | None = None
