"""The libvirt backend's settings: defaults, every accepted form, and the exact message of each refusal."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker.errors import ConfigError
from connectors.libvirt.config import HostSettings, LibvirtSettings, NetworkSettings, parse

HOST = {"name": "gpu1", "uri": "qemu:///system", "vcpus": 32, "memory_mb": 131072}
WHERE = "libvirt backend lab: "


def config(**top: Any) -> dict[str, Any]:
    return {"hosts": [dict(HOST)], "credential_seed": "s33d", **top}


def with_host(**keys: Any) -> dict[str, Any]:
    host = {**HOST, **keys}
    return config(hosts=[{k: v for k, v in host.items() if v is not None}])


def refused(raw: dict[str, Any], **options: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse("lab", raw, **options)
    return str(caught.value)


def test_the_defaults() -> None:
    settings = parse("lab", config())
    assert settings == LibvirtSettings(
        backend="lab",
        hosts=(HostSettings("gpu1", "qemu:///system", 32, 131072),),
        domain_type="kvm", network=NetworkSettings("user"), forward_ports=(42000, 42999), gpu_on_suspend="keep",
        name_prefix="labdesk", agent_timeout=10.0, boot_timeout=300.0, credential_seed="s33d",
    )
    host = settings.hosts[0]
    assert (host.address, host.pool, host.image_pool, host.gpu_save, host.gpus, host.create_mdevs) == (
        "127.0.0.1", "default", "default", False, {}, False)
    assert "s33d" not in repr(settings)


def test_every_setting_given() -> None:
    raw = {
        "hosts": [
            {**HOST, "address": "10.0.0.5", "pool": "labs", "image_pool": "images", "gpu_save": True,
             "create_mdevs": True, "gpus": {
                 "pci_0000_41_00_0": {"mode": "pci", "model": "nvidia-a100-80g"},
                 "pci_0000_81_00_0": {"mode": "mdev", "mdev_type": "nvidia-222"},
                 "pci_0000_82_00_0": {"mode": "off"},
             }},
            {"name": "cpu-2", "uri": "qemu+ssh://labdesk@cpu2.example.edu/system?keyfile=/etc/labdesk/id", "vcpus": 8,
             "memory_mb": 256, "address": "cpu2.example.edu", "pool": "fast", "gpu_save": True},
            {"name": "t", "uri": "qemu+tls://host3.example.edu/system", "vcpus": 1, "memory_mb": 512, "gpu_save": True},
            {"name": "test", "uri": "test:///srv/hosts/gpu-host.xml", "vcpus": 4, "memory_mb": 4096, "gpu_save": True},
        ],
        "domain_type": "qemu", "network": {"type": "network", "name": "labs-net"}, "forward_ports": [50000, 50000],
        "gpu_on_suspend": "release", "name_prefix": "staging", "agent_timeout": 2.5, "boot_timeout": 60,
        "credential_seed": "s33d",
    }
    settings = parse("lab", raw)
    gpu1, cpu2, tls, test = settings.hosts
    assert (gpu1.address, gpu1.pool, gpu1.image_pool, gpu1.gpu_save, gpu1.create_mdevs) == ("10.0.0.5", "labs", "images", True, True)
    assert gpu1.gpus == {
        "pci_0000_41_00_0": {"mode": "pci", "model": "nvidia-a100-80g"},
        "pci_0000_81_00_0": {"mode": "mdev", "mdev_type": "nvidia-222"},
        "pci_0000_82_00_0": {"mode": "off"},
    }
    assert (cpu2.pool, cpu2.image_pool, cpu2.address) == ("fast", "fast", "cpu2.example.edu")
    assert tls.uri == "qemu+tls://host3.example.edu/system" and test.uri == "test:///srv/hosts/gpu-host.xml"
    assert settings.network == NetworkSettings("network", "labs-net")
    assert (settings.domain_type, settings.forward_ports, settings.gpu_on_suspend) == ("qemu", (50000, 50000), "release")
    assert (settings.name_prefix, settings.agent_timeout, settings.boot_timeout) == ("staging", 2.5, 60.0)


def test_host_lookup_domain_names_and_gpu_release() -> None:
    settings = parse("lab", config(hosts=[HOST, {**HOST, "name": "gpu2", "uri": "qemu+tls://b/system", "gpu_save": True}]))
    assert settings.host("gpu2").uri == "qemu+tls://b/system"
    with pytest.raises(ConfigError, match=r"^libvirt backend lab: hosts: no host named 'gone' \(hosts: gpu1, gpu2\)$"):
        settings.host("gone")
    assert settings.domain_name(42) == "labdesk-lab-42"
    assert not settings.releases_gpu("gpu2")  # keep
    released = parse("lab", config(gpu_on_suspend="release", hosts=[{**HOST, "gpu_save": True}]))
    assert released.releases_gpu("gpu1")


def test_secrets_may_be_absent_before_they_exist() -> None:
    raw = config()
    del raw["credential_seed"]
    assert parse("lab", raw, require_secrets=False).credential_seed is None
    assert refused(raw) == WHERE + "the secret credential_seed is missing (labdesk backends add generates one)"
    assert refused({**raw, "credential_seed": ""}, require_secrets=False) == (
        WHERE + "the secret credential_seed is missing (labdesk backends add generates one)")


def test_extra_keys_the_caller_reads_itself_pass() -> None:
    assert parse("lab", config(catalogue_root="/srv/images"), extra_keys=("catalogue_root",)).backend == "lab"
    assert refused(config(catalogue_root="/srv/images")) == (
        WHERE + 'catalogue_root: unknown key (known: hosts, domain_type, network, forward_ports, gpu_on_suspend, '
        'name_prefix, agent_timeout, boot_timeout, credential_seed)')


def test_a_parse_does_not_change_its_input() -> None:
    raw = with_host(gpus={"pci_0000_41_00_0": {"mode": "pci"}})
    before = copy.deepcopy(raw)
    parse("lab", raw)
    assert raw == before


H = WHERE + "hosts[0] (gpu1): "

REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top key": (config(domaintype="kvm"), WHERE + 'domaintype: unknown key (did you mean "domain_type"?)'),
    "no hosts key": ({"credential_seed": "s"}, WHERE + "hosts: required: a list of hosts, each a table with name, uri, vcpus, memory_mb"),
    "empty hosts": (config(hosts=[]), WHERE + "hosts: expected a non-empty list of tables, got []"),
    "hosts not tables": (config(hosts=["gpu1"]), WHERE + "hosts: expected a non-empty list of tables, got ['gpu1']"),
    "host without name": (config(hosts=[{"uri": "qemu:///system"}]), WHERE + "hosts[0]: name: required ([a-z][a-z0-9-]{0,31})"),
    "bad host name": (with_host(name="GPU_1"), WHERE + "hosts[0]: name: expected [a-z][a-z0-9-]{0,31}, got 'GPU_1'"),
    "long host name": (with_host(name="a" * 33), WHERE + f"hosts[0]: name: expected [a-z][a-z0-9-]{{0,31}}, got '{'a' * 33}'"),
    "duplicate host name": (
        config(hosts=[HOST, {**HOST, "uri": "qemu+ssh://b/system"}]), WHERE + "hosts[1]: name: 'gpu1' repeats hosts[0]"),
    "duplicate uri": (config(hosts=[HOST, {**HOST, "name": "gpu2"}]), WHERE + "hosts[1]: uri: 'qemu:///system' repeats hosts[0]"),
    "unknown host key": (with_host(cpus=4), H + 'cpus: unknown key (did you mean "vcpus"?)'),
    "missing uri": (with_host(uri=None), H + "uri: required"),
    "missing vcpus": (with_host(vcpus=None), H + "vcpus: required"),
    "missing memory": (with_host(memory_mb=None), H + "memory_mb: required"),
    "other driver": (
        with_host(uri="xen:///system"),
        H + "uri: unsupported scheme 'xen': expected qemu:///system, qemu+ssh://user@host/system, qemu+tls://host/system "
        "or test:///ABSOLUTE/PATH.xml, got 'xen:///system'"),
    "plain tcp": (with_host(uri="qemu+tcp://host/system"), H + "uri: unsupported scheme 'qemu+tcp': expected qemu:///system, "
                  "qemu+ssh://user@host/system, qemu+tls://host/system or test:///ABSOLUTE/PATH.xml, got 'qemu+tcp://host/system'"),
    "session": (with_host(uri="qemu:///session"), H + "uri: LabDesk uses the system instance (path /system): expected qemu:///system, "
                "qemu+ssh://user@host/system, qemu+tls://host/system or test:///ABSOLUTE/PATH.xml, got 'qemu:///session'"),
    "local with a host": (with_host(uri="qemu://host/system"), H + "uri: a local URI has no host (qemu:///system), got 'qemu://host/system'"),
    "ssh without host": (with_host(uri="qemu+ssh:///system"), H + "uri: qemu+ssh needs a host (qemu+ssh://host/system), got 'qemu+ssh:///system'"),
    "test default": (with_host(uri="test:///default"),
                     H + "uri: a test driver URI names an absolute host XML file (test:///ABSOLUTE/PATH.xml), got 'test:///default'"),
    "uri not text": (with_host(uri=5), H + "uri: expected qemu:///system, qemu+ssh://user@host/system, qemu+tls://host/system or "
                     "test:///ABSOLUTE/PATH.xml, got 5"),
    "vcpus zero": (with_host(vcpus=0), H + "vcpus: expected a whole number >= 1 (the vCPUs LabDesk may use on the host), got 0"),
    "vcpus bool": (with_host(vcpus=True), H + "vcpus: expected a whole number >= 1 (the vCPUs LabDesk may use on the host), got True"),
    "memory small": (with_host(memory_mb=255), H + "memory_mb: expected a whole number >= 256 (the MiB LabDesk may use on the host), got 255"),
    "memory text": (with_host(memory_mb="8G"), H + "memory_mb: expected a whole number >= 256 (the MiB LabDesk may use on the host), got '8G'"),
    "bad address": (with_host(address="host name"), H + "address: expected an IP address or a host name guacd can reach, got 'host name'"),
    "bad pool": (with_host(pool="a/b"), H + "pool: expected a storage pool name, got 'a/b'"),
    "bad image pool": (with_host(image_pool=""), H + "image_pool: expected a storage pool name, got ''"),
    "gpu_save text": (with_host(gpu_save="yes"), H + "gpu_save: expected true or false, got 'yes'"),
    "create_mdevs number": (with_host(create_mdevs=1), H + "create_mdevs: expected true or false, got 1"),
    "gpus a list": (with_host(gpus=["pci_0000_41_00_0"]),
                    H + "gpus: expected a table of node device name -> {mode, mdev_type, model}, got ['pci_0000_41_00_0']"),
    "gpu device name": (with_host(gpus={"0000:41:00.0": {"mode": "off"}}),
                        H + 'gpus: expected node device names such as "pci_0000_41_00_0", got \'0000:41:00.0\''),
    "gpu not a table": (with_host(gpus={"pci_0000_41_00_0": "off"}),
                        H + "gpus.pci_0000_41_00_0: expected a table with mode, mdev_type or model, got 'off'"),
    "gpu unknown key": (with_host(gpus={"pci_0000_41_00_0": {"type": "mdev"}}),
                        H + 'gpus.pci_0000_41_00_0: type: unknown key (did you mean "mdev_type"?)'),
    "gpu mode": (with_host(gpus={"pci_0000_41_00_0": {"mode": "vgpu"}}),
                 H + "gpus.pci_0000_41_00_0.mode: expected one of pci, mdev, off, got 'vgpu'"),
    "mdev without type": (with_host(gpus={"pci_0000_81_00_0": {"mode": "mdev"}}),
                          H + 'gpus.pci_0000_81_00_0.mdev_type: required with mode = mdev (the vGPU type, such as "nvidia-222")'),
    "type with pci": (with_host(gpus={"pci_0000_81_00_0": {"mode": "pci", "mdev_type": "nvidia-222"}}),
                      H + "gpus.pci_0000_81_00_0.mdev_type: only with mode = mdev, got mode = pci"),
    "bad mdev type": (with_host(gpus={"pci_0000_81_00_0": {"mode": "mdev", "mdev_type": "nvidia 222"}}),
                      H + 'gpus.pci_0000_81_00_0.mdev_type: expected an mdev type id such as "nvidia-222", got \'nvidia 222\''),
    "bad model": (with_host(gpus={"pci_0000_41_00_0": {"model": "NVIDIA A100"}}),
                  H + "gpus.pci_0000_41_00_0.model: expected [a-z0-9][a-z0-9._-]{0,63}, got 'NVIDIA A100'"),
    "domain type": (config(domain_type="xen"), WHERE + "domain_type: expected one of kvm, qemu, got 'xen'"),
    "network text": (config(network="user"),
                     WHERE + 'network: expected {"type": "user"} or {"type": "network", "name": ...}, got \'user\''),
    "network type": (config(network={"type": "bridge"}), WHERE + "network.type: expected one of user, network, got 'bridge'"),
    "network without name": (config(network={"type": "network"}),
                             WHERE + "network.name: required with type = network (a libvirt network name)"),
    "user network with name": (config(network={"type": "user", "name": "x"}), WHERE + "network: name: unknown key (known: type)"),
    "bad network name": (config(network={"type": "network", "name": "a b"}), WHERE + "network.name: expected a libvirt network name, got 'a b'"),
    "ports reversed": (config(forward_ports=[43000, 42000]),
                       WHERE + "forward_ports: expected [first, last] with 1024 <= first <= last <= 65535, got [43000, 42000]"),
    "ports privileged": (config(forward_ports=[80, 90]),
                         WHERE + "forward_ports: expected [first, last] with 1024 <= first <= last <= 65535, got [80, 90]"),
    "ports one": (config(forward_ports=42000),
                  WHERE + "forward_ports: expected [first, last] with 1024 <= first <= last <= 65535, got 42000"),
    "gpu_on_suspend": (config(gpu_on_suspend="save"), WHERE + "gpu_on_suspend: expected one of keep, release, got 'save'"),
    "release without gpu_save": (
        config(gpu_on_suspend="release", hosts=[{**HOST, "gpu_save": True}, {**HOST, "name": "b", "uri": "qemu+tls://b/system"}]),
        WHERE + "gpu_on_suspend: release needs gpu_save = true on every host (not set on: b): a passthrough GPU cannot be saved "
        "to disk, so a paused lab keeps its GPU; use keep, or set gpu_save = true where every GPU is a vGPU that supports "
        "saving (or there is no GPU)"),
    "prefix": (config(name_prefix="LabDesk"), WHERE + "name_prefix: expected [a-z][a-z0-9-]{0,20}, got 'LabDesk'"),
    "prefix long": (config(name_prefix="a" * 22), WHERE + f"name_prefix: expected [a-z][a-z0-9-]{{0,20}}, got '{'a' * 22}'"),
    "agent timeout": (config(agent_timeout=0), WHERE + "agent_timeout: expected a number of seconds above 0 (at most 86400), got 0"),
    "boot timeout": (config(boot_timeout="5m"), WHERE + "boot_timeout: expected a number of seconds above 0 (at most 86400), got '5m'"),
    "seed not text": (config(credential_seed=5), WHERE + "the secret credential_seed is missing (labdesk backends add generates one)"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_bad_settings_are_refused_naming_the_key(case: str) -> None:
    raw, message = REFUSALS[case]
    assert refused(raw) == message


def test_addresses_are_ips_or_host_names() -> None:
    assert parse("lab", with_host(address="::1")).hosts[0].address == "::1"
    assert parse("lab", with_host(address="guac-gw.lab.example.edu")).hosts[0].address == "guac-gw.lab.example.edu"
