"""LiRank: LinkedIn's large-scale ranking model, as far as the paper describes it.

    fields (QR ids, hashed categoricals, dense)  ⊕  TransAct(history ⊕ candidate)
        -> Residual DCN (attention cross net ∥ low-rank cross net)
        -> MLP with dense gating
        -> multi-task heads (one per task, plus a shared one)
        -> isotonic calibration (monotone, offsets per surface)

Every block can be switched off in the config, which is how the ablation measures each one; with
rdcn, dense_gating, calibration and history off it is a DCNv2 with task heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from recbrew.baselines.calibration import IsotonicCalibration
from recbrew.baselines.cross import CrossNet, ResidualCrossNet
from recbrew.baselines.dcn import pooled_history, scatter_logits, valid_candidates
from recbrew.baselines.embedding import FeatureEmbeddings
from recbrew.baselines.features import DENSE, SMALL_BUCKETS, FeatureSpace
from recbrew.baselines.gating import GatedMLP
from recbrew.baselines.heads import TaskHeads
from recbrew.baselines.transact import TransAct


@dataclass
class LiRankConfig:
    """LiRank's blocks and sizes."""

    #: Embedding size of every field.
    dim: int = 16
    cross_layers: int = 2
    #: Rank r of the low-rank cross kernels.
    cross_rank: int = 32
    #: Residual DCN (attention cross net in parallel with the plain one); False: DCNv2 cross layers.
    rdcn: bool = True
    #: The low-rank space is read as cross_rank / attention_token_dim tokens for the attention.
    attention_token_dim: int = 4
    #: Softmax temperature tau of the cross attention.
    attention_temperature: float = 1.0
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    #: h * sigmoid(W h) on every hidden layer.
    dense_gating: bool = True
    #: Isotonic calibration layer trained jointly (offsets per surface).
    calibration: bool = True
    calibration_step: float = 0.5
    #: Calibrated logits live in [-calibration_range, calibration_range].
    calibration_range: float = 8.0
    #: TransAct history module; False: the mean of the history tokens as a field.
    history: bool = True
    history_dim: int = 32
    history_layers: int = 1
    history_heads: int = 2
    #: Steps kept as they are next to the max-pool.
    history_last: int = 3
    dropout: float = 0.1
    #: Rate at which ids are replaced by 'unknown' while training (cold-start robustness).
    id_dropout: float = 0.3


class LiRank(nn.Module):
    def __init__(self, cfg: LiRankConfig, space: FeatureSpace):
        super().__init__()
        self.config = cfg
        d = cfg.dim
        self.embeddings = FeatureEmbeddings(space, d, cfg.id_dropout)
        cand_dim = self.embeddings.candidate_dim()
        x_dim = FeatureEmbeddings.MEMBER_FIELDS * d + cand_dim + DENSE
        if cfg.history:
            self.history = TransAct(FeatureEmbeddings.HISTORY_FIELDS * d, cand_dim, cfg.history_dim,
                                    cfg.history_layers, cfg.history_heads, cfg.history_last, cfg.dropout)
            x_dim += self.history.out_dim
        else:
            self.history = None
            x_dim += FeatureEmbeddings.HISTORY_FIELDS * d
        if cfg.rdcn:
            self.cross = ResidualCrossNet(x_dim, cfg.cross_layers, cfg.cross_rank, cfg.attention_token_dim,
                                          cfg.attention_temperature)
        else:
            self.cross = CrossNet(x_dim, cfg.cross_layers, cfg.cross_rank)
        self.mlp = GatedMLP(self.cross.out_dim, cfg.hidden, gating=cfg.dense_gating, dropout=cfg.dropout)
        self.heads = TaskHeads(self.mlp.out_dim, space.num_tasks)
        self.calibration = (IsotonicCalibration(SMALL_BUCKETS, -cfg.calibration_range, cfg.calibration_range,
                                                cfg.calibration_step) if cfg.calibration else None)

    def forward(self, b: dict, calibrate: bool = True) -> torch.Tensor:
        """Logits [B, K] of every candidate slot (padding slots hold 0); ``calibrate=False`` skips the
        calibration layer (the raw head logit)."""
        bi, ki, h = self.represent(b)
        return scatter_logits(b, bi, ki, self.head_logit(b, bi, h, calibrate=calibrate))

    def head_logit(self, b: dict, bi: torch.Tensor, h: torch.Tensor, offset: torch.Tensor | None = None,
                   calibrate: bool = True) -> torch.Tensor:
        """Task-head logit of representations ``h`` (+ ``offset`` before calibration: a sampled change of the
        last layer, as Thompson sampling draws it), calibrated unless ``calibrate=False``."""
        logit = self.heads(h, b["task"][bi])
        if offset is not None:
            logit = logit + offset
        if self.calibration is not None and calibrate:
            logit = self.calibration(logit, b["surface"][bi])
        return logit

    def represent(self, b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(request index, slot index, final representation [N, hidden[-1]]) of every real candidate: the input
        of the task heads, on which a Bayesian last layer (neural-linear bandit) puts its posterior."""
        bi, ki = valid_candidates(b)
        emb = self.embeddings
        cand = emb.candidate_vector(b)[bi, ki]
        parts = [emb.member_fields(b).flatten(1)[bi], cand, b["dense"][bi]]
        if self.history is not None:
            tokens = emb.history_fields(b).flatten(2)
            parts.append(self.history(tokens[bi], b["hist_mask"][bi], cand))
        else:
            parts.append(pooled_history(emb, b)[bi])
        return bi, ki, self.mlp(self.cross(torch.cat(parts, 1)))
