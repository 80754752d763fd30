"""The parameters a lab's stack is created with (a pure function, unit-tested without Heat).

Layers, later ones winning: the environment file's `parameter_defaults` (applied by Heat itself), the
backend's `parameters` (site-wide: network, image and flavor names), the catalogue entry's
`[backends.heat] parameters` (per image: a bigger flavor), then what only the broker knows per lab (its
id, course tag, ports and generated credentials). Broker-generated values are passed only to templates
that declare them, so a simple template needs none of them; site and catalogue values are passed as
given, so a misspelt name is refused by Heat with its own message instead of being silently dropped.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from connectors.credentials import LabCredentials

# Template parameter -> what the broker fills it with (see docs/heat.md, "Template contract").
GENERATED = (
    "lab_id",
    "course",
    "ports",
    "learner_password_hash",
    "learner_vnc_passwd_b64",
    "learner_public_key",
    "grader_public_key",
    "service_public_key",
)


def lab_ports(hosts: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """protocol -> port of the catalogue entry's hosts (the first host naming a protocol wins)."""
    ports: dict[str, int] = {}
    for host in hosts:
        for port in host.get("ports", ()):
            ports.setdefault(str(port["protocol"]), int(port["port"]))
    return ports


def generated_values(lab_id: int, course: str, ports: Mapping[str, int], creds: LabCredentials | None) -> dict[str, Any]:
    """Every value the broker can generate for a lab, by parameter name."""
    values: dict[str, Any] = {"lab_id": f"lab-{lab_id}", "course": course}
    if creds is not None:
        values.update(_credential_values(creds))
    if ports:
        values["ports"] = json.dumps(dict(ports))
    return values


def _credential_values(creds: LabCredentials) -> dict[str, str]:
    """The public halves and hashes of the lab's credentials: never a password or private key."""
    return {
        "learner_password_hash": creds.password_hash,
        "learner_vnc_passwd_b64": creds.vnc_passwd_b64,
        "learner_public_key": creds.learner_public_key,
        "grader_public_key": creds.service_public_key,
        "service_public_key": creds.service_public_key,
    }


def stack_parameters(
    declared: Iterable[str],
    site: Mapping[str, Any],
    entry: Mapping[str, Any],
    generated: Mapping[str, Any],
) -> dict[str, str]:
    """The `parameters` of the stack create call: every value as a string, as Heat's API expects."""
    names = set(declared)
    chosen: dict[str, Any] = {**site, **entry}
    chosen.update({name: value for name, value in generated.items() if name in names})
    return {name: _as_text(value) for name, value in chosen.items()}


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
