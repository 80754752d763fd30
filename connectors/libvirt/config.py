"""The settings of a libvirt backend, read once and checked whole, so a typo fails at `backends add`.

A libvirt backend is one or more hosts, each a libvirt connection LabDesk may fill up to the vCPUs and
memory it is given there. Everything else (how guests reach the network, how ports are forwarded, what a
suspended lab does with its GPU) is one setting for the whole backend. `parse` returns frozen dataclasses
or raises `ConfigError` naming the exact key at fault, as `libvirt backend lab1: hosts[0] (gpu1): uri: ...`.

Settings (`labdesk backends add NAME --kind libvirt --config '{...}'`):

- `hosts` (required): a non-empty list of tables, each with
  - `name` (required): `[a-z][a-z0-9-]{0,31}`, unique; GPU unit keys and lab handles use it.
  - `uri` (required): `qemu:///system`, `qemu+ssh://user@host/system`, `qemu+tls://host/system` (an optional
    `?query` such as `?keyfile=...` is kept), or `test:///ABSOLUTE/PATH.xml` (libvirt's test driver: tests only).
  - `vcpus` (required): the vCPUs LabDesk may give its labs on this host (at least 1).
  - `memory_mb` (required): the memory LabDesk may give its labs on this host (at least 256).
  - `address` (default `127.0.0.1`): where guacd reaches this host's VNC/SPICE consoles and forwarded ports.
  - `pool` (default `default`): the storage pool for the labs' disk overlays and cloud-init seeds.
  - `image_pool` (default: `pool`): the pool holding base images, kernels and initrds.
  - `gpu_save` (default false): a domain holding one of this host's GPUs may be saved to disk (managed save).
    Only vGPUs whose driver supports migration can; a passthrough GPU cannot.
  - `gpus` (default none): per node device (`pci_0000_41_00_0`) an override `{mode, mdev_type, model}`: `mode`
    is `pci` (pass the whole card), `mdev` (vGPUs of `mdev_type`, required then) or `off` (not for labs);
    `model` replaces the model name the inventory derives (`connectors.libvirt.inventory`).
  - `create_mdevs` (default false): LabDesk may create missing vGPU instances (mdevs), up to the card's
    `availableInstances`; otherwise only existing mdevs are units.
- `domain_type` (default `kvm`): `kvm`, or `qemu` (TCG emulation, for hosts without KVM).
- `network` (default `{"type": "user"}`): `user` is a QEMU user-mode NIC with `restrict=on` (the guest reaches
  nothing) whose guest ports are forwarded on the host's loopback; `{"type": "network", "name": "labs"}` attaches
  the guest to that libvirt network, and endpoints use the guest's IP address.
- `forward_ports` (default `[42000, 42999]`): the host port range user-mode forwards are taken from.
- `gpu_on_suspend` (default `keep`): `keep` pauses a GPU lab in memory, holding its GPU; `release` saves it to
  disk and lets the GPU go. `release` needs `gpu_save = true` on every host: a passthrough GPU cannot be saved.
- `name_prefix` (default `labdesk`): `[a-z][a-z0-9-]{0,20}`; domains are named `<prefix>-lab-<id>`.
- `agent_timeout` (default 10), `boot_timeout` (default 300): seconds for one guest-agent call, for a boot.
- `credential_seed` (secret): the seed of the labs' passwords and keys (`connectors.credentials`).
  `backends add` generates it; `parse(..., require_secrets=False)` checks the rest before it exists.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping
from urllib.parse import urlsplit

from broker.errors import ConfigError
from connectors.settings import choice as _choice, flag as _flag, known as _known, port_range as _port_range
from connectors.settings import seconds as _seconds, seed as _seed, text as _text, unique as _unique, whole as _whole

HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}\Z")
PREFIX = re.compile(r"[a-z][a-z0-9-]{0,20}\Z")
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
NODE_DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,127}\Z")
MDEV_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
GPU_MODEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
DNS_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")

TOP_KEYS = (
    "hosts", "domain_type", "network", "forward_ports", "gpu_on_suspend", "name_prefix", "agent_timeout",
    "boot_timeout", "credential_seed",
)
HOST_KEYS = ("name", "uri", "vcpus", "memory_mb", "address", "pool", "image_pool", "gpu_save", "gpus", "create_mdevs")
GPU_KEYS = ("mode", "mdev_type", "model")
GPU_MODES = ("pci", "mdev", "off")
DOMAIN_TYPES = ("kvm", "qemu")
NETWORK_TYPES = ("user", "network")
GPU_ON_SUSPEND = ("keep", "release")
URI_FORMS = "qemu:///system, qemu+ssh://user@host/system, qemu+tls://host/system or test:///ABSOLUTE/PATH.xml"


@dataclass(frozen=True)
class HostSettings:
    """One libvirt host and the share of it LabDesk may fill."""

    name: str
    uri: str
    vcpus: int
    memory_mb: int
    address: str = "127.0.0.1"
    pool: str = "default"
    image_pool: str = "default"
    gpu_save: bool = False
    gpus: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # node device -> {mode, mdev_type, model}
    create_mdevs: bool = False


@dataclass(frozen=True)
class NetworkSettings:
    """How guests are attached: `user` (user-mode NIC, ports forwarded) or a libvirt `network` by name."""

    type: str = "user"
    name: str = ""


@dataclass(frozen=True)
class LibvirtSettings:
    """A whole libvirt backend; `credential_seed` is None only when parsed with `require_secrets=False`."""

    backend: str
    hosts: tuple[HostSettings, ...]
    domain_type: str = "kvm"
    network: NetworkSettings = NetworkSettings()
    forward_ports: tuple[int, int] = (42000, 42999)
    gpu_on_suspend: str = "keep"
    name_prefix: str = "labdesk"
    agent_timeout: float = 10
    boot_timeout: float = 300
    credential_seed: str | None = field(default=None, repr=False)

    def host(self, name: str) -> HostSettings:
        """The host called `name`; ConfigError if the backend has none (a host removed from the settings)."""
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(host.name for host in self.hosts)
        raise ConfigError(f"libvirt backend {self.backend}: hosts: no host named {name!r} (hosts: {known})")

    def domain_name(self, lab_id: int) -> str:
        """The name of lab `lab_id`'s domain: `<prefix>-lab-<id>`."""
        return f"{self.name_prefix}-lab-{lab_id}"

    def releases_gpu(self, host: str) -> bool:
        """Whether a suspended lab on `host` is saved to disk and lets its GPU go."""
        return self.gpu_on_suspend == "release" and self.host(host).gpu_save


