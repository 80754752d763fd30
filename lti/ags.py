"""Assignment and Grade Services: the line item of an activity, and posting a score to it.

Which line item a score belongs to: the one the LMS named at launch (`lineitem` in the AGS claim); else
one found in the line items container by `resource_link_id` (the LMS may have made one when the link
was placed); else one LabDesk creates, if the LMS granted the lineitem scope. Found or created, it is
remembered in `lti_link_services`, so the lookup happens once per activity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import LockError
from sqlalchemy import update

from broker.models import Activity
from broker.runtime import Runtime
from lti import platforms
from lti.claims import SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_SCORE
from lti.models import LinkServices
from lti.platforms import PlatformInfo
from lti.service_token import PermanentServiceError, TransientServiceError, call, pages

SCORE_MEDIA = "application/vnd.ims.lis.v1.score+json"
LINEITEM_MEDIA = "application/vnd.ims.lis.v2.lineitem+json"
LINEITEMS_MEDIA = "application/vnd.ims.lis.v2.lineitemcontainer+json"
LINEITEM_TAG = "labdesk"
LINEITEM_LOCK_KEY = "labdesk:lti:lineitem-lock:{activity}"
MAX_LINEITEM_PAGES = 20


@dataclass(frozen=True)
class GradeLink:
    """What LabDesk knows about an activity's gradebook column, detached from any session."""

    activity_id: int
    resource_link_id: str
    title: str
    platform: PlatformInfo
    lineitem_url: str
    lineitems_url: str
    scopes: frozenset[str]

    @property
    def token_scopes(self) -> frozenset[str]:
        """The AGS scopes to ask a token for: always the same set per grant, so one cached token serves
        every score of the platform."""
        return frozenset({SCOPE_SCORE}) | (self.scopes & {SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY})


def grade_link(rt: Runtime, activity_id: int) -> GradeLink:
    """The activity's grade service as last launched; permanent error if the LMS offered none."""
    with rt.session() as session:
        services = session.get(LinkServices, activity_id)
        activity = session.get(Activity, activity_id)
        if services is None or activity is None:
            raise PermanentServiceError(f"activity {activity_id} has no LMS grade service (it was never launched with AGS)")
        granted = frozenset(services.ags_scopes or ())
        if SCOPE_SCORE not in granted:
            raise PermanentServiceError(f"the LMS did not grant LabDesk the score scope for activity {activity_id}")
        return GradeLink(
            activity_id, activity.resource_link_id, activity.title, platforms.by_id(rt, services.platform_id),
            services.lineitem_url, services.lineitems_url, granted,
        )


def post_score(rt: Runtime, activity_id: int, payload: dict[str, Any]) -> None:
    """POST one score, exactly as given, to the activity's line item."""
    link = grade_link(rt, activity_id)
    lineitem = link.lineitem_url or lineitem_for(rt, link, payload.get("scoreMaximum", 100))
    body = json.dumps(payload)
    call(rt, link.platform, link.token_scopes, "POST", scores_url(lineitem), data=body, headers={"Content-Type": SCORE_MEDIA})


def scores_url(lineitem_url: str) -> str:
    """The line item's scores endpoint: `/scores` goes at the end of the path, before any query string
    (Moodle's line item URLs carry `?type_id=…`)."""
    parts = urlsplit(lineitem_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/scores"))


def lineitem_for(rt: Runtime, link: GradeLink, score_maximum: float) -> str:
    """Find or create the activity's line item, once: a Redis lock keeps two workers delivering the
    first scores of an activity at the same moment from creating two gradebook columns."""
    lock = rt.redis.lock(LINEITEM_LOCK_KEY.format(activity=link.activity_id), timeout=6 * rt.settings.lti_http_timeout)
    try:
        with lock:
            latest = grade_link(rt, link.activity_id)  # another worker may have remembered one meanwhile
            if latest.lineitem_url:
                return latest.lineitem_url
            url = _find(rt, latest) or _create(rt, latest, score_maximum)
            _remember(rt, link.activity_id, url)
            return url
    except LockError as exc:
        raise TransientServiceError(f"line item of activity {link.activity_id}: lock not acquired ({exc})") from exc


def _find(rt: Runtime, link: GradeLink) -> str | None:
    """The line item of this resource link in the platform's container, if the platform lets us read it."""
    if not link.lineitems_url or not link.scopes & {SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY}:
        return None
    found = pages(
        rt, link.platform, link.token_scopes, link.lineitems_url, LINEITEMS_MEDIA, MAX_LINEITEM_PAGES,
        resource_link_id=link.resource_link_id,
    )
    # The filter is only a hint to the platform: check each item, and prefer one LabDesk tagged.
    items = [
        item for page in found if isinstance(page, list)
        for item in page if isinstance(item, dict) and item.get("resourceLinkId") == link.resource_link_id
    ]
    items.sort(key=lambda item: item.get("tag") != LINEITEM_TAG)
    return str(items[0]["id"]) if items else None


def _create(rt: Runtime, link: GradeLink, score_maximum: float) -> str:
    if not link.lineitems_url or SCOPE_LINEITEM not in link.scopes:
        raise PermanentServiceError(
            f"activity {link.activity_id}: the LMS named no line item and did not grant the lineitem scope to create one"
        )
    item = {"scoreMaximum": score_maximum, "label": link.title, "resourceLinkId": link.resource_link_id, "tag": LINEITEM_TAG}
    headers = {"Content-Type": LINEITEM_MEDIA, "Accept": LINEITEM_MEDIA}
    response = call(rt, link.platform, link.token_scopes, "POST", link.lineitems_url, data=json.dumps(item), headers=headers)
    try:
        return str(response.json()["id"])
    except (ValueError, KeyError, TypeError):
        raise PermanentServiceError(f"POST {link.lineitems_url}: no line item id in the answer: {response.text[:300]}") from None


def _remember(rt: Runtime, activity_id: int, url: str) -> None:
    """Keep the line item for the next scores (unless a launch has meanwhile named one)."""
    with rt.session() as session:
        session.execute(
            update(LinkServices)
            .where(LinkServices.activity_id == activity_id, LinkServices.lineitem_url == "")
            .values(lineitem_url=url)
        )
        session.commit()
