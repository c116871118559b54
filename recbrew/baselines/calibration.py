"""LiRank's isotonic calibration layer, trained jointly with the ranker.

The logit range [lo, hi) is cut into buckets of a fixed step; v_i is how much of bucket i the
logit fills (0 below it, ``step`` above it). The calibrated logit is

    c(x) = sum_i ReLU(w_i + e_i) * v_i(x) + b,

where e_i comes from calibration features (here: the request's surface). Every v_i is
non-decreasing in x and every weight ReLU(.) is non-negative, so c is monotone for any
parameters: calibration never changes the order of two candidates of the same surface. With
w_i = 1, e_i = 0 and b = lo the layer starts as the identity on [lo, hi).
"""

from __future__ import annotations

import torch
from torch import nn


class IsotonicCalibration(nn.Module):
    """Monotone piecewise-linear map of a logit, with per-bucket offsets from a categorical feature."""

    def __init__(self, features: int, lo: float = -8.0, hi: float = 8.0, step: float = 0.5):
        super().__init__()
        self.register_buffer("edges", torch.arange(lo, hi, step))
        self.step = step
        buckets = len(self.edges)
        self.weight = nn.Parameter(torch.ones(buckets))
        self.offsets = nn.Embedding(features, buckets)
        nn.init.zeros_(self.offsets.weight)
        self.bias = nn.Parameter(torch.tensor(float(lo)))

    def forward(self, logit: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """``logit`` [...], ``feature`` [...] (long) -> calibrated logit [...]."""
        filled = (logit[..., None] - self.edges).clamp(0.0, self.step)
        increments = torch.relu(self.weight + self.offsets(feature))
        return (increments * filled).sum(-1) + self.bias
