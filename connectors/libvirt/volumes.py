"""A lab's disks in a libvirt storage pool: the copy-on-write overlay and the cloud-init seed.

Why through the pool API and not qemu-img on a path: the host may be remote (qemu+ssh, qemu+tls), and libvirt
then runs qemu-img, owns the files, labels them for QEMU and knows them again by name, so delete needs nothing
but the name. Every function here raises libvirt's own errors except for the cases it names; the connector maps
them (`PermanentError` for a missing base image or pool, `TransientError` for an unreachable host).
"""

from __future__ import annotations

from typing import Any

import libvirt

from connectors.libvirt import domain_xml


class VolumeMissing(Exception):
    """A named pool or volume does not exist; the message says which."""


def pool(connection: Any, name: str) -> Any:
    """The active storage pool `name` (refreshed, so volumes made by others are seen)."""
    try:
        found = connection.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise VolumeMissing(f"storage pool {name!r} does not exist") from None
        raise
    if not found.isActive():
        raise VolumeMissing(f"storage pool {name!r} is not active")
    try:
        found.refresh(0)
    except libvirt.libvirtError:  # a pool busy with another job's volume: its list is still usable
        pass
    return found


def lookup(storage_pool: Any, name: str) -> Any | None:
    """The volume `name` in the pool, or None."""
    try:
        return storage_pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def path_of(storage_pool: Any, name: str) -> str:
    """The path of an existing volume (a base image, a kernel): VolumeMissing when there is none."""
    volume = lookup(storage_pool, name)
    if volume is None:
        raise VolumeMissing(f"volume {name!r} is not in storage pool {storage_pool.name()!r}")
    return str(volume.path())


def capacity_gb(storage_pool: Any, name: str) -> int:
    """A volume's virtual size in whole GiB, rounded up."""
    volume = lookup(storage_pool, name)
    if volume is None:
        raise VolumeMissing(f"volume {name!r} is not in storage pool {storage_pool.name()!r}")
    capacity = int(volume.info()[1])
    return -(-capacity // 2**30)


def ensure_overlay(storage_pool: Any, name: str, capacity: int, backing_path: str) -> str:
    """The lab's qcow2 overlay on `backing_path` (created once; a retried provision reuses it): its path."""
    volume = lookup(storage_pool, name)
    if volume is None:
        volume = storage_pool.createXML(domain_xml.overlay_volume_xml(name, capacity, backing_path), 0)
    return str(volume.path())


def ensure_seed(connection: Any, storage_pool: Any, name: str, data: bytes) -> str:
    """The lab's NoCloud seed ISO, written through a libvirt stream (works on remote hosts too): its path.

    Written again on every call: the seed is cheap and derived, and a half-written one from a failed
    attempt must not survive.
    """
    volume = lookup(storage_pool, name)
    if volume is None:
        volume = storage_pool.createXML(domain_xml.seed_volume_xml(name, len(data)), 0)
    stream = connection.newStream(0)
    try:
        volume.upload(stream, 0, len(data), 0)
        stream.sendAll(lambda _stream, nbytes, source: source.read(nbytes), _Reader(data))
        stream.finish()
    except libvirt.libvirtError:
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass
        raise
    return str(volume.path())


def delete(storage_pool: Any, name: str) -> bool:
    """Delete the volume if it exists; True if there was one."""
    volume = lookup(storage_pool, name)
    if volume is None:
        return False
    try:
        volume.delete(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return False
        raise
    return True


class _Reader:
    """Bytes handed out in the pieces a libvirt stream asks for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def read(self, nbytes: int) -> bytes:
        piece = self.data[self.offset : self.offset + nbytes]
        self.offset += len(piece)
        return piece
