"""`crawler check`: is the latest succeeded run recent enough? One line either way."""

from __future__ import annotations

import re
from datetime import datetime

from crawler.store import MonitoringFacts

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> float:
    """`90m`, `26h`, `2d`, `45s` or plain seconds (`3600`), in seconds.

    Raises:
        ValueError: not such a duration, or zero.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match["number"]) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 90m, 26h or 2d")
    return float(match["number"]) * _UNIT_S[match["unit"]]


def age_text(seconds: float) -> str:
    """`45s`, `12m`, `3h05m`, `2d04h`: short enough for a monitor's one line."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{secs}s"


def limit_text(seconds: float) -> str:
    """A limit in the largest unit that divides it: `26h`, `90m`, `2d`, `45s`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def describe_freshness(facts: MonitoringFacts, max_age_s: float, now: datetime) -> tuple[bool, str]:
    """Whether the latest success is within `max_age_s` of `now`, and the line saying so."""
    limit = limit_text(max_age_s)
    finished = facts.last_success_at
    if finished is None or facts.last_success_run_id is None:
        return False, f"STALE: no run has succeeded yet (limit {limit})"
    age_s = (now - finished).total_seconds()
    stamp = finished.strftime("%Y-%m-%d %H:%M:%SZ")
    run = f"run {facts.last_success_run_id} succeeded {age_text(age_s)} ago ({stamp})"
    if age_s <= max_age_s:
        return True, f"OK: {run}, within {limit}"
    return False, f"STALE: {run}, more than {limit}"
