"""Multi-item attention: a shared causal prefix followed by K candidate segments.

Each segment token attends to the whole prefix and to the earlier tokens of its own segment;
segments never see each other. Described by ``(prefix_len, segment_lens)`` instead of a dense
mask, so the work is O(P² + Σ S·(P+S)) instead of O(L²) for L = P + Σ S, and no L x L mask exists.

This file holds the pure-torch implementation (the CPU path and the reference the Triton kernel
is tested against) and its registration as a Hugging Face attention function: a model whose
``attn_implementation`` is :data:`ATTN_NAME` behaves exactly like SDPA unless a forward call
carries ``multi_item=(prefix_len, segment_lens)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ATTN_NAME = "recbrew_multi_item"


def _expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def multi_item_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len: int,
                               segment_lens: Sequence[int], scaling: float | None = None,
                               segments_per_chunk: int = 16) -> torch.Tensor:
    """Attention output [B, H, L, D] for q [B, H, L, D] and k, v [B, Hkv, L, D] (grouped-query allowed)."""
    b, h, total, d = q.shape
    groups = h // k.shape[1]
    k, v = _expand_kv(k, groups), _expand_kv(v, groups)
    scale = scaling if scaling is not None else d ** -0.5
    out = torch.empty_like(q)
    p = prefix_len
    if p:
        out[:, :, :p] = F.scaled_dot_product_attention(q[:, :, :p], k[:, :, :p], v[:, :, :p], is_causal=True,
                                                       scale=scale)
    starts = [p]
    for n in segment_lens:
        starts.append(starts[-1] + n)
    if starts[-1] != total:
        raise ValueError(f"prefix {p} + segments {sum(segment_lens)} != sequence length {total}")
    # Segments in chunks: each query block sees [prefix keys | own segment keys], padded to the longest.
    for c in range(0, len(segment_lens), segments_per_chunk):
        lens = list(segment_lens[c:c + segments_per_chunk])
        width = max(lens)
        n = len(lens)
        index = torch.zeros(n, width, dtype=torch.long)
        valid = torch.zeros(n, width, dtype=torch.bool)
        for j, length in enumerate(lens):
            index[j, :length] = torch.arange(starts[c + j], starts[c + j] + length)
            valid[j, :length] = True
        flat = index.reshape(-1)
        # [B, n, H, width, D] -> [B*n, H, width, D]
        qs = q[:, :, flat].reshape(b, h, n, width, d).transpose(1, 2).reshape(b * n, h, width, d)
        ks = k[:, :, flat].reshape(b, h, n, width, d).transpose(1, 2).reshape(b * n, h, width, d)
        vs = v[:, :, flat].reshape(b, h, n, width, d).transpose(1, 2).reshape(b * n, h, width, d)
        kp = k[:, :, :p].unsqueeze(1).expand(b, n, h, p, d).reshape(b * n, h, p, d)
        vp = v[:, :, :p].unsqueeze(1).expand(b, n, h, p, d).reshape(b * n, h, p, d)
        own = torch.tril(torch.ones(width, width, dtype=torch.bool))[None] & valid[:, None, :]
        # Padded query rows see the prefix only (never an empty row), and are dropped below.
        mask = torch.cat([torch.ones(n, width, p, dtype=torch.bool), own], dim=2)
        mask[:, :, p:] &= valid[:, :, None]
        if p == 0:
            mask[:, :, 0] |= ~valid  # keep every row non-empty
        mask = mask.unsqueeze(1).repeat(b, 1, 1, 1)
        o = F.scaled_dot_product_attention(qs, torch.cat([kp, ks], 2), torch.cat([vp, vs], 2), attn_mask=mask,
                                           scale=scale)
        o = o.reshape(b, n, h, width, d).transpose(1, 2).reshape(b, h, n * width, d)
        keep = valid.reshape(-1)
        out[:, :, flat[keep]] = o[:, :, keep]
    return out


def multi_item_attention_reference(q, k, v, prefix_len: int, segment_lens: Sequence[int], scaling=None):
    """The same result from a dense [L, L] mask (slow; for tests)."""
    total = q.shape[2]
    seg = torch.full((total,), -1)
    pos = prefix_len
    for j, n in enumerate(segment_lens):
        seg[pos:pos + n] = j
        pos += n
    idx = torch.arange(total)
    allowed = (idx[None] <= idx[:, None]) & ((seg[None] == -1) | (seg[None] == seg[:, None]))
    groups = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, _expand_kv(k, groups), _expand_kv(v, groups), attn_mask=allowed,
                                          scale=scaling)


def _hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    layout = kwargs.get("multi_item")
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    prefix_len, segment_lens = layout
    out = multi_item_attention_torch(query, key, value, prefix_len, segment_lens, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make :data:`ATTN_NAME` available to Hugging Face models (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, _hf_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME
