"""Host choice (spread by memory, ties by name, a GPU's host) and the after-define check of racing placements."""

from __future__ import annotations

import itertools

import pytest

from broker.errors import CapacityError
from connectors.libvirt.placement import FULL, HostLoad, PlacedDomain, choose_host, fits_after_define


def test_spread_to_the_host_with_the_most_memory_left() -> None:
    hosts = [HostLoad("a", 16, 65536, 2, 8192), HostLoad("b", 16, 65536, 8, 4096), HostLoad("c", 8, 32768)]
    assert choose_host(hosts, 2, 4096) == "b"


def test_memory_wins_over_free_cpus() -> None:
    hosts = [HostLoad("a", 64, 16384), HostLoad("b", 4, 32768, 2, 0)]
    assert choose_host(hosts, 2, 2048) == "b"


def test_ties_go_to_the_first_name() -> None:
    hosts = [HostLoad("c", 8, 8192), HostLoad("a", 8, 8192), HostLoad("b", 8, 8192)]
    assert choose_host(hosts, 1, 1024) == "a"


def test_a_host_without_cpus_left_is_skipped() -> None:
    hosts = [HostLoad("a", 4, 65536, 3, 0), HostLoad("b", 4, 8192)]
    assert choose_host(hosts, 2, 1024) == "b"


def test_exactly_full_still_fits() -> None:
    assert choose_host([HostLoad("a", 4, 4096, 2, 2048)], 2, 2048) == "a"


def test_a_gpu_lab_runs_on_its_gpus_host() -> None:
    hosts = [HostLoad("big", 64, 262144), HostLoad("gpu1", 8, 16384, 4, 8192)]
    assert choose_host(hosts, 2, 4096, required="gpu1") == "gpu1"


def test_no_room_is_a_capacity_error_a_learner_can_read() -> None:
    with pytest.raises(CapacityError) as caught:
        choose_host([HostLoad("a", 4, 4096, 4, 0), HostLoad("b", 4, 4096, 0, 3072)], 1, 2048)
    assert str(caught.value) == "no room for 1 vCPU / 2048 MiB on 2 host(s)"
    assert caught.value.user_message == FULL == "No lab machine is free right now. Please try again in a few minutes."


def test_no_room_on_the_required_host_even_if_another_has_some() -> None:
    with pytest.raises(CapacityError, match=r"^no room for 2 vCPU / 4096 MiB on host gpu1$"):
        choose_host([HostLoad("big", 64, 262144), HostLoad("gpu1", 8, 16384, 8, 0)], 2, 4096, required="gpu1")
    with pytest.raises(CapacityError):
        choose_host([HostLoad("big", 64, 262144)], 2, 4096, required="gone")
    with pytest.raises(CapacityError):
        choose_host([], 1, 1)


def test_a_lab_alone_fits_within_capacity() -> None:
    assert fits_after_define([PlacedDomain("x", 4, 8192, 1.0)], 4, 8192, "x")
    assert not fits_after_define([PlacedDomain("x", 4, 8192, 1.0)], 3, 8192, "x")
    assert not fits_after_define([PlacedDomain("x", 4, 8192, 1.0)], 4, 8191, "x")


def test_a_domain_that_is_not_listed_does_not_fit() -> None:
    assert not fits_after_define([PlacedDomain("x", 1, 1, 1.0)], 4, 8192, "y")


def test_of_two_racing_labs_with_room_for_one_exactly_the_earlier_stays() -> None:
    """Both workers saw a free host, both defined; each counts the host's domains in whatever order."""
    first, second = PlacedDomain("lab-7", 2, 4096, 100.0), PlacedDomain("lab-8", 2, 4096, 100.5)
    for seen in ([first, second], [second, first]):
        assert fits_after_define(seen, 4, 6144, "lab-7")
        assert not fits_after_define(seen, 4, 6144, "lab-8")


def test_the_later_one_that_counted_before_the_other_defined_still_stays_alone() -> None:
    """The earlier lab's worker may count before the later one defined: it stays; the later sees both and goes."""
    first, second = PlacedDomain("lab-7", 2, 4096, 100.0), PlacedDomain("lab-8", 2, 4096, 100.5)
    assert fits_after_define([first], 4, 6144, "lab-7")
    assert not fits_after_define([first, second], 4, 6144, "lab-8")


def test_equal_creation_times_are_ranked_by_name() -> None:
    a, b = PlacedDomain("labdesk-lab-10", 1, 3000, 5.0), PlacedDomain("labdesk-lab-9", 1, 3000, 5.0)
    assert fits_after_define([b, a], 2, 4096, "labdesk-lab-10")
    assert not fits_after_define([a, b], 2, 4096, "labdesk-lab-9")


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_racing_labs_keep_exactly_what_fits_in_any_listing_order(order: tuple[int, ...]) -> None:
    existing = PlacedDomain("old", 2, 2048, 1.0)
    racing = [PlacedDomain(f"lab-{i}", 1, 2048, 10.0 + i) for i in range(4)]
    listed = [existing] + [racing[i] for i in order]
    stays = [d.name for d in racing if fits_after_define(listed, 8, 6144, d.name)]
    assert stays == ["lab-0", "lab-1"]  # 2048 + 2 * 2048 = 6144: the first two by creation time
