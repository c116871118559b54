"""Embedding tables of the classic rankers: QR-compressed ids and hashed categoricals.

QR (quotient-remainder) compression: id index i is embedded as Q[i // R] + R[i % R] (sum
aggregation). Every id gets a distinct pair of rows while the tables keep ceil(N/R) + R rows
instead of N. ``FeatureEmbeddings`` holds every table a ranker needs and returns field stacks;
the rankers differ only in what they do with them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recbrew.baselines.features import (
    ITEM_AGE_BUCKETS,
    ITEM_FIELDS,
    MATCH_FIELDS,
    MAX_SLOTS,
    MEMBER_FIELDS,
    SMALL_BUCKETS,
    STORE_FIELDS,
    FeatureSpace,
    qr_split,
)


def _init(table: nn.Embedding, std: float = 0.05) -> nn.Embedding:
    nn.init.normal_(table.weight, std=std)
    return table


class QREmbedding(nn.Module):
    """Q[i // R] + R[i % R]: ``num`` ids in ceil(num / R) + R rows."""

    def __init__(self, num: int, dim: int, remainder: int):
        super().__init__()
        self.num, self.remainder = num, remainder
        self.quotient_table = _init(nn.Embedding(math.ceil(num / remainder), dim))
        self.remainder_table = _init(nn.Embedding(remainder, dim))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        q, r = qr_split(index, self.remainder)
        return self.quotient_table(q) + self.remainder_table(r)


class IdEmbedding(nn.Module):
    """Id index -> vector, QR-compressed or one row per id; drops ids to 'unknown' at rate ``dropout``
    while training so that the unknown row (cold-start members, new items) learns something."""

    def __init__(self, num: int, dim: int, qr: bool, remainder: int, dropout: float = 0.0):
        super().__init__()
        self.table = QREmbedding(num, dim, remainder) if qr else _init(nn.Embedding(num, dim))
        self.dropout = dropout

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            index = index.masked_fill(torch.rand(index.shape) < self.dropout, 0)
        return self.table(index)


class FieldEmbedding(nn.Module):
    """Several hashed fields in one table (field f owns rows [f * buckets, (f + 1) * buckets))."""

    def __init__(self, fields: int, buckets: int, dim: int):
        super().__init__()
        self.table = _init(nn.Embedding(fields * buckets, dim))
        self.register_buffer("offsets", torch.arange(fields) * buckets, persistent=False)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """[..., fields] -> [..., fields, dim]."""
        return self.table(index + self.offsets)


class FeatureEmbeddings(nn.Module):
    """Every table of a ranker; methods return the embedded fields of the member, candidates and history."""

    def __init__(self, space: FeatureSpace, dim: int, id_dropout: float = 0.0):
        super().__init__()
        cfg = space.config
        rem = space.remainder
        self.dim = dim
        self.member_id = IdEmbedding(space.member_ids + 1, dim, cfg.qr, rem["member"], id_dropout)
        self.item_id = IdEmbedding(space.item_ids + 1, dim, cfg.qr, rem["item"], id_dropout)
        self.stats_dim = space.stats
        self.member_cats = FieldEmbedding(len(MEMBER_FIELDS), cfg.cat_buckets, dim)
        self.item_cats = FieldEmbedding(len(ITEM_FIELDS), cfg.cat_buckets, dim)
        self.item_store = FieldEmbedding(len(STORE_FIELDS), cfg.cat_buckets, dim)
        self.item_age = _init(nn.Embedding(ITEM_AGE_BUCKETS, dim))
        self.task = _init(nn.Embedding(space.num_tasks, dim))
        self.surface = _init(nn.Embedding(SMALL_BUCKETS, dim))
        self.action = _init(nn.Embedding(SMALL_BUCKETS, dim))
        self.slot = _init(nn.Embedding(MAX_SLOTS, dim))
        self.age = _init(nn.Embedding(cfg.age_buckets + 1, dim))

    #: Fields returned by :meth:`member_fields` and :meth:`candidate_fields`.
    MEMBER_FIELDS = 3 + len(MEMBER_FIELDS)
    CANDIDATE_FIELDS = 3 + len(ITEM_FIELDS) + len(STORE_FIELDS)
    HISTORY_FIELDS = 4 + len(ITEM_FIELDS) + len(STORE_FIELDS)

    def candidate_dim(self) -> int:
        return self.CANDIDATE_FIELDS * self.dim + len(MATCH_FIELDS) + self.stats_dim

    def member_fields(self, b: dict) -> torch.Tensor:
        """[B, MEMBER_FIELDS, dim]: member id, profile categoricals, task, surface."""
        return torch.cat([self.member_id(b["member"])[:, None], self.member_cats(b["member_cats"]),
                          self.task(b["task"])[:, None], self.surface(b["surface"])[:, None]], 1)

    def candidate_fields(self, b: dict) -> torch.Tensor:
        """[B, K, CANDIDATE_FIELDS, dim]: item id, item categoricals, item-store fields, item age, slot."""
        return torch.cat([self.item_id(b["cand_item"])[:, :, None], self.item_cats(b["cand_cats"]),
                          self.item_store(b["cand_store"]), self.item_age(b["cand_age"])[:, :, None],
                          self.slot(b["cand_slot"])[:, :, None]], 2)

    def candidate_vector(self, b: dict) -> torch.Tensor:
        """[B, K, CANDIDATE_DIM]: the candidate's fields flattened, then its member-match indicators (and the
        task's as-of-time statistics, when the model was fitted with them)."""
        return torch.cat([self.candidate_fields(b).flatten(2), b["cand_match"]], 2)

    def history_fields(self, b: dict) -> torch.Tensor:
        """[B, L, HISTORY_FIELDS, dim]: item id, item categoricals, item-store fields, action, surface, age."""
        return torch.cat([self.item_id(b["hist_item"])[:, :, None], self.item_cats(b["hist_cats"]),
                          self.item_store(b["hist_store"]),
                          self.action(b["hist_action"])[:, :, None], self.surface(b["hist_surface"])[:, :, None],
                          self.age(b["hist_age"])[:, :, None]], 2)
