"""Frozen-layer activation cache for top-layer LoRA.

With LoRA on the top N layers only (``lora_layers``), the layers below never change during training,
so the hidden states entering the lowest adapted layer are a fixed function of each training unit.
The first epoch computes them without autograd and keeps them; every later epoch reads them back
and runs only the adapted layers. An epoch after the first then costs about N / L of a forward and
backward pass, which is what makes several epochs over a few hundred examples affordable on a CPU.

The cache works by replacing the ``forward`` of the frozen layers on their instances (the modules,
their names and their weights are untouched): the lowest layer returns the cached activations of the
batch's units, or computes them through every frozen layer; the others pass their input through.
A forward that names no units (validation scoring, export) runs the frozen layers as usual.

With ``dtype=torch.bfloat16`` the frozen layers compute (and the cache stores) in bf16 while the adapted
layers keep fp32: the frozen layers are most of the compute and take no gradient, so on hardware with
bf16 arithmetic this about halves their cost without touching the precision of training.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from recbrew.errors import ConfigError, UserError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers (the ``ModuleList`` of ``num_hidden_layers`` modules)."""
    from recbrew.models.depth import decoder_stack  # lazy: loads torch

    return decoder_stack(model)


def _cast(value, dtype):
    """Floating tensors (also inside tuples, e.g. rotary cos/sin) in ``dtype``; everything else as it is."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value


def _pass_through(hidden_states, *args, **kwargs):
    return hidden_states


class FrozenLayerCache:
    """Caches the output of ``layers[:first_adapted]`` per training unit (see the module docstring)."""

    def __init__(self, layers: nn.ModuleList, first_adapted: int, dtype: torch.dtype | None = None):
        if not 0 < first_adapted < len(layers):
            raise ConfigError(f"cache_frozen: the lowest adapted layer must be 1..{len(layers) - 1}, "
                              f"not {first_adapted} (nothing below it to cache)")
        self.layers, self.first = layers, first_adapted
        #: The dtype the frozen layers compute and the cache stores in (None: the model's own).
        self.dtype = dtype
        self._weights_dtype: torch.dtype | None = None
        self.store: dict[int, torch.Tensor] = {}
        self.hits = self.misses = 0
        self._keys: list[int] | None = None
        self._lengths: list[int] | None = None
        self._bottom = None

    # Installation ----------------------------------------------------------------------------------
    def install(self) -> FrozenLayerCache:
        if self._bottom is not None:
            return self
        trainable = [i for i in range(self.first) if any(p.requires_grad for p in self.layers[i].parameters())]
        if trainable:
            raise ConfigError(f"cache_frozen: layers {trainable} below the adapted ones have trainable weights")
        self._bottom = [layer.forward for layer in self.layers[:self.first]]
        if self.dtype is not None:
            self._weights_dtype = next(self.layers[0].parameters()).dtype
            for layer in self.layers[:self.first]:
                layer.to(self.dtype)
        self.layers[0].forward = self._run_bottom
        for layer in self.layers[1:self.first]:
            layer.forward = _pass_through
        return self

    def uninstall(self) -> None:
        if self._bottom is None:
            return
        for layer in self.layers[:self.first]:
            del layer.forward  # the instance attribute: the class's forward applies again
            if self._weights_dtype is not None:
                layer.to(self._weights_dtype)
        self._bottom = None

    @contextmanager
    def batch(self, keys: Sequence[int], lengths: Sequence[int]):
        """Within this block the model's forwards are of these units (row i: unit keys[i], lengths[i] tokens)."""
        self._keys, self._lengths = [int(k) for k in keys], [int(n) for n in lengths]
        try:
            yield self
        finally:
            self._keys = self._lengths = None

    # The frozen layers -----------------------------------------------------------------------------
    def _run_bottom(self, hidden_states, *args, **kwargs):
        keys = self._keys
        if keys is not None and len(keys) != hidden_states.shape[0]:
            raise RuntimeError(f"frozen cache: {len(keys)} unit keys for a batch of {hidden_states.shape[0]} rows")
        if keys is not None and all(k in self.store for k in keys):
            self.hits += len(keys)
            out = hidden_states.new_zeros(hidden_states.shape)
            for row, key in enumerate(keys):
                cached = self.store[key]
                out[row, :cached.shape[0]] = cached.to(out.dtype)
            return out
        if keys is None:
            return self._through_bottom(hidden_states, args, kwargs)
        with torch.no_grad():
            out = self._through_bottom(hidden_states, args, kwargs)
        for row, (key, n) in enumerate(zip(keys, self._lengths, strict=True)):
            if key not in self.store:
                self.store[key] = out[row, :n].detach().to(self.dtype or out.dtype).clone()
                self.misses += 1
        return out

    def _through_bottom(self, hidden_states, args, kwargs):
        if self.dtype is not None and hidden_states.dtype != self.dtype:
            out_dtype = hidden_states.dtype
            args, kwargs = _cast(args, self.dtype), {k: _cast(v, self.dtype) for k, v in kwargs.items()}
            return self._run_layers(hidden_states.to(self.dtype), args, kwargs).to(out_dtype)
        return self._run_layers(hidden_states, args, kwargs)

    def _run_layers(self, hidden_states, args, kwargs):
        for forward in self._bottom:
            hidden_states = forward(hidden_states, *args, **kwargs)
            if not isinstance(hidden_states, torch.Tensor):
                raise UserError("cache_frozen: this model's decoder layers do not return a tensor; the cache "
                                "supports models whose layers do (Llama family: SmolLM2, recbrew-tiny)")
        return hidden_states

    # Reporting -------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.store.values())

    def summary(self) -> dict:
        return {"units": len(self.store), "megabytes": round(self.nbytes / 2**20, 1), "hits": self.hits,
                "misses": self.misses, "first_adapted_layer": self.first,
                "dtype": str(self.dtype or self._weights_dtype or "model").replace("torch.", "")}
