"""Multi-item attention as a Hugging Face attention function (the kernels apart from their transformers wiring).

:func:`register` adds :data:`ATTN_NAME` to transformers' attention registry (and SDPA's mask builder under the
same name). A model whose ``attn_implementation`` is :data:`ATTN_NAME` behaves exactly like SDPA unless a
forward call carries ``multi_item=(prefix_len, segment_lens)``; then its attention layers call
:func:`recbrew.kernels.multi_item_attention.multi_item_attention` with that layout.
"""

from __future__ import annotations

from recbrew.kernels.multi_item_attention import multi_item_attention

ATTN_NAME = "recbrew_multi_item"


def multi_item_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function transformers' attention layers call: SDPA, or multi-item attention when given a layout."""
    layout = kwargs.get("multi_item")
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if dropout:
        raise ValueError("multi-item attention has no attention dropout; set the model's attention_dropout to 0")
    prefix_len, segment_lens = layout
    out = multi_item_attention(query, key, value, prefix_len, segment_lens, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make :data:`ATTN_NAME` available to Hugging Face models (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, multi_item_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME
