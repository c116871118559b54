"""MLP with LiRank's dense gating: every hidden layer's output h becomes h * sigmoid(W_g h)."""

from __future__ import annotations

import torch
from torch import nn


class GatedMLP(nn.Module):
    """Linear -> ReLU (-> dense gate) -> dropout per hidden size; ``gating=False`` is a plain MLP."""

    def __init__(self, in_dim: int, hidden: list[int] | tuple[int, ...], gating: bool = True, dropout: float = 0.0):
        super().__init__()
        self.linears = nn.ModuleList()
        self.gates = nn.ModuleList() if gating else None
        for size in hidden:
            self.linears.append(nn.Linear(in_dim, size))
            if gating:
                self.gates.append(nn.Linear(size, size))
            in_dim = size
        self.dropout = nn.Dropout(dropout)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, linear in enumerate(self.linears):
            x = torch.relu(linear(x))
            if self.gates is not None:
                x = x * torch.sigmoid(self.gates[i](x))
            x = self.dropout(x)
        return x
