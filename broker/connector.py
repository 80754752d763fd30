"""The connector boundary: what the broker asks of any backend that can host a lab.

Shaped like JupyterHub's Spawner, but synchronous (the backend SDKs are) and called only from rq workers.
Only the standard library is used here, so connectors depend on nothing of the broker's internals.
A `Handle` is an opaque JSON-able dict: the broker stores it with the lab and hands it back unread.
"""

from __future__ import annotations

import abc
import enum
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

Handle = dict[str, Any]


class ObservedState(str, enum.Enum):
    """What a backend says its object for a lab is doing."""

    PENDING = "pending"
    READY = "ready"
    SUSPENDED = "suspended"
    GONE = "gone"
    ERROR = "error"


class Capability(str, enum.Enum):
    """Optional abilities a connector declares; the broker adapts to them."""

    SUSPEND = "suspend"
    GPU = "gpu"
    SNAPSHOT = "snapshot"
    MULTI_HOST = "multi_host"


@dataclass(frozen=True)
class GpuUnit:
    """One GPU a backend can give one lab at a time: a whole card (PCI passthrough) or one vGPU (mdev).

    The connector reports its units (`Connector.gpu_units`); the broker records which lab holds which and
    never gives one unit to two labs (the libvirt test driver, for one, would happily allow it).
    """

    key: str  # unique in the backend and stable across inventories, e.g. "gpu1/pci_0000_41_00_0"
    host: str  # the backend's host that has it: a lab holding this unit must run there
    model: str  # what catalogue entries ask for (`resources.gpu`): "nvidia-t4", or a vGPU type "nvidia-t4-1b"
    kind: str = "pci"  # "pci" (the whole card, passed through) or "mdev" (a mediated device)
    address: str = ""  # the PCI address "0000:41:00.0" (pci) or the mdev's UUID (mdev)
    mdev_type: str = ""  # the mdev type id ("nvidia-222"), for kind "mdev"
    parent: str = ""  # the node device the unit belongs to ("pci_0000_81_00_0")


@dataclass(frozen=True)
class Box:
    """A machine image installed on a backend's host for labs to start from (a Vagrant box).

    Admins manage these (`labdesk boxes`); connectors without local images raise Unsupported for them.
    """

    name: str  # what catalogue entries ask for, e.g. "lab/tiny"
    provider: str  # the hypervisor it is made for ("libvirt")
    version: str  # "0" for a box added from a bare box file, which carries no version


@dataclass(frozen=True)
class LabSpec:
    """Everything a connector needs to create one lab; `lab_id` is the idempotency key."""

    lab_id: int
    image: str
    owner: str
    params: Mapping[str, Any] = field(default_factory=dict)
    course: str = ""  # a course/run tag for labelling backend objects; never a learner's identity
    protocol: str = ""  # the image's default desktop protocol ("" lets the connector choose)
    gpu: GpuUnit | None = None  # the unit the broker reserved for this lab, when its image needs a GPU

    @property
    def name(self) -> str:
        """The name every connector gives its backend object, so `list_managed` can find it again."""
        return f"labdesk-lab-{self.lab_id}"


@dataclass(frozen=True)
class Observation:
    """A connector's answer to "how is this lab?": state, progress in percent and a human message.

    `handle` is set when the connector moved the lab to a new backend object (a failed create retried on
    another provider): the broker stores it in place of the old one.
    """

    state: ObservedState
    progress: int = 0
    message: str = ""
    handle: Handle | None = None


@dataclass(frozen=True)
class DesktopEndpoint:
    """Where guacd connects for this lab. Holds credentials: never sent to a browser."""

    protocol: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    name: str = "main"
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckTarget:
    """Where grading checks run on one machine of a lab, and as whom. Holds a key: never sent to a browser.

    `runner` names the grading hook (`labdesk.grading_hooks` entry point) that can reach it: "ssh" (a
    grader account the image provides, never the learner's), "guest_agent", "local" (the LabDesk host).
    """

    host: str  # the machine's name in the lab ("main", "router", ...)
    runner: str
    address: str = ""
    port: int = 22
    user: str = "grader"
    private_key: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ManagedObject:
    """An object a backend holds for LabDesk, as found by `list_managed` (for orphan sweeps)."""

    lab_id: int
    handle: Handle


class Connector(abc.ABC):
    """A backend that hosts labs. Subclasses are registered under the `labdesk.connectors` entry point.

    `config` holds the backend's settings with its credentials already decrypted; a connector keeps them
    in memory only. Every method may raise the errors of `broker.errors`; `observe` and `delete` treat
    "already gone" as a normal answer, never as an error.
    """

    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.config = dict(config)

    @abc.abstractmethod
    def provision(self, spec: LabSpec) -> Handle:
        """Find or create the lab's backend object; calling it twice for one lab creates one object."""

    @abc.abstractmethod
    def observe(self, handle: Handle) -> Observation:
        """Report the object's state; GONE when it no longer exists."""

    @abc.abstractmethod
    def suspend(self, handle: Handle) -> None:
        """Start suspending; `observe` reports SUSPENDED once done. Raises `Unsupported` without SUSPEND."""

    @abc.abstractmethod
    def resume(self, handle: Handle) -> None:
        """Start resuming a suspended object; `observe` reports READY once done."""

    @abc.abstractmethod
    def delete(self, handle: Handle) -> None:
        """Delete the object and everything it holds; an object already gone is a success."""

    @abc.abstractmethod
    def endpoints(self, handle: Handle) -> list[DesktopEndpoint]:
        """Where to connect to a READY lab: one entry per host, the first being the default."""

    @abc.abstractmethod
    def list_managed(self) -> list[ManagedObject]:
        """Every object this backend holds for LabDesk, for the reconciler."""

    def check_targets(self, handle: Handle) -> list[CheckTarget]:
        """Where grading checks can run on a READY lab, one per machine; raises Unsupported if nowhere."""
        from broker.errors import Unsupported

        raise Unsupported(f"{type(self).__name__} cannot run checks", "This lab cannot be checked automatically.")

    def after_resume(self, handle: Handle) -> None:
        """Called once a resumed lab is READY again, before learners reconnect (clock fixes and the like)."""

    def gpu_units(self) -> list[GpuUnit]:
        """Every GPU unit the backend can assign, free or held: its inventory (connectors with GPU)."""
        return []

    def keeps_gpu_when_suspended(self, handle: Handle) -> bool:
        """Whether a SUSPENDED lab still holds its GPU (a paused VM does; a VM saved to disk need not)."""
        return True

    def rebind_gpu(self, handle: Handle, unit: GpuUnit) -> Handle:
        """Give a suspended lab that let its GPU go the unit it got back, before `resume`; the new handle."""
        from broker.errors import Unsupported

        raise Unsupported(f"{type(self).__name__} cannot move a lab to another GPU", "This lab cannot resume on another GPU.")

    def watch(self, notify: Callable[[int], None], stop: threading.Event) -> None:
        """Call `notify(lab_id)` whenever the backend reports a change to a lab's object, until `stop` is set.

        Optional: connectors whose backend has events make the broker prompt; polling remains the fallback.
        """
        from broker.errors import Unsupported

        raise Unsupported(f"{type(self).__name__} has no events", "")

    def available(self) -> bool:
        """Whether the backend answers at all (for /healthz and `backends check`)."""
        return True

    def endpoint(self, handle: Handle) -> DesktopEndpoint:
        """The default endpoint of a lab."""
        return self.endpoints(handle)[0]

    def boxes(self) -> list[Box]:
        """The machine images installed for this backend's labs. Optional: only backends that keep images
        on their own host (Vagrant) have any; the others raise Unsupported, which the CLI reports."""
        raise self._no_boxes()

    def add_box(self, name: str, source: str, version: str | None = None, force: bool = False) -> Box:
        """Install image `name` from `source` (a local file or a URL the admin gives); what was installed.
        `force` replaces an installed one of the same name and version instead of refusing."""
        raise self._no_boxes()

    def remove_box(self, name: str, version: str | None = None, force: bool = False) -> list[Box]:
        """Remove image `name` (every version, or `version`); what was removed. Refused while a lab of
        this backend uses it, unless `force`."""
        raise self._no_boxes()

    def _no_boxes(self) -> Exception:
        from broker.errors import Unsupported

        return Unsupported(f"backend {self.name} has no boxes to manage ({type(self).__name__}; vagrant backends have)", "")
