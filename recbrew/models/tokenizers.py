"""Tokenizers by name: `smollm2` (default) or any local Hugging Face model/tokenizer folder.

Prompt budgets only need token counts, so a folder with a `tokenizer.json` is loaded with the
`tokenizers` library directly (milliseconds) instead of through transformers (seconds of imports).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from recbrew.errors import UserError
from recbrew.models import smollm2

DEFAULT = "smollm2"


class FastTokenizer:
    """The slice of the transformers tokenizer API that recbrew's prompt code uses, on `tokenizers`."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.path = path
        self.backend = Tokenizer.from_file(str(path / "tokenizer.json"))

    def __call__(self, text, add_special_tokens: bool = False) -> dict:
        if isinstance(text, str):
            return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}
        encodings = self.backend.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encodings]}


def _load_folder(path: Path):
    if (path / "tokenizer.json").is_file():
        return FastTokenizer(path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load a tokenizer: {exc}") from None


@lru_cache(maxsize=8)
def load_tokenizer(name: str = DEFAULT):
    """The tokenizer called ``name``: `smollm2`, or a folder holding a Hugging Face tokenizer."""
    if name in (DEFAULT, "smollm2-135m"):
        return _load_folder(smollm2.tokenizer_dir())
    path = Path(name)
    if not path.is_dir():
        raise UserError(f"unknown tokenizer {name!r}: use 'smollm2' or a folder with a Hugging Face tokenizer")
    return _load_folder(path)
