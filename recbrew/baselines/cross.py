"""Feature crosses: DCNv2 low-rank cross layers and LiRank's Residual DCN.

DCNv2 layer:   x_{l+1} = x0 * (U (V^T x_l) + b) + x_l

Residual DCN (LiRank): the low-rank map V^T is replicated into query, key and value kernels. The
r-dim low-rank space is read as m tokens of r/m dims; scaled dot-product attention with
temperature tau mixes the value tokens,

    A = softmax(q k^T / (tau * sqrt(r/m))),   x_{l+1} = x0 * (U (A v) + b) + x_l,

and the skip connection x_l keeps each layer a residual update. With A = I the layer is exactly a
DCNv2 layer with V = V_value (the property tests check). The attention cross net runs in parallel
with a plain low-rank cross net; their outputs are concatenated.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LowRankCross(nn.Module):
    """One DCNv2 layer with a rank-``rank`` weight U V^T."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.V = nn.Linear(dim, rank, bias=False)
        self.U = nn.Linear(rank, dim)  # its bias is b_l
        nn.init.zeros_(self.U.bias)

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        return x0 * self.U(self.V(xl)) + xl


class AttentionCross(nn.Module):
    """One Residual-DCN layer: query/key/value low-rank kernels with attention between their tokens."""

    def __init__(self, dim: int, rank: int, token_dim: int = 4, temperature: float = 1.0):
        super().__init__()
        if rank % token_dim:
            raise ValueError(f"cross rank {rank} must be a multiple of the attention token size {token_dim}")
        self.tokens, self.token_dim, self.temperature = rank // token_dim, token_dim, temperature
        self.query = nn.Linear(dim, rank, bias=False)
        self.key = nn.Linear(dim, rank, bias=False)
        self.value = nn.Linear(dim, rank, bias=False)
        self.U = nn.Linear(rank, dim)
        nn.init.zeros_(self.U.bias)

    def attention(self, xl: torch.Tensor) -> torch.Tensor:
        """[N, m, m] attention over the m low-rank tokens."""
        q = self.query(xl).unflatten(-1, (self.tokens, self.token_dim))
        k = self.key(xl).unflatten(-1, (self.tokens, self.token_dim))
        scores = q @ k.transpose(-1, -2) / (self.temperature * math.sqrt(self.token_dim))
        return scores.softmax(-1)

    def forward(self, x0: torch.Tensor, xl: torch.Tensor, attn: torch.Tensor | None = None) -> torch.Tensor:
        """``attn`` replaces the computed attention matrix (tests pass the identity)."""
        a = self.attention(xl) if attn is None else attn
        v = self.value(xl).unflatten(-1, (self.tokens, self.token_dim))
        mixed = (a @ v).flatten(-2)
        return x0 * self.U(mixed) + xl


class CrossNet(nn.Module):
    """A stack of DCNv2 low-rank cross layers; output dim = input dim."""

    def __init__(self, dim: int, layers: int, rank: int):
        super().__init__()
        self.layers = nn.ModuleList(LowRankCross(dim, rank) for _ in range(layers))
        self.out_dim = dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


class ResidualCrossNet(nn.Module):
    """Attention cross net in parallel with a plain low-rank cross net; output dim = 2 x input dim."""

    def __init__(self, dim: int, layers: int, rank: int, token_dim: int = 4, temperature: float = 1.0):
        super().__init__()
        self.attention_layers = nn.ModuleList(AttentionCross(dim, rank, token_dim, temperature) for _ in range(layers))
        self.plain = CrossNet(dim, layers, rank)
        self.out_dim = 2 * dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.attention_layers:
            x = layer(x0, x)
        return torch.cat([x, self.plain(x0)], -1)
