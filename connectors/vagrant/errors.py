"""What a Vagrant failure means for the broker: retry, wait for room, or fail the lab with a clear message.

Vagrant names each failure by its Ruby error class in the `error-exit` record; the classes below are the
ones a hosted lab meets (recorded in tests/connectors/vagrant/recorded/). A class we do not know fails the
lab (PermanentError) with Vagrant's own message for the admin: retrying an unknown failure for an hour
helps nobody, and `labdesk labs retry` exists for the rare one that was passing.
"""

from __future__ import annotations

import re

from broker.errors import CapacityError, ConnectorError, PermanentError, TransientError

BUSY = "The lab host is busy with this lab; retrying."
SLOW = "The lab host is slow to answer; retrying."
UNREACHABLE = "LabDesk could not reach the lab machine yet; retrying."
BOX_MISSING = "This lab's machine image (Vagrant box) is not installed on the lab host. Please tell your instructor."
BROKEN = "This lab's Vagrant set-up is broken. Please tell your instructor."
NO_VAGRANT = "The lab host cannot run Vagrant labs right now. Please tell your instructor."
FULL = "No lab machine is free right now; your lab starts as soon as one is."
FAILED = "The lab machine could not be started. Please tell your instructor."

LOCKED = ("MachineActionLockedError", "EnvironmentLockedError", "VagrantLocked", "BatchMultiError")
SSH = ("SSHConnectionRefused", "SSHConnectionTimeout", "SSHConnectionReset", "SSHNotReady", "SSHDisconnected",
       "SSHConnectionAborted", "SSHHostDown", "SSHNoRoute")
BOX = ("BoxNotFound", "BoxAddShortNotFound", "BoxNotFoundWithProvider", "BoxNotFoundWithProviderAndVersion",
       "BoxNotFoundInCatalog", "BoxAddNoMatchingVersion")
CONFIG = ("VagrantfileSyntaxError", "VagrantfileLoadError", "VagrantfileNameError", "ConfigInvalid",
          "ConfigValidationFailed", "early-failure", "ProviderNotFound", "ProviderNotUsable", "PluginLoadError")
# `vagrant box add|remove` failures an admin meets (recorded/box-*.txt): what it means, in one line
BOX_ADMIN = {
    "BoxAlreadyExists": "already installed (--force replaces it)",
    "DownloaderError": "could not be read or downloaded",
    "BoxMetadataDownloadError": "could not be downloaded",
    "BoxUnpackageFailure": "is not a Vagrant box (it did not unpack)",
    "BoxProviderDoesntMatch": "is a box for another provider",
    "BoxAddNameMismatch": "is named otherwise in its metadata (add it under that name)",
    "BoxAddDirectVersion": "is a box file, which has no versions (only a metadata .json source has)",
    "BoxAddNoMatchingVersion": "has no such version",
    "BoxRemoveNotFound": "is not installed",
    "BoxRemoveVersionNotFound": "is not installed in that version",
    "BoxRemoveProviderNotFound": "is not installed for this backend's provider",
    "BoxRemoveMultiVersion": "has several versions: name one with --version",
    # remove's only question (box add is never asked one: it always names the provider); versions checked
    # before the one in use are removed already
    "UIExpectsTTY": "is used by a machine Vagrant knows (`vagrant global-status`; --force removes it)",
}
NO_ROOM = ("Cannot allocate memory", "not enough free memory", "Insufficient", "address already in use")


def short(kind: str) -> str:
    """The class name without its module path: "Vagrant::Errors::BoxNotFound" → "BoxNotFound"."""
    return kind.rsplit("::", 1)[-1]


def to_broker(kind: str, message: str, doing: str) -> ConnectorError:
    """The broker error for Vagrant's failure `kind`/`message` while `doing` (e.g. "vagrant up of lab 7")."""
    name = short(kind)
    detail = f"{doing}: {kind}: {message.strip()[:2000]}"
    if kind == "timeout":
        return TransientError(detail, SLOW)
    if kind == "not-installed":
        return PermanentError(detail, NO_VAGRANT)
    if name in LOCKED:
        return TransientError(detail, BUSY)
    if name in SSH:
        return TransientError(detail, UNREACHABLE)
    if name in BOX:
        return PermanentError(detail, BOX_MISSING)
    if name in CONFIG:
        return PermanentError(detail, BROKEN)
    if any(words.lower() in message.lower() for words in NO_ROOM):
        return CapacityError(detail, FULL)
    return PermanentError(detail, FAILED)


def box_failure(kind: str, message: str, doing: str) -> ConnectorError:
    """The error of a failed `vagrant box add|remove`, for the admin who ran it: the command line prints
    only the first line, and Vagrant's messages put the useful part (the URL's status, the versions there
    are) last, so the first line is what went wrong plus that part; Vagrant's whole message follows."""
    meaning = BOX_ADMIN.get(short(kind))
    if meaning is None:
        return to_broker(kind, message, doing)
    return PermanentError(f"{doing}: {meaning}{_gist(message)}\n{kind}: {message.strip()[:2000]}", BOX_MISSING)


def _gist(message: str) -> str:
    """The particulars of Vagrant's message: its last paragraph's last line, or its list of versions."""
    paragraphs = [part for part in re.split(r"\n\s*\n", message.strip()) if part.strip()]
    if len(paragraphs) < 2:
        return ""
    lines = [line.strip() for line in paragraphs[-1].splitlines() if line.strip()]
    if all(line.startswith("* ") for line in lines):
        return f" (installed: {', '.join(line[2:] for line in lines)})"
    return f" ({lines[-1]})"
