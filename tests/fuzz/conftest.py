"""The fuzzing profile: a modest, deterministic number of examples in the default run, many more by hand.

`LABDESK_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/fuzz` runs 5,000 examples per property on
fresh random seeds (docs/fuzzing.md). The default run is derandomised so that the suite gives the same
answer every time; a finding is kept as an explicit `@example` beside the property it broke. No example
database is written (the repository has no place for it), so a failure prints its example instead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = "labdesk-fuzz"
DEFAULT_EXAMPLES = 150
_by_hand = os.environ.get("LABDESK_FUZZ_EXAMPLES", "").strip()

settings.register_profile(
    PROFILE,
    max_examples=max(1, int(_by_hand)) if _by_hand.isascii() and _by_hand.isdigit() else DEFAULT_EXAMPLES,
    deadline=None,  # a PostgreSQL round trip or a JWKS fetch may be slow once; speed is for bench/
    derandomize=not _by_hand,
    database=None,
    print_blob=True,
    # The app, database and platform fixtures are built once per test and shared by its examples on
    # purpose: each example starts its own login, so nothing of one example leaks into the next.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz_settings(share: float = 1.0) -> settings:
    """The profile, with `share` of its examples for a property that costs more per example."""
    profile = settings.get_profile(PROFILE)
    return settings(profile, max_examples=max(10, int(profile.max_examples * share)))
