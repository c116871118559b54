"""Parsing shared by the commands' options."""

from __future__ import annotations


def comma_items(values: str | list[str] | None) -> list[str] | None:
    """Comma-separated items of an option (None when there are none); a repeatable option's occurrences all
    count, none is dropped for the last one."""
    if not values:
        return None
    return [v.strip() for value in ([values] if isinstance(values, str) else values)
            for v in value.split(",") if v.strip()] or None
