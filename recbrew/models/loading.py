"""Load a causal LM for ranking: `smollm2`, a `recbrew-tiny` folder, any local HF model folder, or a LoRA
adapter folder written by `recbrew train` (its base model is loaded and the adapter merged in)."""

from __future__ import annotations

import os
from pathlib import Path

from recbrew.errors import UserError

DEFAULT_MODEL = "smollm2"
ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(path: Path) -> str:
    """The base model a LoRA adapter folder was trained on."""
    import json

    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{path}: the adapter does not name its base model (base_model_name_or_path)")
    return base


def resolve(name: str) -> Path:
    """The folder of a model name: `smollm2` (converted once into the cache) or a local folder."""
    if name in ("smollm2", "smollm2-135m"):
        from recbrew.models import smollm2

        return smollm2.model_dir()
    path = Path(name)
    if (path / ADAPTER_CONFIG).is_file():
        return path
    if not (path / "config.json").is_file():
        raise UserError(f"model {name!r} not found: use 'smollm2' or a folder with a Hugging Face config.json "
                        "(e.g. one written by `recbrew models tiny` or `recbrew train export`)")
    return path


def load_model(name: str = DEFAULT_MODEL, *, dtype=None, attn_implementation: str = "sdpa", device: str | None = None,
               layers: int | None = None):
    """(model, tokenizer) in eval mode on ``device`` (CUDA when present).

    ``dtype``: fp32 by default; ``"auto"`` picks bf16 where the hardware has bf16 arithmetic (CUDA, or a CPU
    with AVX-512 BF16 / AMX) and fp32 elsewhere. ``layers``: keep only the first N decoder layers.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    from recbrew.models.tokenizers import load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        from recbrew.models.precision import fast_dtype

        dtype = fast_dtype(device)
    path = resolve(name)
    adapter = (path / ADAPTER_CONFIG).is_file()
    weights = resolve(adapter_base(path)) if adapter else path
    try:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype or torch.float32,
                                                     attn_implementation=attn_implementation)
        if adapter:
            from peft import PeftModel

            # Merged for inference: scoring then runs the plain model at full speed.
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot load a causal language model: {exc}") from None
    if layers is not None:
        from recbrew.models.depth import truncate

        truncate(model, layers)
    model.to(device).eval()
    return model, load_tokenizer(str(path if (path / "tokenizer.json").is_file() else weights))
