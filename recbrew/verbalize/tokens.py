"""Exact token counts of prompt texts, reusing the counts of lines that repeat across prompts.

Prompts repeat most of their lines (instruction, profile fields, history entries, candidate
text), so counting line by line and remembering each line's count saves most of the tokenizer's
work. That is exact only where the tokenizer cannot merge across the cut: for byte-level BPE with
the GPT-2 split pattern (SmolLM2, recbrew-tiny, most Llama-family BPEs without a normalizer), no
pre-token ever contains a non-space character followed by whitespace, so cutting a text right
before a newline that follows a non-space character gives pieces whose counts add up to the
text's count. Other tokenizers are counted text by text (still cached).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Cached counts kept before the cache starts over (bounds memory on long builds).
MAX_CACHED = 1 << 16
#: Uncounted pieces tokenized per call while a bounded count climbs towards its limit.
BATCH = 8


def _backend(tokenizer):
    """The `tokenizers.Tokenizer` behind recbrew's FastTokenizer, or None for anything else."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers ships with transformers
        return None
    backend = getattr(tokenizer, "backend", None)
    return backend if isinstance(backend, Tokenizer) else None


def splits_at_lines(backend) -> bool:
    """Whether counts of newline-cut pieces add up exactly for this tokenizer (see the module doc)."""
    from tokenizers import models, pre_tokenizers

    pre = backend.pre_tokenizer
    if backend.normalizer is not None or not isinstance(pre, pre_tokenizers.ByteLevel):
        return False
    if pre.add_prefix_space or not pre.use_regex:
        return False
    if not isinstance(backend.model, models.BPE) or backend.model.dropout:
        return False
    if backend.truncation is not None or backend.padding is not None:
        return False
    # Added tokens are matched before the split pattern: one that spans a newline or strips the
    # whitespace beside it would join two pieces.
    return all("\n" not in t.content and not t.lstrip and not t.rstrip
               for t in backend.get_added_tokens_decoder().values())


#: A line with the run of newlines before it: pieces start where a newline run starts.
_PIECE = re.compile(r"[^\n]+|\n+[^\n]*")
#: Whitespace right before a newline: there the newline would join the pre-token before it.
_SPACE_BEFORE_NEWLINE = re.compile(r"[^\S\n]\n")


def line_pieces(text: str) -> list[str]:
    """``text`` cut before every newline that follows a non-space character; the pieces join to ``text``."""
    pieces = _PIECE.findall(text)
    if not _SPACE_BEFORE_NEWLINE.search(text):
        return pieces
    out = [pieces[0]]
    for piece in pieces[1:]:
        if out[-1][-1].isspace():
            out[-1] += piece
        else:
            out.append(piece)
    return out


class TokenCounter:
    """Token counts equal to ``len(tokenizer(text, add_special_tokens=False)["input_ids"])``, cached."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._backend = _backend(tokenizer)
        self.by_line = self._backend is not None and splits_at_lines(self._backend)
        if self._backend is not None:
            # Counting needs no offsets; the fast batch encoder skips them where this version has it.
            self._encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        self._cache: dict[str, int] = {}

    def _tokenize(self, texts: list[str]) -> list[int]:
        if self._backend is not None:
            return [len(e) for e in self._encode(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _fill(self, cache: dict[str, int], keys) -> None:
        """Count the keys not in ``cache`` yet, in one tokenizer call."""
        missing = list(dict.fromkeys(k for k in keys if k not in cache))
        if missing:
            cache.update(zip(missing, self._tokenize(missing), strict=True))

    def _current(self) -> dict[str, int]:
        cache = self._cache
        if len(cache) > MAX_CACHED:
            # A new dict rather than clear(): a count running beside this one keeps the dict it holds.
            self._cache = cache = {}
        return cache

    def count_within(self, text: str, limit: int) -> int:
        """The exact count of ``text`` if it is at most ``limit``, else some number above ``limit``.

        Counts are never negative, so once the pieces counted so far pass the limit the rest need
        not be tokenized: a prompt far over its budget costs little more than one that just fits.
        """
        cache = self._current()
        if text in cache or not self.by_line:
            return self.count([text])[0]
        total, missing = 0, []
        for piece in line_pieces(text):
            known = cache.get(piece)
            if known is None:
                missing.append(piece)
            else:
                total += known
        for start in range(0, len(missing), BATCH):
            if total > limit:
                return total
            batch = missing[start:start + BATCH]
            self._fill(cache, batch)
            total += sum(map(cache.__getitem__, batch))
        cache[text] = total
        return total

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text."""
        if not texts:
            return []
        cache = self._current()
        if not self.by_line:
            self._fill(cache, texts)
            return [cache[t] for t in texts]
        # Whole texts are cached too (a piece's count is its text's count either way): repeated
        # candidate segments then cost one lookup.
        todo = {t: line_pieces(t) for t in texts if t not in cache}
        if todo:
            self._fill(cache, (p for ps in todo.values() for p in ps))
            for text, ps in todo.items():
                cache[text] = sum(map(cache.__getitem__, ps))
        return [cache[t] for t in texts]
