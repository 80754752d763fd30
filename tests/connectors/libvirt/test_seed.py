"""The cloud-init NoCloud seed: user-data and meta-data contents, and the ISO read back with pycdlib."""

from __future__ import annotations

import io
import json

import pycdlib
import pytest

from connectors.credentials import derive
from connectors.libvirt.seed import meta_data, seed_iso, user_data

CREDS = derive("test-seed", 42)


def config_of(text: str) -> dict:
    header, _, body = text.partition("\n")
    assert header == "#cloud-config"
    return json.loads(body)


def test_user_data_has_the_lab_user_with_hash_and_keys_and_no_password() -> None:
    text = user_data("learner", CREDS.password_hash, [CREDS.learner_public_key], "lab-42")
    assert CREDS.password not in text and CREDS.password_hash.startswith("$6$")
    assert config_of(text) == {
        "hostname": "lab-42", "manage_etc_hosts": True,
        "users": [{"name": "learner", "lock_passwd": False, "hashed_passwd": CREDS.password_hash,
                   "ssh_authorized_keys": [CREDS.learner_public_key]}],
        "ssh_deletekeys": True, "ssh_genkeytypes": ["ed25519", "ecdsa", "rsa"],
    }


def test_user_data_as_the_image_recipe_with_grader_vnc_and_lab_id() -> None:
    text = user_data("learner", CREDS.password_hash, [], "lab-42", grader_keys=[CREDS.service_public_key],
                     vnc_passwd_b64=CREDS.vnc_passwd_b64, lab_id="42")
    config = config_of(text)
    assert config["users"][1] == {"name": "grader", "lock_passwd": True, "ssh_authorized_keys": [CREDS.service_public_key]}
    assert config["write_files"] == [
        {"path": "/etc/labdesk/lab-id", "permissions": "0644", "content": "42"},
        {"path": "/home/learner/.vnc/passwd", "owner": "learner:learner", "permissions": "0600", "encoding": "b64",
         "content": CREDS.vnc_passwd_b64, "defer": True},
    ]
    assert CREDS.password not in text and CREDS.vnc_password not in text.replace(CREDS.vnc_passwd_b64, "")


def test_user_data_refuses_a_clear_text_password() -> None:
    with pytest.raises(ValueError, match="never a clear-text password"):
        user_data("learner", CREDS.password, [], "lab-42")


def test_user_data_is_yaml_with_every_value_quoted() -> None:
    yaml = pytest.importorskip("yaml")
    hostile = "x\n- name: root\n  passwd: ''"
    text = user_data("learner", CREDS.password_hash, [hostile], "lab-42")
    assert yaml.safe_load(text)["users"] == [
        {"name": "learner", "lock_passwd": False, "hashed_passwd": CREDS.password_hash, "ssh_authorized_keys": [hostile]}]


def test_meta_data() -> None:
    assert json.loads(meta_data("labdesk-lab-42", "lab-42")) == {"instance-id": "labdesk-lab-42", "local-hostname": "lab-42"}


def read_back(iso_bytes: bytes) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    return iso


def file_of(iso: pycdlib.PyCdlib, **path: str) -> str:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue().decode()


def test_the_seed_iso_is_labelled_cidata_with_both_files_under_their_dashed_names() -> None:
    user = user_data("learner", CREDS.password_hash, [CREDS.learner_public_key], "lab-42")
    meta = meta_data("labdesk-lab-42", "lab-42")
    data = seed_iso(user, meta)
    assert len(data) % 2048 == 0
    iso = read_back(data)
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        assert iso.has_joliet() and iso.has_rock_ridge()
        for name, text in (("user-data", user), ("meta-data", meta)):
            assert file_of(iso, joliet_path=f"/{name}") == text
            assert file_of(iso, rr_path=f"/{name}") == text
        names = [child.file_identifier().decode("utf-16-be") for child in iso.list_children(joliet_path="/") if child.is_file()]
        assert sorted(names) == ["meta-data", "user-data"]
    finally:
        iso.close()
    assert CREDS.password.encode() not in data