def parse(name: str, config: Mapping[str, Any], require_secrets: bool = True,
          extra_keys: Collection[str] = ()) -> LibvirtSettings:
    """The backend's settings, or ConfigError naming the key at fault.

    `extra_keys` are top-level keys the caller reads itself (they are let through unread); any other unknown
    key is refused, so a misspelt setting never passes silently.
    """
    where = f"libvirt backend {name}"
    _known(config, TOP_KEYS + tuple(extra_keys), where)
    hosts = _hosts(config.get("hosts"), where)
    settings = LibvirtSettings(
        backend=name,
        hosts=hosts,
        domain_type=_choice(config.get("domain_type", "kvm"), DOMAIN_TYPES, f"{where}: domain_type"),
        network=_network(config.get("network", {"type": "user"}), f"{where}: network"),
        forward_ports=_port_range(config.get("forward_ports", [42000, 42999]), f"{where}: forward_ports"),
        gpu_on_suspend=_choice(config.get("gpu_on_suspend", "keep"), GPU_ON_SUSPEND, f"{where}: gpu_on_suspend"),
        name_prefix=_text(config.get("name_prefix", "labdesk"), PREFIX, f"{where}: name_prefix", "[a-z][a-z0-9-]{0,20}"),
        agent_timeout=_seconds(config.get("agent_timeout", 10), f"{where}: agent_timeout"),
        boot_timeout=_seconds(config.get("boot_timeout", 300), f"{where}: boot_timeout"),
        credential_seed=_seed(config.get("credential_seed"), require_secrets, where),
    )
    _check_release(settings, where)
    return settings


# -- hosts ------------------------------------------------------------------------------------------------
def _hosts(raw: Any, where: str) -> tuple[HostSettings, ...]:
    if raw is None:
        raise ConfigError(f"{where}: hosts: required: a list of hosts, each a table with name, uri, vcpus, memory_mb")
    if not isinstance(raw, list) or not raw or not all(isinstance(item, Mapping) for item in raw):
        raise ConfigError(f"{where}: hosts: expected a non-empty list of tables, got {raw!r}")
    hosts = tuple(_host(item, index, where) for index, item in enumerate(raw))
    _unique([host.name for host in hosts], f"{where}: hosts", "name")
    _unique([host.uri for host in hosts], f"{where}: hosts", "uri")
    return hosts


def _host(raw: Mapping[str, Any], index: int, where: str) -> HostSettings:
    at = f"{where}: hosts[{index}]"
    if "name" not in raw:
        raise ConfigError(f"{at}: name: required ([a-z][a-z0-9-]{{0,31}})")
    name = _text(raw["name"], HOST_NAME, f"{at}: name", "[a-z][a-z0-9-]{0,31}")
    at = f"{at} ({name})"
    _known(raw, HOST_KEYS, at)
    for key in ("uri", "vcpus", "memory_mb"):
        if key not in raw:
            raise ConfigError(f"{at}: {key}: required")
    pool = _text(raw.get("pool", "default"), POOL_NAME, f"{at}: pool", "a storage pool name")
    return HostSettings(
        name=name,
        uri=_uri(raw["uri"], f"{at}: uri"),
        vcpus=_whole(raw["vcpus"], 1, f"{at}: vcpus", "the vCPUs LabDesk may use on the host"),
        memory_mb=_whole(raw["memory_mb"], 256, f"{at}: memory_mb", "the MiB LabDesk may use on the host"),
        address=_address(raw.get("address", "127.0.0.1"), f"{at}: address"),
        pool=pool,
        image_pool=_text(raw.get("image_pool", pool), POOL_NAME, f"{at}: image_pool", "a storage pool name"),
        gpu_save=_flag(raw.get("gpu_save", False), f"{at}: gpu_save"),
        gpus=_gpus(raw.get("gpus", {}), f"{at}: gpus"),
        create_mdevs=_flag(raw.get("create_mdevs", False), f"{at}: create_mdevs"),
    )


