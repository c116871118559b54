"""Load a causal LM for ranking: `smollm2`, a `recbrew-tiny` folder, any local HF model folder, a LoRA
adapter folder written by `recbrew train` (its base model is loaded and the adapter merged in), or
`random-smollm2`: SmolLM2-135M's shape with seeded random weights and no tokenizer, for benchmarks on
machines without the weights.

Precision: bf16 on CUDA unless fp32 is asked for; fp32 on CPU unless ``dtype="auto"`` (bf16 where the
processor has bf16 instructions).
"""

from __future__ import annotations

import os
from pathlib import Path

from recbrew.errors import UserError
from recbrew.models import smollm2
from recbrew.models.precision import fast_dtype
from recbrew.models.tokenizers import load_tokenizer

DEFAULT_MODEL = "smollm2"
ADAPTER_CONFIG = "adapter_config.json"
RANDOM_SMOLLM2 = "random-smollm2"
#: SmolLM2-135M's architecture (its config.json): a Llama of 30 layers, 9 query / 3 key-value heads of 64.
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                     rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
                     eos_token_id=2, pad_token_id=2)
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


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
        return smollm2.model_dir()
    path = Path(name)
    if (path / ADAPTER_CONFIG).is_file():
        return path
    if not (path / "config.json").is_file():
        raise UserError(f"model {name!r} not found: use 'smollm2' or a folder with a Hugging Face config.json "
                        "(e.g. one written by `recbrew models tiny` or `recbrew train export`)")
    return path


def resolve_dtype(dtype, device: str):
    """The torch dtype to load in: ``None`` -> bf16 on CUDA (where supported), fp32 elsewhere; ``"auto"`` -> bf16
    where the hardware has bf16 arithmetic; ``"fp32"``/``"bf16"`` (or a torch dtype) as asked."""
    import torch

    if dtype is None:
        return fast_dtype(device) if device.startswith("cuda") else torch.float32
    if dtype == "auto":
        return fast_dtype(device)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UserError(f"dtype {dtype!r}: choose auto, bf16 or fp32")
        return getattr(torch, DTYPES[dtype])
    return dtype


def random_smollm2(dtype=None, attn_implementation: str = "sdpa", device: str = "cpu", seed: int = 0):
    """A Llama of SmolLM2-135M's shape with seeded random weights (no download, no tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SMOLLM2_SHAPE, attn_implementation=attn_implementation)
    config._name_or_path = RANDOM_SMOLLM2
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype or torch.float32)


def causal_lm(name: str, dtype, attn_implementation: str = "sdpa", device: str = "cpu"):
    """The bare model of ``name`` (a folder, `smollm2` or `random-smollm2`) in ``dtype``, on ``device``."""
    if name == RANDOM_SMOLLM2:
        return random_smollm2(dtype, attn_implementation, device)
    from transformers import AutoModelForCausalLM

    path = resolve(name)
    weights = resolve(adapter_base(path)) if (path / ADAPTER_CONFIG).is_file() else path
    return AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, attn_implementation=attn_implementation).to(device)


def load_model(name: str = DEFAULT_MODEL, *, dtype=None, attn_implementation: str = "sdpa", device: str | None = None,
               layers: int | None = None):
    """(model, tokenizer) in eval mode on ``device`` (CUDA when present).

    ``dtype`` (see :func:`resolve_dtype`): bf16 on CUDA and fp32 on CPU by default; ``"auto"`` picks bf16
    where the hardware has bf16 arithmetic (CUDA, or a CPU with AVX-512 BF16 / AMX); ``"fp32"``/``"bf16"``
    or a torch dtype as asked. ``layers``: keep only the first N decoder layers. `random-smollm2` comes
    without a tokenizer (None).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(dtype, device)
    if name == RANDOM_SMOLLM2:
        model = random_smollm2(dtype, attn_implementation, device)
        _keep_layers(model, layers)
        return model.eval(), None
    path = resolve(name)
    adapter = (path / ADAPTER_CONFIG).is_file()
    weights = resolve(adapter_base(path)) if adapter else path
    try:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, attn_implementation=attn_implementation)
        if adapter:
            from peft import PeftModel

            # Merged for inference: scoring then runs the plain model at full speed.
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot load a causal language model: {exc}") from None
    _keep_layers(model, layers)
    model.to(device).eval()
    return model, load_tokenizer(str(path if (path / "tokenizer.json").is_file() else weights))


def _keep_layers(model, layers: int | None) -> None:
    if layers is not None:
        from recbrew.models.depth import truncate  # lazy: loads torch

        truncate(model, layers)
