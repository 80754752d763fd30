"""`errors.to_broker`: what a Vagrant failure means for the broker (retry, wait for room, or fail the lab),
with Vagrant's own words for the admin and a plain message for the learner. Recorded error-exits are used
where a real Vagrant gave one (recorded/error-*.txt)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.errors import CapacityError, ConnectorError, PermanentError, TransientError
from connectors.vagrant import errors, records

RECORDED = Path(__file__).parent / "recorded"
DOING = "vagrant up of labdesk-lab-7"


def recorded_error(name: str) -> tuple[str, str]:
    found = records.error_exit(records.parse((RECORDED / name).read_text()))
    assert found is not None
    return found


def syntax_failure() -> tuple[str, str]:
    """What the CLI makes of the recorded early failure: kind "early-failure" with Vagrant's plain text."""
    return "early-failure", records.parse((RECORDED / "error-syntax.txt").read_text()).text


MEMORY = ("Call to virDomainCreateWithFlags failed: internal error: qemu unexpectedly closed the monitor: "
          "2026-12-07T10:00:00.000000Z qemu-system-x86_64: cannot set up guest memory 'pc.ram': "
          "Cannot allocate memory")
LIBVIRT_ERROR = "VagrantPlugins::ProviderLibvirt::Errors::CreateDomainError"

CASES = [
    # (id, kind, message, broker error class, user message)
    ("locked-recorded", *recorded_error("error-locked.txt"), TransientError, errors.BUSY),
    ("environment-locked", "Vagrant::Errors::EnvironmentLockedError",
     "Vagrant attempted to acquire a lock named 'dotlock', but this lock is being held by another process.",
     TransientError, errors.BUSY),
    ("ssh-refused", "Vagrant::Errors::SSHConnectionRefused",
     "SSH connection was refused! This usually happens if the VM failed to\nboot properly.",
     TransientError, errors.UNREACHABLE),
    ("ssh-timeout", "Vagrant::Errors::SSHConnectionTimeout", "Connection timed out while waiting for the remote",
     TransientError, errors.UNREACHABLE),
    ("box-missing-recorded", *recorded_error("error-box-not-found.txt"), PermanentError, errors.BOX_MISSING),
    ("box-not-found", "Vagrant::Errors::BoxNotFound", "Box 'lab/x' could not be found.",
     PermanentError, errors.BOX_MISSING),
    ("syntax-recorded", *syntax_failure(), PermanentError, errors.BROKEN),
    ("syntax-class", "Vagrant::Errors::VagrantfileSyntaxError",
     "There is a syntax error in the following Vagrantfile.", PermanentError, errors.BROKEN),
    ("config-invalid", "Vagrant::Errors::ConfigInvalid", "There are errors in the configuration of this machine.",
     PermanentError, errors.BROKEN),
    ("timeout", "timeout", "no answer within 900 s", TransientError, errors.SLOW),
    ("not-installed", "not-installed", "vagrant is not installed", PermanentError, errors.NO_VAGRANT),
    ("memory", LIBVIRT_ERROR, MEMORY, CapacityError, errors.FULL),
    ("unknown", "Vagrant::Errors::SomethingNobodyKnows", "Something went wrong in /var/lib/labdesk/x.",
     PermanentError, errors.FAILED),
]


@pytest.mark.parametrize("kind, message, expected, user", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_each_failure_family(kind: str, message: str, expected: type, user: str) -> None:
    error = errors.to_broker(kind, message, DOING)
    assert type(error) is expected
    assert error.user_message == user


@pytest.mark.parametrize("kind, message", [case[1:3] for case in CASES], ids=[c[0] for c in CASES])
def test_the_admin_detail_names_what_was_done_and_vagrants_class(kind: str, message: str) -> None:
    error = errors.to_broker(kind, message, DOING)
    detail = str(error)
    assert detail.startswith(DOING)
    assert kind in detail
    first_line = message.strip().splitlines()[0]
    assert first_line in detail  # Vagrant's own words are kept for the admin


PATH = re.compile(r"(^|[\s'\"(\[])/[\w.-]")
CLASS = re.compile(r"::|\b[A-Z][a-z]+[A-Z]\w*(Error|Exit|Found|Refused|Timeout)\b|Vagrant::|VagrantPlugins")


@pytest.mark.parametrize("kind, message", [case[1:3] for case in CASES], ids=[c[0] for c in CASES])
def test_the_learner_message_has_no_paths_or_ruby_class_names(kind: str, message: str) -> None:
    user = errors.to_broker(kind, message, DOING).user_message
    assert user
    assert not PATH.search(user), user
    assert not CLASS.search(user), user
    assert errors.short(kind) not in user
    assert DOING not in user
    assert message.strip().splitlines()[0] not in user


def test_memory_words_are_found_whatever_their_case() -> None:
    error = errors.to_broker(LIBVIRT_ERROR, "error: NOT ENOUGH FREE MEMORY on the host", DOING)
    assert isinstance(error, CapacityError)


def test_a_known_class_wins_over_words_in_its_message() -> None:
    # a locked machine whose message happens to mention memory is still only busy
    error = errors.to_broker("Vagrant::Errors::MachineActionLockedError", "Cannot allocate memory", DOING)
    assert type(error) is TransientError and error.user_message == errors.BUSY


def test_every_result_is_a_connector_error_with_a_learner_message() -> None:
    for _, kind, message, _, _ in CASES:
        error = errors.to_broker(kind, message, DOING)
        assert isinstance(error, ConnectorError)


def test_a_long_message_is_cut_for_the_admin() -> None:
    error = errors.to_broker("Vagrant::Errors::Whatever", "x" * 10_000, DOING)
    assert len(str(error)) < 2_500