def _uri(raw: Any, at: str) -> str:
    """One of the four accepted forms; anything else (another driver, a session URI) is refused."""
    if not isinstance(raw, str):
        raise ConfigError(f"{at}: expected {URI_FORMS}, got {raw!r}")
    parts = urlsplit(raw)
    if parts.scheme == "test":
        if parts.netloc or not parts.path.startswith("/") or not parts.path.endswith(".xml") or parts.query:
            raise ConfigError(f"{at}: a test driver URI names an absolute host XML file (test:///ABSOLUTE/PATH.xml), got {raw!r}")
        return raw
    if parts.scheme not in ("qemu", "qemu+ssh", "qemu+tls"):
        raise ConfigError(f"{at}: unsupported scheme {parts.scheme!r}: expected {URI_FORMS}, got {raw!r}")
    if parts.path != "/system" or parts.fragment:
        raise ConfigError(f"{at}: LabDesk uses the system instance (path /system): expected {URI_FORMS}, got {raw!r}")
    if parts.scheme == "qemu" and (parts.netloc or parts.query):
        raise ConfigError(f"{at}: a local URI has no host (qemu:///system), got {raw!r}")
    if parts.scheme != "qemu" and not parts.hostname:
        raise ConfigError(f"{at}: {parts.scheme} needs a host ({parts.scheme}://host/system), got {raw!r}")
    return raw


def _address(raw: Any, at: str) -> str:
    if isinstance(raw, str):
        try:
            return str(ipaddress.ip_address(raw))
        except ValueError:
            if DNS_NAME.match(raw):
                return raw
    raise ConfigError(f"{at}: expected an IP address or a host name guacd can reach, got {raw!r}")


def _gpus(raw: Any, at: str) -> dict[str, dict[str, str]]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{at}: expected a table of node device name -> {{mode, mdev_type, model}}, got {raw!r}")
    return {_device_name(device, at): _gpu(override, f"{at}.{device}") for device, override in raw.items()}


def _device_name(raw: Any, at: str) -> str:
    if not isinstance(raw, str) or not NODE_DEVICE.match(raw):
        raise ConfigError(f"{at}: expected node device names such as \"pci_0000_41_00_0\", got {raw!r}")
    return raw


def _gpu(raw: Any, at: str) -> dict[str, str]:
    """One device's override; `mdev_type` is required with mode mdev and meaningless with pci or off."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{at}: expected a table with mode, mdev_type or model, got {raw!r}")
    _known(raw, GPU_KEYS, at)
    override: dict[str, str] = {}
    if "mode" in raw:
        override["mode"] = _choice(raw["mode"], GPU_MODES, f"{at}.mode")
    if "mdev_type" in raw:
        override["mdev_type"] = _text(raw["mdev_type"], MDEV_TYPE, f"{at}.mdev_type", 'an mdev type id such as "nvidia-222"')
    if "model" in raw:
        override["model"] = _text(raw["model"], GPU_MODEL, f"{at}.model", "[a-z0-9][a-z0-9._-]{0,63}")
    mode = override.get("mode")
    if mode == "mdev" and "mdev_type" not in override:
        raise ConfigError(f"{at}.mdev_type: required with mode = mdev (the vGPU type, such as \"nvidia-222\")")
    if mode in ("pci", "off") and "mdev_type" in override:
        raise ConfigError(f"{at}.mdev_type: only with mode = mdev, got mode = {mode}")
    return override


# -- backend-wide ---------------------------------------------------------------------------------------
def _network(raw: Any, at: str) -> NetworkSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(f'{at}: expected {{"type": "user"}} or {{"type": "network", "name": ...}}, got {raw!r}')
    kind = _choice(raw.get("type"), NETWORK_TYPES, f"{at}.type")
    _known(raw, ("type",) if kind == "user" else ("type", "name"), at)
    if kind == "user":
        return NetworkSettings("user")
    if "name" not in raw:
        raise ConfigError(f"{at}.name: required with type = network (a libvirt network name)")
    return NetworkSettings("network", _text(raw["name"], NETWORK_NAME, f"{at}.name", "a libvirt network name"))


def _check_release(settings: LibvirtSettings, where: str) -> None:
    if settings.gpu_on_suspend != "release":
        return
    unsaved = [host.name for host in settings.hosts if not host.gpu_save]
    if unsaved:
        raise ConfigError(
            f"{where}: gpu_on_suspend: release needs gpu_save = true on every host (not set on: {', '.join(unsaved)}): "
            "a passthrough GPU cannot be saved to disk, so a paused lab keeps its GPU; use keep, "
            "or set gpu_save = true where every GPU is a vGPU that supports saving (or there is no GPU)"
        )
