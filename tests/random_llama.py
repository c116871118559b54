"""The small random Llama that the scoring, kernel and training tests share: 2 decoder layers of width 64, 4 query
and 2 key-value heads, seeded, with recbrew's multi-item attention registered unless asked otherwise."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from recbrew.kernels.hf_attention import register


def small_llama(vocab: int = 131, layers: int = 2, *, seed: int = 0, hidden: int = 64, intermediate: int = 96,
                positions: int = 256, multi_item: bool = True) -> LlamaForCausalLM:
    """A fresh model: the same weights for the same arguments (``torch.manual_seed(seed)`` right before it)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=positions)
    model = LlamaForCausalLM(config)
    if multi_item:
        model.set_attn_implementation(register())
    return model
