"""Fixtures for connector tests: a real sshd on loopback (tests/support/sshd.py), one per session."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.sshd import Sshd, sshd_unavailable_reason


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    """A real OpenSSH server on 127.0.0.1; add throwaway users with `sshd.add_user(public_key=…)`."""
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Sshd() as server:
        yield server
