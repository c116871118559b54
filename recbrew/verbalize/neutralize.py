"""Keep Corpus text from posing as prompt structure.

Prompt structure lives at the start of lines (`### Section` headers, the `Answer:` cue), so no
Corpus value may contain a line break. Free text (names, headlines, titles, post bodies) is
additionally wrapped in «guillemets», with any guillemets inside removed, so the model always
sees where a member's words begin and end. Short categorical values lose the characters that
could read as structure (`#`, `:`, guillemets) instead of being wrapped, to keep prompts light.
"""

from __future__ import annotations

import re

OPEN, CLOSE = "«", "»"
#: Fields whose values are free text written by members or advertisers.
FREE_TEXT = frozenset({"name", "headline", "title", "text", "description"})
_SPACE = re.compile(r"\s+")
_STRUCTURE = re.compile(r"[#:«»\[\]`]")


def one_line(value: str) -> str:
    return _SPACE.sub(" ", value).strip()


def quote(value: str, limit: int = 400) -> str:
    """Free text as «one line», at most ``limit`` characters inside the delimiters."""
    text = one_line(value.replace(OPEN, " ").replace(CLOSE, " "))
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return f"{OPEN}{text}{CLOSE}"


def clean(value: str, limit: int = 80) -> str:
    """A short categorical value on one line, without structure characters."""
    text = one_line(_STRUCTURE.sub(" ", value))
    return text[:limit]


def neutralize(field: str, value):
    """The safe form of one Corpus value for a template (non-strings pass through)."""
    if isinstance(value, str):
        return quote(value) if field in FREE_TEXT else clean(value)
    if isinstance(value, (list, tuple)):
        return [clean(v) if isinstance(v, str) else v for v in value]
    return value


def neutralize_row(row: dict) -> dict:
    return {k: neutralize(k, v) for k, v in row.items()}
