"""Keep the first N decoder layers of a model (``layers: N``).

On a CPU the cost of a forward pass grows with depth, and the middle of a pretrained network carries
as much ranking signal as its top (see DESIGN.md): a fine-tune of the first N layers with the model's
own final norm and LM head is several times cheaper. The truncated model is a plain Hugging Face
model with ``num_hidden_layers = N``, so everything that loads a model folder (HFScorer, vLLM,
`recbrew serve`) loads it unchanged.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from recbrew.data.io import build_folder_once
from recbrew.errors import ConfigError


def decoder_stack(model: nn.Module) -> nn.ModuleList:
    """The model's list of ``num_hidden_layers`` decoder layers."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and n is not None and len(m) == n]
    if len(stacks) != 1:
        raise ConfigError("layers: cannot find the model's decoder layers (one list of num_hidden_layers modules); "
                          "it supports decoder models such as SmolLM2, Llama, Qwen and recbrew-tiny")
    return stacks[0]


def truncate(model: nn.Module, layers: int) -> nn.Module:
    """``model`` with only its first ``layers`` decoder layers (in place; returns it)."""
    stack = decoder_stack(model)
    total = len(stack)
    if not 1 <= layers <= total:
        raise ConfigError(f"layers: {layers} is out of range; the model has {total} decoder layers")
    if layers == total:
        return model
    del stack[layers:]
    config = model.config
    config.num_hidden_layers = layers
    # Per-layer settings (attention type, sliding windows) follow the kept layers.
    for key in ("layer_types", "sliding_window_pattern_list"):
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == total:
            setattr(config, key, value[:layers])
    return model


def truncated_copy(source: str | Path, layers: int, dest: Path) -> Path:
    """Write the first ``layers`` layers of the model in ``source`` as a plain HF folder at ``dest`` (once).

    Written aside and renamed, so an interrupted run never leaves a half-written folder.
    """
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = dest / "recbrew_depth.json"
    wanted = {"source": str(source), "layers": layers}

    def done() -> bool:
        return marker.is_file() and json.loads(marker.read_text()) == wanted

    def build(tmp: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        truncate(model, layers).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
        (tmp / "recbrew_depth.json").write_text(json.dumps(wanted))

    # One temp folder per process: ranks of a distributed run may all get here at once.
    build_folder_once(dest, build, done)
    return dest
