"""TransAct-style history module (LiRank): a small transformer over the member's last actions.

Each history token is the step's item ⊕ action (⊕ surface, age) concatenated with the candidate
being scored (early fusion), so attention sees which past actions concern items like this one.
The output is the max-pool over the sequence plus the last few steps, flattened. A learned start
token is always present, so members without history still get a defined output.
"""

from __future__ import annotations

import torch
from torch import nn


class TransAct(nn.Module):
    """[N, L, token_dim] history tokens + [N, cand_dim] candidate -> [N, out_dim]."""

    def __init__(self, token_dim: int, cand_dim: int, dim: int = 32, layers: int = 1, heads: int = 2,
                 last: int = 3, dropout: float = 0.0):
        super().__init__()
        self.project = nn.Linear(token_dim + cand_dim, dim)
        self.start = nn.Parameter(torch.zeros(dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.last = last
        self.out_dim = dim * (1 + last)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """``mask`` [N, L] is True on real steps (right-aligned: the last column is the latest)."""
        n, length, _ = tokens.shape
        fused = torch.cat([tokens, candidate[:, None].expand(n, length, -1)], -1)
        h = torch.cat([self.start.expand(n, 1, -1), self.project(fused)], 1)
        valid = torch.cat([torch.ones(n, 1, dtype=torch.bool), mask], 1)
        h = self.encoder(h, src_key_padding_mask=~valid)
        pooled = h.masked_fill(~valid[..., None], float("-inf")).max(1).values
        recent = (h[:, -self.last:] * valid[:, -self.last:, None]).flatten(1)
        return torch.cat([pooled, recent], -1)
