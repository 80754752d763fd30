"""`labdesk admins add|list|disable` and the password hashes behind them."""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path

from click.testing import Result
from sqlalchemy import select

from broker import admins
from broker.models import Admin, AuditEvent
from broker.runtime import Runtime
from tests.test_cli import Labdesk, labdesk, one_error_line  # noqa: F401  (the fixture)


def added_password(result: Result) -> str:
    assert result.exit_code == 0, result.output
    found = re.findall(r"password \(shown once, store it now\): (\S+)", result.stdout)
    assert len(found) == 1, result.stdout
    return found[0]


def test_add_prints_a_strong_password_once_and_stores_only_its_hash(rt: Runtime, labdesk: Labdesk) -> None:
    password = added_password(labdesk("admins", "add", "root", "--email", "root@uni.example"))
    assert len(password) >= 24
    with rt.session() as db:
        row = db.scalar(select(Admin))
        assert (row.username, row.email, row.disabled) == ("root", "root@uni.example", False)
        assert row.password_hash.startswith("scrypt$16384$8$1$") and password not in row.password_hash
        assert admins.verify_local(db, "root", password) is not None
        assert admins.verify_local(db, "root", password + "x") is None
        event = db.scalar(select(AuditEvent))
        assert (event.actor, event.action, event.target) == (f"cli:{getpass.getuser()}", "admin.add", "admin:root")
    listed = labdesk("admins", "list", "--json")
    assert password not in listed.stdout and "scrypt" not in listed.stdout
    assert [(r["username"], r["kind"], r["disabled"]) for r in json.loads(listed.stdout)] == [("root", "local", False)]
    assert added_password(labdesk("admins", "add", "second")) != password, "each admin gets a fresh password"


def test_a_password_file_is_used_and_a_weak_one_refused(rt: Runtime, labdesk: Labdesk, tmp_path: Path) -> None:
    weak, strong = tmp_path / "weak", tmp_path / "strong"
    weak.write_text("short-pw\n")
    strong.write_text("a long enough passphrase\n")
    assert one_error_line(labdesk("admins", "add", "root", "--password-file", str(weak))) == \
        "error: the password is too weak: use at least 12 characters"
    added = labdesk("admins", "add", "root", "--password-file", str(strong))
    assert added.exit_code == 0 and "shown once" not in added.stdout
    with rt.session() as db:
        assert admins.verify_local(db, "root", "a long enough passphrase") is not None
    assert one_error_line(labdesk("admins", "add", "root", "--password-file", str(strong))) == \
        "error: an admin named 'root' already exists"


def test_a_disabled_admin_cannot_sign_in(rt: Runtime, labdesk: Labdesk) -> None:
    password = added_password(labdesk("admins", "add", "root"))
    assert labdesk("admins", "disable", "root").stdout == "admin root disabled\n"
    with rt.session() as db:
        assert admins.verify_local(db, "root", password) is None
        assert [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))] == ["admin.add", "admin.disable"]
    assert "disabled" in labdesk("admins", "list").stdout
    assert one_error_line(labdesk("admins", "disable", "ghost")) == "error: no admin named 'ghost'"


def test_hashes_are_salted_and_a_malformed_hash_never_matches() -> None:
    one, two = admins.hash_password("same password!"), admins.hash_password("same password!")
    assert one != two
    assert admins.check_password("same password!", one) and admins.check_password("same password!", two)
    for broken in ("", "plain", "md5$1$1$1$AA==$AA==", "scrypt$x$8$1$AA==$AA==", one.replace("scrypt", "bcrypt")):
        assert not admins.check_password("same password!", broken)


def test_an_admin_linked_by_subject_needs_a_configured_provider(rt: Runtime, labdesk: Labdesk) -> None:
    assert one_error_line(labdesk("admins", "add", "ada", "--oidc-subject", "ada-7")) == (
        "error: no OpenID Connect provider is configured (admin_oidc_issuer): an admin linked by subject could never sign in")
    with rt.session() as db:
        assert db.scalars(select(Admin)).all() == []
