"""Host ports for a lab's forwarded ports, from the backend's range.

Each `*_PORT` placeholder of the lab's Vagrantfile gets its own port (TCP for SSH/RDP/VNC, and the
tunnel ports a template may use are UDP, so a port must be free for both). A port is free when no other
lab of the backend recorded it and it can be bound right now on the address the labs listen on. Callers
hold the backend's allocation lock while they choose and record, so two labs never pick the same port.
"""

from __future__ import annotations

import socket
from typing import Iterable

from broker.errors import CapacityError

NO_PORTS = "No lab machine is free right now; your lab starts as soon as one is."


def bindable(address: str, port: int) -> bool:
    """Whether `port` is free on `address` for both TCP and UDP."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(family, kind) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


def choose(names: Iterable[str], low: int, high: int, taken: set[int], address: str) -> dict[str, int]:
    """A free port for each name, lowest first; CapacityError when the range runs out."""
    chosen: dict[str, int] = {}
    candidates = (port for port in range(low, high + 1) if port not in taken and bindable(address, port))
    for name in names:
        port = next(candidates, None)
        if port is None:
            raise CapacityError(f"no free port left in {low}-{high} on {address}", NO_PORTS)
        chosen[name] = port
    return chosen
