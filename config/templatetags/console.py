"""Template filters every app's pages use (registered as the `console` library in settings)."""

from __future__ import annotations

from django import template
from django.template.defaultfilters import filesizeformat

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
