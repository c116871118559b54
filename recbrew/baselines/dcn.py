"""DCNv2, the plain baseline: embedded fields -> low-rank cross net -> MLP -> one logit.

Fields: member id and profile, task and surface, candidate id, categoricals, item-store fields,
age and slot, member-candidate match indicators, the mean of the member's history tokens, and the
dense request features. No history module, no gating, no
calibration and a single head (the task is an input field): what LiRank adds is measured against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from recbrew.baselines.cross import CrossNet
from recbrew.baselines.embedding import FeatureEmbeddings
from recbrew.baselines.features import DENSE, FeatureSpace
from recbrew.baselines.gating import GatedMLP


@dataclass
class DCNv2Config:
    """Plain DCNv2 (stacked: cross net, then MLP)."""

    #: Embedding size of every field.
    dim: int = 16
    cross_layers: int = 2
    #: Rank r of each cross layer's U V^T.
    cross_rank: int = 32
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.1
    #: Rate at which ids are replaced by 'unknown' while training (cold-start robustness).
    id_dropout: float = 0.3


def valid_candidates(b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(request index, slot index) of every real candidate of the batch."""
    return b["cand_mask"].nonzero(as_tuple=True)


def scatter_logits(b: dict, bi: torch.Tensor, ki: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Per-candidate logits back to [B, K] (padding slots hold 0)."""
    out = logit.new_zeros(b["cand_mask"].shape)
    out[bi, ki] = logit
    return out


def pooled_history(emb: FeatureEmbeddings, b: dict) -> torch.Tensor:
    """[B, HISTORY_FIELDS * dim]: mean of the member's history tokens (zeros without history)."""
    tokens = emb.history_fields(b).flatten(2)
    mask = b["hist_mask"][..., None].float()
    return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class DCNv2(nn.Module):
    def __init__(self, cfg: DCNv2Config, space: FeatureSpace):
        super().__init__()
        self.config = cfg
        self.embeddings = FeatureEmbeddings(space, cfg.dim, cfg.id_dropout)
        fields = FeatureEmbeddings.MEMBER_FIELDS + FeatureEmbeddings.HISTORY_FIELDS
        x_dim = fields * cfg.dim + DENSE + self.embeddings.candidate_dim()
        self.cross = CrossNet(x_dim, cfg.cross_layers, cfg.cross_rank)
        self.mlp = GatedMLP(self.cross.out_dim, cfg.hidden, gating=False, dropout=cfg.dropout)
        self.head = nn.Linear(self.mlp.out_dim, 1)

    def forward(self, b: dict) -> torch.Tensor:
        """Logits [B, K] of every candidate slot (padding slots hold 0)."""
        bi, ki = valid_candidates(b)
        request = torch.cat([self.embeddings.member_fields(b).flatten(1), pooled_history(self.embeddings, b),
                             b["dense"]], 1)
        cand = self.embeddings.candidate_vector(b)[bi, ki]
        x0 = torch.cat([request[bi], cand], 1)
        return scatter_logits(b, bi, ki, self.head(self.mlp(self.cross(x0)))[:, 0])
