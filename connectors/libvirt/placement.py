"""Which libvirt host a new lab runs on, and the check that two labs placed at once did not overfill one.

Placement spreads: a lab goes where the most memory is left after placing it (memory, not CPU, is what a
host runs out of with desktop labs), ties broken by host name so the choice is reproducible. A GPU lab has
no choice: it runs on the host of the GPU unit the broker reserved for it.

Two workers may place labs at the same moment from the same stale counts. Rather than a lock across
workers and hosts, each worker defines its domain first and then recounts (`fits_after_define`); a lab
that does not fit is undefined again and placed elsewhere or refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from broker.errors import CapacityError

FULL = "No lab machine is free right now. Please try again in a few minutes."


@dataclass(frozen=True)
class HostLoad:
    """A host's capacity for LabDesk (its `vcpus`, `memory_mb` settings) and what LabDesk's labs use of it."""

    name: str
    vcpus_total: int
    memory_total_mb: int
    vcpus_used: int = 0
    memory_used_mb: int = 0

    def fits(self, vcpus: int, memory_mb: int) -> bool:
        """Whether a lab of this size still fits."""
        return self.vcpus_used + vcpus <= self.vcpus_total and self.memory_used_mb + memory_mb <= self.memory_total_mb

    def memory_left_after(self, memory_mb: int) -> int:
        return self.memory_total_mb - self.memory_used_mb - memory_mb


@dataclass(frozen=True)
class PlacedDomain:
    """One of LabDesk's domains on a host, as counted after a define: its size and when it was planned."""

    name: str
    vcpus: int
    memory_mb: int
    created: float


def choose_host(hosts: Sequence[HostLoad], vcpus: int, memory_mb: int, required: str | None = None) -> str:
    """The host with the most memory left after placing the lab (ties: by name); CapacityError if none fits.

    `required` restricts the choice to that host (a GPU lab runs where its GPU is).
    """
    candidates = [host for host in hosts if required is None or host.name == required]
    fitting = [host for host in candidates if host.fits(vcpus, memory_mb)]
    if not fitting:
        where = f"host {required}" if required is not None else f"{len(hosts)} host(s)"
        raise CapacityError(f"no room for {vcpus} vCPU / {memory_mb} MiB on {where}", FULL)
    return min(fitting, key=lambda host: (-host.memory_left_after(memory_mb), host.name)).name


def fits_after_define(domains: Sequence[PlacedDomain], capacity_vcpus: int, capacity_memory_mb: int,
                      own_name: str) -> bool:
    """Whether the domain `own_name`, already defined, is within the host's capacity; else undefine it.

    The host's domains (`own_name` among them) are ranked by (created, name), and a domain fits iff the
    usage of all domains up to and including it is within capacity. This makes concurrent placement safe:
    each worker defines its domain first and counts after, so of two racing labs the later-ranked one sees
    both; the earlier one keeps its place whatever it saw, and the later one backs off if both do not fit.
    Both never back off for each other (the ranking is one order for all), and both never stay when only
    one fits (the later one counts the earlier). A domain that is not in `domains` does not fit.
    """
    ranked = sorted(domains, key=lambda domain: (domain.created, domain.name))
    vcpus = memory = 0
    for domain in ranked:
        vcpus += domain.vcpus
        memory += domain.memory_mb
        if domain.name == own_name:
            return vcpus <= capacity_vcpus and memory <= capacity_memory_mb
    return False
