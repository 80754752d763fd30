"""`labdesk doctor`'s LTI checks: can an LMS launch LabDesk, and can LabDesk sign what it sends back?

They live here because the broker may not import LTI (.importlinter); app.py registers them with
`broker.doctor.add_checks`. Like every doctor check they only read.
"""

from __future__ import annotations

from sqlalchemy import select

from broker.doctor import Check, Context, Result, fail, ok, warn
from broker.errors import ConfigError
from broker.runtime import Runtime
from lti import platforms
from lti.models import ToolKey


def lti_checks(context: Context) -> list[Check]:
    return [
        Check("lti.platforms", lambda: check_platforms(context.rt), context.timeout, needs=("database",)),
        Check("lti.signing_key", lambda: check_signing_key(context.rt), context.timeout, needs=("database",)),
    ]


def check_platforms(rt: Runtime) -> Result:
    """At least one registered LMS, and each able to launch (a deployment, or new ones accepted)."""
    found = platforms.listing(rt)
    if not found:
        return warn("lti.platforms", "no LMS platform is registered: no course can launch LabDesk",
                    "register one: `labdesk platforms add` or a Dynamic Registration invitation (docs/lms/)")
    closed = [p.name or p.issuer for p in found if not p.deployments and not p.accept_new_deployments]
    if closed:
        return warn("lti.platforms", f"{', '.join(closed)}: no deployment id, so every launch is refused",
                    "add the deployment id the LMS shows (`labdesk platforms add --replace --deployment ID`)")
    return ok("lti.platforms", f"{len(found)} registered ({', '.join(p.name or p.issuer for p in found)})")


def check_signing_key(rt: Runtime) -> Result:
    """LabDesk's current signing key exists and opens with today's encryption keys."""
    with rt.session() as session:
        current = session.scalar(select(ToolKey).where(ToolKey.status == "current"))
    if current is None:
        return warn("lti.signing_key", "LabDesk has no signing key yet (it makes one at the first launch)",
                    "make it now with `labdesk keys rotate`")
    try:
        rt.vault.open(current.private_key)
    except ConfigError:
        return fail("lti.signing_key", f"the current key {current.kid} cannot be decrypted: deep links and grade "
                    "service tokens cannot be signed", "restore the encryption key it was sealed with (encryption_keys)")
    return ok("lti.signing_key", f"current key {current.kid} present and readable")
