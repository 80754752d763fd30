"""Lifecycle events → notify(lab_id), on libvirt's test driver (which has events; no daemon needed).

The real daemon's case (an outside `destroy` notified within seconds) is in test_real_qemu.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed")
import libvirt  # noqa: E402

from broker.connector import LabSpec  # noqa: E402
from connectors.libvirt import events  # noqa: E402
from connectors.libvirt.connector import LibvirtConnector  # noqa: E402
from tests.connectors.libvirt.conftest import backend_config, host, host_uri, lab_params  # noqa: E402

FOREIGN = "<domain type='kvm'><name>{}</name><memory>65536</memory><os><type>hvm</type></os></domain>"


class Seen:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.changed = threading.Condition()

    def __call__(self, lab_id: int) -> None:
        with self.changed:
            self.ids.append(lab_id)
            self.changed.notify_all()

    def wait_for(self, lab_id: int, timeout: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: lab_id in self.ids, timeout), f"no event for lab {lab_id}: {self.ids}"


def watching(target: Callable[[Callable[[int], None], threading.Event], None]) -> tuple[Seen, threading.Event, threading.Thread]:
    seen, stop = Seen(), threading.Event()
    thread = threading.Thread(target=target, args=(seen, stop), daemon=True)
    thread.start()
    return seen, stop, thread


def test_the_name_says_whose_domain_it_is() -> None:
    assert events.lab_id_from_name("labdesk-lab-42", "labdesk") == 42
    assert events.lab_id_from_name("other-lab-42", "labdesk") is None
    assert events.lab_id_from_name("labdesk-lab-42-old", "labdesk") is None


def test_watch_notifies_the_labs_of_this_backend_only_and_stops(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("h", host_uri(tmp_path, "h"))))
    seen, stop, thread = watching(connector.watch)
    time.sleep(0.6)  # the watch registers on its first tick
    handle = connector.provision(LabSpec(lab_id=501, image="tiny", owner="l", params=lab_params(), protocol="ssh"))
    seen.wait_for(501)
    foreign = connector.connection("h").defineXML(FOREIGN.format("someone-else"))
    foreign.create()
    connector.delete(handle)
    time.sleep(0.3)
    assert set(seen.ids) == {501}
    stop.set()
    thread.join(3)
    assert not thread.is_alive()


def test_a_host_is_retried_with_back_off_and_its_labs_notified_after_a_reconnect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "FIRST_RETRY", 0.2)
    monkeypatch.setattr(events, "TICK", 0.05)
    connection = libvirt.open(host_uri(tmp_path, "h"))
    connection.defineXML(FOREIGN.format("labdesk-lab-7"))
    attempts: list[str] = []

    def opener() -> Any:
        attempts.append("try")
        if len(attempts) == 1:  # the host is away the first time: a real libvirt error
            return libvirt.open(f"qemu+unix:///system?socket={tmp_path}/no-such-socket")
        return connection

    watched = events.WatchedHost("h", opener, shared=True)

    def lab_id_of(domain: Any) -> int | None:
        return events.lab_id_from_name(domain.name(), "labdesk")

    def managed_on(conn: Any) -> list[int]:
        return [i for d in conn.listAllDomains(0) if (i := lab_id_of(d)) is not None]

    seen, stop, thread = watching(lambda notify, stop: events.watch_hosts([watched], lab_id_of, notify, stop, managed_on))
    deadline = time.monotonic() + 5
    while watched.connection is None:
        assert time.monotonic() < deadline, "never connected"
        time.sleep(0.05)
    assert len(attempts) == 2
    connection.lookupByName("labdesk-lab-7").create()
    seen.wait_for(7)
    seen.ids.clear()
    watched.closed.set()  # as libvirt's close callback does when the connection drops
    seen.wait_for(7)  # re-listed after the reconnect: events may have been missed
    assert len(attempts) == 3 and watched.connects == 2
    stop.set()
    thread.join(3)
    assert not thread.is_alive() and watched.connection is None


def test_a_failing_notify_does_not_stop_the_watch(tmp_path: Path) -> None:
    connector = LibvirtConnector("lv", backend_config(host("h", host_uri(tmp_path, "h"))))
    calls: list[int] = []

    def notify(lab_id: int) -> None:
        calls.append(lab_id)
        raise RuntimeError("the broker's queue is down")

    stop = threading.Event()
    thread = threading.Thread(target=connector.watch, args=(notify, stop), daemon=True)
    thread.start()
    time.sleep(0.6)
    connector.provision(LabSpec(lab_id=601, image="tiny", owner="l", params=lab_params(), protocol="ssh"))
    connector.provision(LabSpec(lab_id=602, image="tiny", owner="l", params=lab_params(), protocol="ssh"))
    deadline = time.monotonic() + 5
    while not {601, 602} <= set(calls):
        assert time.monotonic() < deadline, calls
        time.sleep(0.05)
    stop.set()
    thread.join(3)
