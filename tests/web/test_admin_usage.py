"""/admin/usage over real HTTP: the hours and costs shown match a hand-built event history (the one
tests/test_usage.py works out by hand), the SVG chart has one bar group per bucket with the bucket's
numbers, bad query parameters are a message on the page, and only admins get in."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Callable, Iterator

import pytest

from broker.clock import set_clock
from broker.runtime import Runtime
from tests.support.http import Learner, LiveServer
from tests.test_usage import A_RUNNING, A_SUSPENDED, build
from tests.support.admin_browser import Browser, signed_in_root

PERIOD = "/admin/usage?from=2026-11-01&to=2026-11-03"


@pytest.fixture
def fixed_now() -> Iterator[None]:
    """Now is 2026-11-05, after the hand-built period, as in tests/test_usage.py."""
    set_clock(lambda: datetime(2026, 11, 5))
    yield
    set_clock(None)


@pytest.fixture
def signed_in(rt: Runtime, server: LiveServer, fixed_now: None) -> Browser:
    return signed_in_root(rt, server.url)


def cells(html: str, heading: str, name: str) -> list[str]:
    """The cells of the row named `name` in the table under the section headed `heading`."""
    section = html.split(f">{heading}</h2>")[1].split("</section>")[0]
    row = re.search(rf'<tr><th scope="row">{re.escape(name)}</th>(.*?)</tr>', section, re.S)
    assert row, f"no row {name!r} under {heading!r}"
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row.group(1), re.S)]


def test_usage_per_course_and_backend_matches_the_event_history(rt: Runtime, signed_in: Browser) -> None:
    build(rt)
    page = signed_in.get(PERIOD)
    assert page.status_code == 200
    networks_running, networks_suspended = A_RUNNING + 1, A_SUSPENDED + 2
    networks_cost = networks_running * 2.0 + networks_suspended * 0.5
    assert cells(page.text, "Per course", "Networks") == [
        f"{networks_running:.2f}", f"{networks_suspended:.2f}", f"{networks_running * 2:.2f}",
        f"{networks_suspended * 0.5:.2f}", f"{networks_cost:.2f}"]
    # The unpriced backend's running half hour has an unknown cost ("—"), not 0; no suspended hours cost 0.
    assert cells(page.text, "Per course", "Databases") == ["0.50", "0.00", "—", "0.00", "—"]
    assert cells(page.text, "Per backend", "priced")[4] == f"{networks_cost:.2f}"
    assert cells(page.text, "Per backend", "unpriced") == ["0.50", "0.00", "—", "0.00", "—"]
    assert f"{A_RUNNING + 1.5:.2f} lab-hours running, {A_SUSPENDED + 2:.2f} suspended" in page.text
    assert "estimated cost <span" in page.text and "—</span>." in page.text, "the total is unknown too"


def bar_groups(html: str) -> list[str]:
    svg = html.split("<svg")[1].split("</svg>")[0]
    return re.findall(r'<g class="bucket">(.*?)</g>', svg, re.S)


def test_the_chart_has_one_bar_group_per_bucket_with_its_numbers(rt: Runtime, signed_in: Browser) -> None:
    build(rt)
    daily = signed_in.get(PERIOD + "&bucket=day").text
    svg = daily.split("<svg")[1].split("</svg>")[0]
    assert 'role="img"' in svg and '<title id="chart-title">' in svg and '<desc id="chart-desc">' in svg
    groups = bar_groups(daily)
    assert len(groups) == 2
    nov1_running = 2 + 13 + 58 / 60 + 1
    assert f"<title>2026-11-01: {nov1_running:.2f} h running, {A_SUSPENDED + 2:.2f} h suspended</title>" in groups[0]
    assert "<title>2026-11-02: 12.50 h running, 0.00 h suspended</title>" in groups[1]
    # The taller bar is the first day's: its stacked rects reach higher (smaller y) than the second's.
    tops = [min(float(y) for y in re.findall(r'y="([\d.]+)"', g)) for g in groups]
    assert tops[0] < tops[1]
    # The same numbers in a table for those who cannot see the chart.
    assert cells(daily.replace('<th scope="row">2026-11-02 00:00', '<th scope="row">day2'), "Lab-hours per day", "day2") == ["12.50", "0.00"]

    hourly = signed_in.get(PERIOD + "&bucket=hour").text
    groups = bar_groups(hourly)
    assert len(groups) == 48
    assert "<title>2026-11-02 23:00: 0.50 h running, 0.00 h suspended</title>" in groups[-1]


@pytest.mark.parametrize("query, message", [
    ("from=yesterday", "“yesterday” is not a date for “from”"),
    ("from=2026-11-03&to=2026-11-01", "“from” must be before “to”."),
    ("bucket=week", "“week” is not a bucket: choose day or hour."),
    ("from=2026-01-01&to=2026-12-01&bucket=hour", "the chart shows at most 400"),
])
def test_bad_query_parameters_are_a_message_not_an_error(signed_in: Browser, query: str, message: str) -> None:
    page = signed_in.get("/admin/usage?" + query)
    assert page.status_code == 400
    assert message in page.text and 'role="alert"' in page.text and "<svg" not in page.text


def test_the_default_period_is_the_last_seven_days(signed_in: Browser) -> None:
    page = signed_in.get("/admin/usage").text
    assert "From <strong>2026-10-30 00:00</strong> to <strong>2026-11-06 00:00</strong>" in page
    assert len(bar_groups(page)) == 7 and "No lab ran or was suspended in this period." in page


def test_only_admins_see_usage(server: LiveServer, learner: Callable[[str], Learner]) -> None:
    page = Browser(server.url).get("/admin/usage", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"] == "/admin/login?next=/admin/usage"
    ada = learner("Ada")
    assert ada.get(PERIOD, allow_redirects=False).headers["Location"].startswith("/admin/login")
    assert ada.get("/admin/usage", headers={"Accept": "application/json"}).status_code == 403
