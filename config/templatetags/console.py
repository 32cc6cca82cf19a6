"""Template filters every app's pages use (registered as the `console` library in settings)."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

register = template.Library()


@register.filter
def bytes_or_dash(value) -> str:
    return "—" if value is None else filesizeformat(value)


@register.filter
def params_or_dash(value) -> str:
    """135000000 -> 135M, 7241732096 -> 7.2B."""
    if value is None:
        return "—"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            number = value / size
            return f"{number:.1f}{unit}" if number < 10 else f"{number:.0f}{unit}"
    return str(value)


@register.filter
def uptime(since: datetime | None) -> str:
    """How long ago `since` was, to the minute: "3 h 12 min", "2 d 4 h", "under a minute"; a dash for None."""
    if since is None:
        return "—"
    minutes = max(0, int((timezone.now() - since).total_seconds() // 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else "under a minute"


@register.filter
def first_line(text: str) -> str:
    """The first non-blank line of `text` (a status reason's summary; the rest is often a traceback)."""
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")
