"""The cloud-init NoCloud seed a libvirt lab boots with: its account, keys and host name, on a small ISO.

A libvirt host has no metadata service, so each lab gets a read-only cdrom labelled `cidata` holding
`user-data` and `meta-data` (cloud-init's NoCloud source). Its content follows the image recipe's
`desktop-images/recipes/debian-lab/cloud-init/user-data.yaml`, as the Heat template does: the lab user with
the per-lab password's SHA-512 crypt hash (`connectors.credentials`) and public keys, optionally the grader
account and the TigerVNC password file. The clear-text password is never written: the seed sits in a
storage pool where anyone with pool access could read it.

The YAML is written as JSON (JSON is YAML), so no YAML library is needed and every value is quoted. The
ISO is built in memory with pycdlib (pure Python) with Joliet and Rock Ridge names, so `user-data` keeps
its dash whatever extension the guest's kernel reads.
"""

from __future__ import annotations

import io
import json
from typing import Any, Sequence

import pycdlib

LABEL = "cidata"
FILES = (("user-data", "/USERDATA.;1"), ("meta-data", "/METADATA.;1"))


def user_data(lab_user: str, password_hash: str, authorized_keys: Sequence[str], hostname: str, *,
              grader_keys: Sequence[str] = (), grader_user: str = "grader", vnc_passwd_b64: str = "",
              lab_id: str = "") -> str:
    """The `#cloud-config` user-data: `lab_user` with the password hash and keys, and the host name.

    Optional, as the image recipe: the grader account (`grader_keys`, key login only), the lab user's
    `~/.vnc/passwd` (`vnc_passwd_b64`, for images with their own VNC server) and `/etc/labdesk/lab-id`.
    """
    if not password_hash.startswith("$"):
        raise ValueError("user_data takes a crypt(3) hash ($6$...), never a clear-text password")
    users: list[dict[str, Any]] = [{
        "name": lab_user, "lock_passwd": False, "hashed_passwd": password_hash,
        "ssh_authorized_keys": list(authorized_keys),
    }]
    if grader_keys:
        users.append({"name": grader_user, "lock_passwd": True, "ssh_authorized_keys": list(grader_keys)})
    config: dict[str, Any] = {
        "hostname": hostname, "manage_etc_hosts": True, "users": users,
        "ssh_deletekeys": True, "ssh_genkeytypes": ["ed25519", "ecdsa", "rsa"],
    }
    files = _files(lab_user, vnc_passwd_b64, lab_id)
    if files:
        config["write_files"] = files
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def _files(lab_user: str, vnc_passwd_b64: str, lab_id: str) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = []
    if lab_id:
        files.append({"path": "/etc/labdesk/lab-id", "permissions": "0644", "content": lab_id})
    if vnc_passwd_b64:
        files.append({"path": f"/home/{lab_user}/.vnc/passwd", "owner": f"{lab_user}:{lab_user}", "permissions": "0600",
                      "encoding": "b64", "content": vnc_passwd_b64, "defer": True})
    return files


def meta_data(instance_id: str, hostname: str) -> str:
    """The NoCloud meta-data: an instance id (a new one makes cloud-init run again) and the host name."""
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}, indent=2) + "\n"


def seed_iso(user_data: str, meta_data: str) -> bytes:
    """The NoCloud ISO 9660 image (label `cidata`) holding `user-data` and `meta-data`."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    try:
        for (name, iso_path), text in zip(FILES, (user_data, meta_data)):
            data = text.encode()
            iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()
