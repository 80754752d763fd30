"""/admin/usage: lab-hours running vs suspended and their estimated cost per course and per backend
(broker.usage), and a chart of usage over time drawn on the server as inline SVG.

The chart is plain SVG (no JavaScript library): it works without scripts, prints, and is accessible
through its <title>/<desc>, a <title> on each bar group, and the same numbers in a table beside it.
Query parameters an admin typed wrong are a message on the page (400), never a 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import render_template, request

from broker import usage
from broker.clock import utcnow
from web.admin.auth import admin, admin_required, current_admin
from web.context import rt

DEFAULT_DAYS = 7
MAX_BUCKETS = 400  # 16 days of hours or a year of days; more bars than that are unreadable anyway
FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M")

# Chart geometry (SVG user units; the SVG scales to the page width).
CHART_W, CHART_H, PAD_L, PAD_B, PAD_T = 720, 240, 48, 28, 10


class BadQuery(ValueError):
    """A query parameter the page cannot use; its message is shown to the admin as it is."""


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    bucket: usage.Bucket


def parse_moment(name: str, raw: str) -> datetime:
    """A date (midnight UTC) or a date and time, as an <input type="date"> or a person writes them."""
    for fmt in FORMATS:
        try:
            return datetime.strptime(raw.strip(), fmt)
        except ValueError:
            continue
    raise BadQuery(f"“{raw}” is not a date for “{name}”: write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC).")


def parse_period(args: dict[str, str]) -> Period:
    """The period asked for; by default the last 7 whole days up to the end of today (UTC)."""
    bucket = (args.get("bucket") or "day").strip()
    if bucket not in usage.BUCKET_SIZE:
        raise BadQuery(f"“{bucket}” is not a bucket: choose day or hour.")
    end_raw, start_raw = (args.get("to") or "").strip(), (args.get("from") or "").strip()
    end = parse_moment("to", end_raw) if end_raw else usage.floor_to(utcnow(), "day") + timedelta(days=1)
    start = parse_moment("from", start_raw) if start_raw else end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise BadQuery("“from” must be before “to”.")
    buckets = -(-(end - usage.floor_to(start, bucket)) // usage.BUCKET_SIZE[bucket])
    if buckets > MAX_BUCKETS:
        raise BadQuery(f"That period has {buckets} {bucket}s; the chart shows at most {MAX_BUCKETS}. "
                       f"Choose a shorter period or a larger bucket.")
    return Period(start, end, bucket)  # type: ignore[arg-type]


def chart(points: list[usage.SeriesPoint]) -> dict[str, Any]:
    """Bar positions for the stacked chart: running at the bottom, suspended on top, one group per bucket."""
    peak = max((p.running_hours + p.suspended_hours for p in points), default=0.0)
    scale_top = _nice_ceiling(peak)
    plot_w, plot_h = CHART_W - PAD_L, CHART_H - PAD_B - PAD_T
    slot = plot_w / max(len(points), 1)
    bar_w = max(slot * 0.7, 1.0)
    bars = []
    for index, point in enumerate(points):
        run_h = plot_h * point.running_hours / scale_top
        sus_h = plot_h * point.suspended_hours / scale_top
        base = PAD_T + plot_h
        bars.append({
            "point": point, "x": PAD_L + index * slot + (slot - bar_w) / 2, "w": bar_w,
            "run_y": base - run_h, "run_h": run_h, "sus_y": base - run_h - sus_h, "sus_h": sus_h,
        })
    ticks = [{"value": scale_top * k / 4, "y": PAD_T + plot_h - plot_h * k / 4} for k in range(5)]
    return {"bars": bars, "ticks": ticks, "width": CHART_W, "height": CHART_H, "left": PAD_L,
            "base": PAD_T + plot_h, "label_every": max(1, len(points) // 12)}


def _nice_ceiling(value: float) -> float:
    """A round top for the axis (1, 2 or 5 × 10^k) so tick labels read well; 1 h when nothing ran."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 0.1
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


@admin.get("/usage", endpoint="usage")  # named `usage`; the function name avoids broker.usage
@admin_required
def usage_page():  # type: ignore[no-untyped-def]
    args = {k: request.args.get(k, "") for k in ("from", "to", "bucket")}
    try:
        period = parse_period(args)
    except BadQuery as exc:
        return render_template("admin/usage.html", error=str(exc), args=args, admin=current_admin()), 400
    with rt().session() as db:
        report = usage.report(db, period.start, period.end)
        points = usage.series(db, period.start, period.end, period.bucket)
    return render_template("admin/usage.html", error="", args=args, period=period, report=report,
                           points=points, chart=chart(points), admin=current_admin())

