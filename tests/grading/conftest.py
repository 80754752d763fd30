"""Fixtures for grading tests: a real sshd on loopback and a "lab" on it laid out like the image.

The lab has two throwaway accounts, as docs/images.md describes them: the `learner` (home 0750) and the
`grader`, a member of the learner's group, whose key is authorized with
`restrict,command="<the repository's grader-run>"` so sshd runs the REAL grader-run whatever is asked,
as the image's `ForceCommand` does. Its named checks live in a directory of the lab (`checks`), made
world-writable on purpose: a check directory a careless image left open to the learner.
"""

from __future__ import annotations

import grp
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from broker.grading import CheckTarget
from broker.remote import SshTarget
from tests.support.sshd import Sshd, generate_key_pair

REPO = Path(__file__).resolve().parents[2]
GRADER_RUN = REPO / "desktop-images/recipes/debian-lab/files/grader-run"




@dataclass
class Lab:
    sshd: Sshd
    learner: str
    learner_key: str
    grader: str
    grader_key: str
    checks: Path  # the named checks' directory (world-writable on purpose)

    @property
    def learner_home(self) -> Path:
        return Path(pwd.getpwnam(self.learner).pw_dir)

    @property
    def grader_home(self) -> Path:
        return Path(pwd.getpwnam(self.grader).pw_dir)

    def target(self, **changes: object) -> CheckTarget:
        """The CheckTarget a connector would return for this lab's machine (grader-run forced)."""
        fields: dict[str, object] = dict(
            host="main",
            runner="ssh",
            address=self.sshd.host,
            port=self.sshd.port,
            user=self.grader,
            private_key=self.grader_key,
            extra={"command": "grader-run"},
        )
        fields.update(changes)
        return CheckTarget(**fields)  # type: ignore[arg-type]

    def as_learner(self) -> SshTarget:
        return SshTarget(self.sshd.host, self.sshd.port, self.learner, self.learner_key)


@pytest.fixture
def lab(sshd: Sshd) -> Iterator[Lab]:
    """A learner and a grader (grader-run forced by its key's `command=`), removed afterwards."""
    token = secrets.token_hex(3)
    learner_private, learner_public = generate_key_pair()
    grader_private, grader_public = generate_key_pair()
    checks = sshd.dir / f"checks-{token}"
    checks.mkdir()
    checks.chmod(0o777)  # writable by everyone: the careless image
    learner = sshd.add_user(f"ldlearn{token}", learner_public)
    options = f'restrict,command="LABDESK_CHECKS_DIR={checks} {GRADER_RUN}"'
    grader = sshd.add_user(f"ldgrade{token}", grader_public, key_options=options)
    try:
        # As in the image: the grader reads the learner's work through the learner's group (home 0750).
        home = Path(pwd.getpwnam(learner).pw_dir)
        group = grp.getgrgid(home.stat().st_gid).gr_name
        subprocess.run(["usermod", "--append", "--groups", group, grader], check=True, capture_output=True)
        home.chmod(0o750)
        yield Lab(sshd, learner, learner_private, grader, grader_private, checks)
    finally:
        for user in (learner, grader):
            if user in sshd.users:
                sshd.remove_user(user)
        shutil.rmtree(checks, ignore_errors=True)
