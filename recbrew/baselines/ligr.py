"""LiGR: a transformer ranker with gated residuals over the member's history and the candidates.

One sequence per request:

    [context] [history_1 ... history_L] [candidate_1 ... candidate_K]

The context token carries the member profile, task, surface and dense features; history tokens
carry (item, item categoricals, action, surface, age); candidate tokens carry (item, categoricals,
slot) and the context's fields. Context and history attend to context and history only, so the history is encoded once per
request whatever the candidates. Each candidate attends to the context, the whole history and
itself, plus, with set-wise attention on, to the other candidates of its request. All candidates
of a request are scored in the same pass; without set-wise attention each candidate's score equals
the score it gets alone.

Each block is pre-norm with a learned sigmoid gate on each residual branch ("learned normalization"):

    h'  = h  + sigmoid(W_g1 h)  * MHA(LN(h))
    h'' = h' + sigmoid(W_g2 h') * SwiGLU(LN(h'))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recbrew.baselines.embedding import FeatureEmbeddings
from recbrew.baselines.features import DENSE, FeatureSpace
from recbrew.baselines.gating import GatedMLP
from recbrew.baselines.heads import TaskHeads


@dataclass
class LiGRConfig:
    """LiGR's sizes and its set-wise attention switch."""

    #: Embedding size of every input field (tokens are projections of their fields).
    field_dim: int = 16
    #: Transformer width.
    dim: int = 64
    layers: int = 2
    heads: int = 4
    #: SwiGLU hidden size = ffn_mult * dim.
    ffn_mult: float = 2.0
    #: Candidates of one request attend to each other.
    setwise: bool = False
    #: Hidden size of the layer between a candidate's output token and the task heads.
    head_hidden: int = 64
    dropout: float = 0.1
    #: Rate at which ids are replaced by 'unknown' while training (cold-start robustness).
    id_dropout: float = 0.3


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GatedBlock(nn.Module):
    """Pre-norm transformer block with sigmoid-gated residual branches."""

    def __init__(self, dim: int, heads: int, ffn_mult: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.gate1, self.gate2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ffn = SwiGLU(dim, int(ffn_mult * dim))
        self.dropout = nn.Dropout(dropout)

    def attention(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        return self.out(y.transpose(1, 2).reshape(b, s, d))

    def forward(self, h: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        h = h + torch.sigmoid(self.gate1(h)) * self.dropout(self.attention(self.ln1(h), allowed))
        return h + torch.sigmoid(self.gate2(h)) * self.dropout(self.ffn(self.ln2(h)))


def attention_mask(hist_mask: torch.Tensor, cand_mask: torch.Tensor, setwise: bool) -> torch.Tensor:
    """[B, S, S] bool, True where query (row) may attend to key (column); S = 1 + L + K."""
    b, length = hist_mask.shape
    k = cand_mask.shape[1]
    s = 1 + length + k
    context_and_history = torch.cat([torch.ones(b, 1, dtype=torch.bool), hist_mask], 1)  # [B, 1 + L]
    allowed = torch.zeros(b, s, s, dtype=torch.bool)
    allowed[:, :, : 1 + length] = context_and_history[:, None, :]
    cand = slice(1 + length, s)
    if setwise:
        allowed[:, cand, cand] = cand_mask[:, None, :] | torch.eye(k, dtype=torch.bool)
    else:
        allowed[:, cand, cand] = torch.eye(k, dtype=torch.bool)
    return allowed


class LiGR(nn.Module):
    def __init__(self, cfg: LiGRConfig, space: FeatureSpace):
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(f"LiGR dim {cfg.dim} must be a multiple of heads {cfg.heads}")
        self.config = cfg
        e = cfg.field_dim
        self.embeddings = FeatureEmbeddings(space, e, cfg.id_dropout)
        self.context = nn.Linear(FeatureEmbeddings.MEMBER_FIELDS * e + DENSE, cfg.dim)
        self.history = nn.Linear(FeatureEmbeddings.HISTORY_FIELDS * e, cfg.dim)
        # A candidate token sees the request context too, so its first FFN can cross member and item.
        self.candidate = nn.Linear(self.embeddings.candidate_dim() + FeatureEmbeddings.MEMBER_FIELDS * e + DENSE,
                                   cfg.dim)
        self.blocks = nn.ModuleList(GatedBlock(cfg.dim, cfg.heads, cfg.ffn_mult, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.mlp = GatedMLP(cfg.dim, [cfg.head_hidden], gating=False, dropout=cfg.dropout)
        self.heads = TaskHeads(self.mlp.out_dim, space.num_tasks)

    def forward(self, b: dict) -> torch.Tensor:
        """Logits [B, K] of every candidate slot (padding slots hold 0), all from one pass."""
        emb = self.embeddings
        request = torch.cat([emb.member_fields(b).flatten(1), b["dense"]], 1)
        context = self.context(request)
        history = self.history(emb.history_fields(b).flatten(2))
        cand_fields = emb.candidate_vector(b)
        k = cand_fields.shape[1]
        cands = self.candidate(torch.cat([cand_fields, request[:, None].expand(-1, k, -1)], 2))
        h = torch.cat([context[:, None], history, cands], 1)
        allowed = attention_mask(b["hist_mask"], b["cand_mask"], self.config.setwise)
        for block in self.blocks:
            h = block(h, allowed)
        out = self.mlp(self.ln_f(h[:, -k:]))
        logits = self.heads(out, b["task"][:, None].expand(-1, k))
        return logits * b["cand_mask"]
