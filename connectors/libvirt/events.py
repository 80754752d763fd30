"""Domain lifecycle events from every libvirt host, turned into `notify(lab_id)` calls for the broker.

Why: polling a lab every few seconds to notice that its VM crashed, was shut down from inside, or finished
restoring is slow and costs a libvirt round trip per lab. libvirt pushes lifecycle events instead; the broker's
`labdesk watch` turns each `notify(lab_id)` into a prompt observe of that lab (polling stays the fallback).

How: libvirt delivers events only through an event loop implementation registered *before* the connection
is opened, so `ensure_event_loop()` registers libvirt's default one once per process and runs
`virEventRunDefaultImpl()` in a daemon thread. `watch_hosts` then opens each host, registers one lifecycle
callback and a close callback, and reconnects with back-off (1 s doubling to 60 s) when a connection closes
(libvirtd restarted, network gone; keepalive notices a dead peer within ~15 s). After a reconnect every
LabDesk domain on that host is notified once, since events may have been missed meanwhile. Callbacks run in
the event loop's thread: `notify` must be quick (queue a job, set a flag) and its errors are logged, never
raised into libvirt.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import libvirt

log = logging.getLogger(__name__)

FIRST_RETRY = 1.0  # s before the first reconnect; doubles up to MAX_RETRY
MAX_RETRY = 60.0
TICK = 0.5  # s between checks of `stop` and of the connections' health
KEEPALIVE = (5, 3)  # a probe every 5 s, the peer is dead after 3 unanswered

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event loop implementation and run it in a daemon thread, once per process."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None and _loop_thread.is_alive():
            return
        if _loop_thread is None:  # registering twice is an error in libvirt; a dead thread is simply restarted
            libvirt.virEventRegisterDefaultImpl()
        _loop_thread = threading.Thread(target=_run_loop, name="libvirt-events", daemon=True)
        _loop_thread.start()


def _run_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.warning("libvirt event loop iteration failed")
            time.sleep(TICK)


def lab_id_from_name(name: str, prefix: str) -> int | None:
    """The lab id in a domain name `<prefix>-lab-<id>`, or None for anyone else's domain."""
    match = re.fullmatch(rf"{re.escape(prefix)}-lab-(\d+)", name)
    return int(match.group(1)) if match else None


@dataclass
class WatchedHost:
    """One host's connection for events; `opener` opens it (or hands out a shared one, `shared` = keep open)."""

    name: str
    opener: Callable[[], Any]
    shared: bool = False
    connection: Any = None
    callback_id: int | None = None
    closed: threading.Event = field(default_factory=threading.Event)
    retry_at: float = 0.0
    backoff: float = FIRST_RETRY
    connects: int = 0


def watch_hosts(
    hosts: Iterable[WatchedHost],
    lab_id_of: Callable[[Any], int | None],
    notify: Callable[[int], None],
    stop: threading.Event,
    managed_on: Callable[[Any], Iterable[int]] = lambda connection: (),
) -> None:
    """Call `notify(lab_id)` on every lifecycle event of a LabDesk domain on `hosts`, until `stop` is set.

    `lab_id_of(domain)` says whose domain it is (None: not LabDesk's); `managed_on(connection)` lists the
    lab ids on a host, notified after a reconnect.
    """
    ensure_event_loop()
    watched = list(hosts)
    try:
        while not stop.is_set():
            for host in watched:
                if host.connection is not None and (host.closed.is_set() or not _alive(host.connection)):
                    log.warning("libvirt events: the connection to %s closed; reconnecting", host.name)
                    _drop(host)
                if host.connection is None and time.monotonic() >= host.retry_at:
                    _connect(host, lab_id_of, notify, managed_on)
            stop.wait(TICK)
    finally:
        for host in watched:
            _drop(host)


def _connect(host: WatchedHost, lab_id_of: Callable[[Any], int | None], notify: Callable[[int], None],
             managed_on: Callable[[Any], Iterable[int]]) -> None:
    """Open the host and register the callbacks; on failure, schedule the next try with back-off."""
    def on_event(_conn: Any, domain: Any, event: int, detail: int, _opaque: Any) -> None:
        _deliver(host.name, domain, event, detail, lab_id_of, notify)

    def on_close(_conn: Any, reason: int, _opaque: Any) -> None:
        host.closed.set()

    try:
        connection = host.opener()
        host.closed.clear()
        if not host.shared:
            _keepalive(connection)
            connection.registerCloseCallback(on_close, None)
        host.callback_id = connection.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None)
        host.connection = connection
    except libvirt.libvirtError as exc:
        log.warning("libvirt events: cannot watch %s (retry in %.0f s): %s", host.name, host.backoff, _message(exc))
        host.retry_at = time.monotonic() + host.backoff
        host.backoff = min(host.backoff * 2, MAX_RETRY)
        return
    host.backoff = FIRST_RETRY
    host.connects += 1
    if host.connects > 1:  # events may have been missed while the host was away
        for lab_id in _safe_list(managed_on, connection, host.name):
            _notify(notify, lab_id)


def _deliver(host: str, domain: Any, event: int, detail: int, lab_id_of: Callable[[Any], int | None],
             notify: Callable[[int], None]) -> None:
    try:
        lab_id = lab_id_of(domain)
    except libvirt.libvirtError as exc:  # the domain vanished before its metadata could be read
        log.info("libvirt events: %s: domain event %s/%s unreadable: %s", host, event, detail, _message(exc))
        return
    if lab_id is not None:
        log.debug("libvirt events: %s: lab %s event %s/%s", host, lab_id, event, detail)
        _notify(notify, lab_id)


def _notify(notify: Callable[[int], None], lab_id: int) -> None:
    try:
        notify(lab_id)
    except Exception:  # noqa: BLE001 - a broken notify must not stop the event loop thread
        log.exception("libvirt events: notify(%s) failed", lab_id)


def _safe_list(managed_on: Callable[[Any], Iterable[int]], connection: Any, name: str) -> list[int]:
    try:
        return list(managed_on(connection))
    except libvirt.libvirtError as exc:
        log.warning("libvirt events: cannot list the labs on %s: %s", name, _message(exc))
        return []


def _drop(host: WatchedHost) -> None:
    """Deregister the callbacks and close the connection (unless shared); errors of a dead connection are ignored."""
    connection, host.connection = host.connection, None
    if connection is None:
        return
    for undo in (
        lambda: connection.domainEventDeregisterAny(host.callback_id) if host.callback_id is not None else None,
        lambda: None if host.shared else connection.unregisterCloseCallback(),
        lambda: None if host.shared else connection.close(),
    ):
        try:
            undo()
        except libvirt.libvirtError:
            pass
    host.callback_id = None
    host.retry_at = time.monotonic() + host.backoff


def _alive(connection: Any) -> bool:
    try:
        return connection.isAlive() == 1
    except libvirt.libvirtError:
        return False


def _keepalive(connection: Any) -> None:
    """Ask for keepalive probes so a dead peer closes the connection (drivers without it say so; fine)."""
    try:
        connection.setKeepAlive(*KEEPALIVE)
    except libvirt.libvirtError:
        pass


def _message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    return (get() if get else None) or str(exc)
