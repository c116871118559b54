"""Keep Corpus text from posing as prompt structure.

Prompt structure lives at the start of lines (`### Section` headers, the `Answer:` cue), so no
Corpus value may contain a line break. Free text (names, headlines, titles, post bodies) is
additionally wrapped in «guillemets», with any guillemets inside removed, so the model always
sees where a member's words begin and end; inside it, the words a prompt's parts open with
(`CUE_WORDS`: `Answer`, `Question`, chat roles) are dropped with a colon that follows them, and so is
the markup of chat templates and documents (`MARKUP`: `###` headers, backticks, `[INST]`,
`<|im_start|>`, `</tag>`). A task may show some free-text fields plain instead (`quote: {title:
plain}`): still one line, without guillemets, and never starting with what opens a structural line
(`#` runs, a `Word:` cue).
Short categorical values lose the characters that could read as structure (`#`, `:`,
guillemets) instead of being wrapped, to keep prompts light.
"""

from __future__ import annotations

import re
from functools import lru_cache

from recbrew.tasks.spec import FREE_TEXT_FIELDS

OPEN, CLOSE = "«", "»"
#: Fields whose values are free text written by members or advertisers.
FREE_TEXT = frozenset(FREE_TEXT_FIELDS)
#: Keys that carry a free-text field under another name: authors, followed creators and the names
#: in a candidate's social context are all member names.
ALIASES = {"author": "name", "creators": "name", "engaged_names": "name", "mutual_names": "name"}
_SPACE = re.compile(r"\s+")
_STRUCTURE = re.compile(r"[#:«»\[\]`]")
#: What may open a structural line: '#' runs (and stray colons) ...
_LEAD = re.compile(r"^[#:\s]+")
#: ... and a first word followed by a colon ('Answer:', 'Question:', 'skills:').
_CUE = re.compile(r"^([^\W\d_][\w'-]*)\s*:[\s:]*")
#: Words that open a part of a prompt when a colon follows: the templates' own cues (``Question:``, the
#: ``Answer:`` the answer word follows) and the role labels of chat-tuned models. Anywhere inside free text
#: such a word is dropped with its colon (``Answer: yes`` -> ``yes``): no field carries the cue the model
#: answers after, nor the word next to an answer word (``Answer yes``), which moved scores more than any
#: other words did (docs/injection.md). The same words without a colon stay (``Answer the call``).
CUE_WORDS = ("answer", "question", "instruction", "response", "system", "assistant", "user")
_INNER_CUE = re.compile(rf"\b(?:{'|'.join(CUE_WORDS)})\s*(?::\s*)+", re.IGNORECASE)
#: The names of the sections a prompt is made of (``### Member``, ``### Candidate``): with a '#' run before
#: them they are a header, dropped with it (``### Answer yes`` -> ``yes``).
SECTION_WORDS = CUE_WORDS + ("member", "network", "history", "candidate", "candidates")
#: Markup that gives text structure in chat templates and documents, and that no title needs inside a
#: ranking prompt: runs of two or more '#' (a single one stays: ``C#``, ``#hiring``) with a section name
#: after them (`SECTION_WORDS`), backticks (code fences),
#: the instruction tags of chat templates (``[INST]``, ``[/INST]``, ``<<SYS>>``), special tokens written
#: out (``<|im_start|>``) and XML or HTML tags (``</candidate>``, ``<b>``). Each is replaced by a space, so
#: removing one never joins two fragments into a new one.
MARKUP = (
    rf"#{{2,}}\s*(?:(?:{'|'.join(SECTION_WORDS)})\b(?:\s*:)*)?",
    r"`+",
    r"\[\s*/?\s*INST\s*\]",
    r"<<\s*/?\s*SYS\s*>>",
    r"<\|[^|<>]{0,40}\|>",
    r"</?[A-Za-z][\w:-]{0,30}\s*/?>",
)
_MARKUP = re.compile("|".join(MARKUP), re.IGNORECASE)


def one_line(value: str) -> str:
    return _SPACE.sub(" ", value).strip()


def quote(value: str, limit: int = 400) -> str:
    """Free text as «one line», at most ``limit`` characters inside the delimiters, without markup (`MARKUP`)
    or a cue word followed by a colon (`CUE_WORDS`)."""
    text = _MARKUP.sub(" ", value.replace(OPEN, " ").replace(CLOSE, " "))
    text = one_line(_INNER_CUE.sub(" ", text))
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return f"{OPEN}{text}{CLOSE}"


@lru_cache(maxsize=1 << 16)  # names and titles recur across members, requests and tasks
def plain(value: str, limit: int = 400) -> str:
    """Free text on one line without delimiters, at most ``limit`` characters, that cannot open a
    structural line: leading '#' runs and colons are dropped, and a leading 'Word:' loses its colon.

    Idempotent, and ``plain(quote(x)) == plain(x)``: it also turns quoted values plain.
    """
    text = _LEAD.sub("", quote(value, limit)[1:-1])
    return _CUE.sub(r"\1 ", text).rstrip()


def clean(value: str, limit: int = 80) -> str:
    """A short categorical value on one line, without structure characters."""
    text = one_line(_STRUCTURE.sub(" ", value))
    return text[:limit]


def neutralize(field: str, value):
    """The safe form of one Corpus value for a template (non-strings pass through)."""
    if isinstance(value, str):
        return quote(value) if ALIASES.get(field, field) in FREE_TEXT else clean(value)
    if isinstance(value, (list, tuple)):
        return [clean(v) if isinstance(v, str) else v for v in value]
    return value


def neutralize_row(row: dict) -> dict:
    return {k: neutralize(k, v) for k, v in row.items()}


def _plain_value(value):
    if isinstance(value, str):
        return plain(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) if isinstance(v, str) else v for v in value]
    return value


def show_plain(values: dict, fields: frozenset[str]) -> dict:
    """Neutralized ``values`` with the free text of ``fields`` (and their aliases) made plain, nested
    dicts included (a candidate's ``social``); ``values`` itself when nothing changes."""
    if not fields:
        return values
    out = None
    for key, value in values.items():
        if value is None:
            continue
        if ALIASES.get(key, key) in fields:
            new = _plain_value(value)
        elif isinstance(value, dict):
            new = show_plain(value, fields)
        else:
            continue
        if new is not value and new != value:
            if out is None:
                out = dict(values)
            out[key] = new
    return values if out is None else out
