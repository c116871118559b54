"""The catalog recbrew ships: prompt templates, task definitions and configs.

In a source checkout they live in the root folders `prompts/`, `tasks/` and `configs/`; in a
wheel they are installed here. :func:`path` finds them either way.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("prompts", "tasks", "configs")
_INSTALLED = Path(__file__).parent
#: Repository root when running from a source checkout (editable install).
_CHECKOUT = Path(__file__).resolve().parents[2]


def path(kind: str) -> Path:
    """Directory of the shipped ``prompts``, ``tasks`` or ``configs``."""
    if kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r}; expected one of {', '.join(KINDS)}")
    if (_INSTALLED / kind).is_dir():
        return _INSTALLED / kind
    return _CHECKOUT / kind
