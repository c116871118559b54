"""Multi-task heads: one logit head per trained task, on top of a head shared by all tasks.

logit = <h, w_shared> + b_shared + <h, w_task> + b_task. Task index 0 stands for a task the model
never trained on (a T2 task); its head is fixed at zero, so it is scored by the shared head alone.
"""

from __future__ import annotations

import torch
from torch import nn


class TaskHeads(nn.Module):
    def __init__(self, in_dim: int, num_tasks: int):
        super().__init__()
        self.shared = nn.Linear(in_dim, 1)
        self.weight = nn.Embedding(num_tasks, in_dim, padding_idx=0)
        self.bias = nn.Embedding(num_tasks, 1, padding_idx=0)
        nn.init.zeros_(self.weight.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, h: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """``h`` [..., in_dim], ``task`` [...] -> logits [...]."""
        own = (h * self.weight(task)).sum(-1) + self.bias(task)[..., 0]
        return self.shared(h)[..., 0] + own
