"""Reading a lab stack's outputs (the template contract, docs/heat.md) into desktop endpoints.

Two shapes are accepted. A single machine: `public_ip`, with optional `protocol`, `port` and `user`.
Several machines: `hosts`, a list of `{name, address, ports: {protocol: port}, user}` (`public_ip`,
`protocol` and `port` are accepted per host too). Credentials come either from the outputs
(`password` or `private_key`, top level or per host) or, when the template took the broker's generated
credentials as parameters, from the broker; outputs win. Pure functions: no Heat, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from broker.connector import DesktopEndpoint

DEFAULT_PORTS = {"ssh": 22, "rdp": 3389, "vnc": 5900, "telnet": 23}


class OutputError(ValueError):
    """The stack's outputs do not follow the template contract; the message says which output and why."""


@dataclass(frozen=True)
class HeatHost:
    """One lab machine as the outputs describe it."""

    name: str
    address: str
    ports: Mapping[str, int]
    user: str | None = None
    password: str | None = None
    private_key: str | None = None


@dataclass(frozen=True)
class Credentials:
    """What the broker generated for the lab, used where the outputs name no credentials."""

    user: str | None = None
    password: str | None = None
    vnc_password: str | None = None
    private_key: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


def outputs_dict(outputs: list[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Heat's `[{output_key, output_value}, ...]` as a plain mapping."""
    return {item["output_key"]: item.get("output_value") for item in outputs or []}


def hosts_from_outputs(outputs: Mapping[str, Any], default_protocol: str) -> list[HeatHost]:
    """Every machine the outputs describe, in the learner's order."""
    if "hosts" in outputs:
        raw_hosts = outputs["hosts"]
        if not isinstance(raw_hosts, list) or not raw_hosts:
            raise OutputError(f"output 'hosts': expected a non-empty list, got {raw_hosts!r}")
        hosts = [_host(raw, outputs, default_protocol, f"hosts[{i}]") for i, raw in enumerate(raw_hosts)]
    elif "public_ip" in outputs:
        hosts = [_host({"name": "main"}, outputs, default_protocol, "outputs")]
    else:
        raise OutputError("the stack has neither a 'public_ip' nor a 'hosts' output")
    names = [host.name for host in hosts]
    if len(set(names)) != len(names):
        raise OutputError(f"output 'hosts': host names repeat: {names}")
    return hosts


def _host(raw: Any, top: Mapping[str, Any], default_protocol: str, where: str) -> HeatHost:
    if not isinstance(raw, Mapping):
        raise OutputError(f"output '{where}': expected a mapping, got {raw!r}")
    merged = {**{k: top[k] for k in ("user", "password", "private_key", "protocol", "port") if k in top}, **raw}
    address = merged.get("address") or merged.get("public_ip") or top.get("public_ip")
    if not isinstance(address, str) or not address:
        raise OutputError(f"output '{where}': no address (expected 'address' or 'public_ip')")
    return HeatHost(
        name=str(merged.get("name") or "main"),
        address=address,
        ports=_ports(merged, default_protocol, where),
        user=_text(merged, "user", where),
        password=_text(merged, "password", where),
        private_key=_text(merged, "private_key", where),
    )


def _ports(raw: Mapping[str, Any], default_protocol: str, where: str) -> dict[str, int]:
    ports = raw.get("ports")
    if ports is None:
        protocol = str(raw.get("protocol") or default_protocol)
        ports = {protocol: raw.get("port", DEFAULT_PORTS.get(protocol, 0))}
    if not isinstance(ports, Mapping) or not ports:
        raise OutputError(f"output '{where}.ports': expected a mapping protocol -> port, got {ports!r}")
    checked: dict[str, int] = {}
    for protocol, port in ports.items():
        if protocol not in DEFAULT_PORTS:
            raise OutputError(f"output '{where}': unknown protocol {protocol!r} (known: {', '.join(DEFAULT_PORTS)})")
        checked[protocol] = _port(port, f"{where}.ports.{protocol}")
    return checked


def _port(value: Any, where: str) -> int:
    try:
        port = 0 if isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise OutputError(f"output '{where}': expected a TCP port 1-65535, got {value!r}")
    return port


def _text(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise OutputError(f"output '{where}.{key}': expected a string, got {type(value).__name__}")
    return value


def endpoints(hosts: list[HeatHost], protocol: str, generated: Credentials) -> list[DesktopEndpoint]:
    """One endpoint per host, on `protocol` where the host offers it, else on its first protocol."""
    return [_endpoint(host, protocol, generated) for host in hosts]


def _endpoint(host: HeatHost, preferred: str, generated: Credentials) -> DesktopEndpoint:
    protocol = preferred if preferred in host.ports else next(iter(host.ports))
    password = host.password or (generated.vnc_password if protocol == "vnc" else generated.password)
    private_key = host.private_key or (generated.private_key if protocol == "ssh" else None)
    extra = dict(generated.extra)
    if private_key and protocol == "ssh":
        extra["private-key"] = private_key
    return DesktopEndpoint(
        protocol=protocol,
        host=host.address,
        port=host.ports[protocol],
        username=None if protocol == "vnc" else (host.user or generated.user),
        password=password,
        name=host.name,
        extra=extra,
    )
