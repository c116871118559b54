"""The top decoder layer computed at the answer positions only.

The loss reads the model's output at the answer positions and nowhere else, and the top layer is the
last place positions mix. So the top layer needs its keys and values at every position (what the
answer positions attend to) but its queries, attention output, MLP and residuals only at the
answer positions: about one position per candidate instead of every token. On a CPU that makes the
top layer close to free, in the forward and in the backward pass, while the loss and every gradient
stay those of the full layer (a test checks both, packed and unpacked).

It replaces ``forward`` on the top layer's instance (module names, weights and PEFT adapters are
untouched: the projections are called as modules, so LoRA applies) and is active only inside
`AnswerOnlyTopLayer.positions(rows, cols)`; any other forward (generation, export) runs the layer as
usual. Training uses it for the loss; `HFScorer` uses it on CPU for scoring, where the answer
positions are all it reads too. It supports Llama-family layers (SmolLM2, Llama, Qwen2, recbrew-tiny): an input norm,
``self_attn`` with q/k/v/o projections and rotary positions, a post-attention norm and an MLP.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

from recbrew.errors import ConfigError

_PARTS = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


def supports(layer: nn.Module) -> bool:
    attn = getattr(layer, "self_attn", None)
    return all(hasattr(layer, p) for p in _PARTS) and attn is not None and all(hasattr(attn, p) for p in _PROJ) \
        and hasattr(attn, "head_dim") and hasattr(attn, "scaling")


def allowed_keys(rows: torch.Tensor, cols: torch.Tensor, width: int, layout=None) -> torch.Tensor:
    """[M, width] bool: the keys the query at (rows[i], cols[i]) attends to.

    Causal without a layout. With a multi-item layout ``(prefix_lens, segment_lens)`` (one entry per batch
    row, or an int and a list for a batch of one): the row's prefix plus its own segment up to the query.
    A row whose entry is a list of prefixes (and of segment-length lists) packs several documents one
    after another: a query sees its own document only.
    """
    keys = torch.arange(width, device=cols.device)
    causal = keys[None, :] <= cols[:, None]
    if layout is None:
        return causal
    prefix_lens, segment_lens = layout
    if isinstance(prefix_lens, int):
        prefix_lens, segment_lens = [prefix_lens], [segment_lens]
    return _layout_allowed(rows, cols, keys, prefix_lens, segment_lens)


def _layout_allowed(rows, cols, keys, prefix_lens, segment_lens) -> torch.Tensor:
    """`allowed_keys` under a layout: the query's document prefix plus its own segment up to the query; a query
    inside a prefix sees that prefix causally. A row with one document may give it as an int and a list."""
    lo_prefix = torch.zeros(len(rows), dtype=torch.long)
    hi_prefix = torch.zeros(len(rows), dtype=torch.long)
    lo_own = torch.zeros(len(rows), dtype=torch.long)
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        docs_p, docs_s = prefix_lens[r], segment_lens[r]
        if isinstance(docs_p, int):
            docs_p, docs_s = [docs_p], [docs_s]
        start = 0
        for p, segs in zip(docs_p, docs_s, strict=True):
            end = start + p + sum(segs)
            if c < end:
                break
            start = end
        seg = start + p
        lo_prefix[i], hi_prefix[i] = start, min(seg, c + 1)
        if c < seg:  # inside the prefix: no segment of its own
            lo_own[i] = c + 1
        else:
            for n in segs:
                if c < seg + n:
                    break
                seg += n
            lo_own[i] = seg
    lo_prefix, hi_prefix, lo_own = (t.to(cols.device) for t in (lo_prefix, hi_prefix, lo_own))
    in_prefix = (keys[None, :] >= lo_prefix[:, None]) & (keys[None, :] < hi_prefix[:, None])
    own = (keys[None, :] >= lo_own[:, None]) & (keys[None, :] <= cols[:, None])
    return in_prefix | own


class AnswerOnlyTopLayer:
    """Runs ``layer`` at the answer positions only while `positions` is active (see the module docstring)."""

    def __init__(self, layer: nn.Module):
        if not supports(layer):
            raise ConfigError("answer_only_top_layer: the model's layers are not Llama-style (input norm, "
                              "self_attn q/k/v/o projections, post-attention norm, MLP); set it to false")
        self.layer = layer
        self._where: tuple[torch.Tensor, torch.Tensor] | None = None
        self._installed = False
        self.calls = 0

    def install(self) -> AnswerOnlyTopLayer:
        if not self._installed:
            self._full = self.layer.forward
            self.layer.forward = self._forward
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            del self.layer.forward  # the instance attribute: the class's forward applies again
            self._installed = False

    @contextmanager
    def positions(self, rows: torch.Tensor, cols: torch.Tensor):
        """Within this block, forwards are of batches whose loss reads positions (rows[i], cols[i]) only."""
        pairs = torch.unique(torch.stack([rows.long(), cols.long()]), dim=1)
        self._where = (pairs[0], pairs[1])
        try:
            yield self
        finally:
            self._where = None

    def _forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                 position_embeddings=None, **kwargs):
        if self._where is None or past_key_values is not None or position_embeddings is None:
            return self._full(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                              past_key_values=past_key_values, use_cache=use_cache,
                              position_embeddings=position_embeddings, **kwargs)
        self.calls += 1
        layer, attn = self.layer, self.layer.self_attn
        rows, cols = (t.to(hidden_states.device) for t in self._where)
        batch, width, _ = hidden_states.shape
        d = attn.head_dim
        x = layer.input_layernorm(hidden_states)
        keys = attn.k_proj(x).view(batch, width, -1, d)  # [B, T, Hkv, d]
        values = attn.v_proj(x).view(batch, width, -1, d)
        cos, sin = position_embeddings  # [B, T, d]
        keys = keys * cos[:, :, None] + rotate_half(keys) * sin[:, :, None]
        query = attn.q_proj(x[rows, cols]).view(len(rows), -1, d)  # [M, H, d]
        query = query * cos[rows, cols][:, None] + rotate_half(query) * sin[rows, cols][:, None]
        kv_heads = keys.shape[2]
        groups = query.shape[1] // kv_heads
        query = query.view(len(rows), kv_heads, groups, d)
        # Batches are right-padded, so the keys a query may see never include padding: causal (or the
        # multi-item layout) is the whole mask.
        allowed = allowed_keys(rows, cols, width, kwargs.get("multi_item"))
        # The queries of each sequence read that sequence's keys in place: gathering the keys per query would copy
        # [M, T] keys and values, which on long packed sequences costs more than the rest of the layer.
        parts = []
        for b in range(batch):
            sel = torch.nonzero(rows == b).squeeze(1)
            if len(sel):
                scores = torch.einsum("mkgd,tkd->mkgt", query[sel], keys[b]).float() * attn.scaling
                scores = scores.masked_fill(~allowed[sel][:, None, None, :], float("-inf"))
                weights = torch.softmax(scores, dim=-1).to(values.dtype)
                parts.append((sel, torch.einsum("mkgt,tkd->mkgd", weights, values[b])))
        out = query.new_empty(query.shape)
        for sel, part in parts:
            out = out.index_copy(0, sel, part)
        out = out.reshape(len(rows), -1)
        h = hidden_states[rows, cols] + attn.o_proj(out)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        # Only the answer positions are read after this layer; the others keep their input.
        return hidden_states.index_put((rows, cols), h)
