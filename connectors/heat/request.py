"""What a lab asks of Heat, kept in the lab's handle so that any worker can create it again elsewhere.

Built once from the `LabSpec` at provision time. The handle is stored in plain JSON by the broker, so
it holds no secret: credentials are derived again from the backend's seed when needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from broker.connector import LabSpec
from broker.errors import PermanentError
from connectors.heat.parameters import lab_ports

MISSING = "This image cannot run on the Heat backend. Please tell your instructor."


@dataclass(frozen=True)
class StackRequest:
    lab_id: int
    template: str
    environment: str | None = None
    protocol: str = "ssh"
    course: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    providers: list[str] | None = None  # preferred order; None: the backend's order
    hooks: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: LabSpec) -> "StackRequest":
        backends = spec.params.get("backends") or {}
        heat = backends.get("heat") if isinstance(backends, Mapping) else None
        if not isinstance(heat, Mapping) or not heat.get("template"):
            raise PermanentError(f"image {spec.image!r} has no [backends.heat] template", MISSING)
        hosts = spec.params.get("hosts") or []
        first_port = hosts[0]["ports"][0]["protocol"] if hosts and hosts[0].get("ports") else "ssh"
        return cls(
            lab_id=spec.lab_id,
            template=str(heat["template"]),
            environment=heat.get("environment"),
            protocol=spec.protocol or first_port,
            course=spec.course,
            parameters=dict(heat.get("parameters") or {}),
            providers=list(heat["providers"]) if heat.get("providers") else None,
            hooks=dict(heat.get("hooks") or {}),
            ports=lab_ports(hosts),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StackRequest":
        return cls(**data)
