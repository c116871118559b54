"""Load a causal LM for ranking: `smollm2`, a `recbrew-tiny` folder, or any local HF model folder."""

from __future__ import annotations

import os
from pathlib import Path

from recbrew.errors import UserError

DEFAULT_MODEL = "smollm2"


def resolve(name: str) -> Path:
    """The folder of a model name: `smollm2` (converted once into the cache) or a local folder."""
    if name in ("smollm2", "smollm2-135m"):
        from recbrew.models import smollm2

        return smollm2.model_dir()
    path = Path(name)
    if not (path / "config.json").is_file():
        raise UserError(f"model {name!r} not found: use 'smollm2' or a folder with a Hugging Face config.json "
                        "(e.g. one written by `recbrew models tiny` or `recbrew train export`)")
    return path


def load_model(name: str = DEFAULT_MODEL, *, dtype=None, attn_implementation: str = "sdpa", device: str | None = None):
    """(model, tokenizer) in eval mode on ``device`` (CUDA when present); fp32 unless ``dtype`` says otherwise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    from recbrew.models.tokenizers import load_tokenizer

    path = resolve(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32,
                                                     attn_implementation=attn_implementation)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot load a causal language model: {exc}") from None
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return model, load_tokenizer(str(path))
