"""The ranker inside the closed loop: trained on the logs it helped produce, updated every day.

Two training modes:

- ``full``: a fresh model on all logs so far (feature space refitted, ``full_epochs`` passes, AdamW with a
  cosine decay), every day;
- ``incremental``: yesterday's model, one pass over the new day's logs (AdamW at a constant rate),
  optionally with an L2 pull toward yesterday's weights (``anchor``), as LiRank's production loop
  warm-starts each day's model.

Scoring happens in the first slot (every candidate gets slot 1), so the position the pool happened to
list a candidate in does not leak into its score.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from recbrew.baselines.bayes import BayesianLastLayer
from recbrew.baselines.config import RunConfig, build_model, run_config
from recbrew.baselines.embedding import IdEmbedding, QREmbedding
from recbrew.baselines.features import (
    ITEM_FIELDS,
    FeatureSpace,
    batch_tensors,
    item_store_tables,
    stable_hash,
)
from recbrew.errors import UserError

#: Requests per scoring batch.
SCORE_BATCH = 512


@dataclasses.dataclass
class Scored:
    """Per-candidate scores of a batch of requests, flattened in candidate order."""

    prob: np.ndarray
    #: Head logit before calibration (monotone in ``prob`` within a surface).
    logit: np.ndarray
    #: Final representation [n, dim]; None for rankers without one.
    h: np.ndarray | None
    #: Task index of each candidate.
    task: np.ndarray


class LoopRanker:
    """A baselines ranker (LiRank, LiGR, DCNv2) with its feature space, trained and scored on in-memory columns."""

    def __init__(self, cfg: RunConfig, space: FeatureSpace, model: torch.nn.Module):
        self.cfg, self.space, self.model = cfg, space, model
        self.bayes: BayesianLastLayer | None = None

    @property
    def has_representation(self) -> bool:
        return hasattr(self.model, "represent")

    # ------------------------------------------------------------------ features

    @staticmethod
    def fit_space(cfg: RunConfig, cols: dict, items: pa.Table, members: pa.Table) -> FeatureSpace:
        """Feature space of the logs ``cols``, with the item store read from the tables in memory."""
        kinds = {t: "binary" for t in set(cols["task"])}
        space = FeatureSpace.fit(cols, dataclasses.replace(cfg.features, item_store=False), kinds)
        space.config = cfg.features
        LoopRanker.refresh(space, items, members)
        return space

    @staticmethod
    def refresh(space: FeatureSpace, items: pa.Table, members: pa.Table) -> None:
        """Bring the item lookups (store attributes, candidate categoricals) up to every item known today.

        These are feature-store reads, not learned tables: the id ranges (what the embeddings learned) stay.
        """
        buckets = space.config.cat_buckets
        if space.config.item_store:
            space.store_ids, space.store_cats, space.store_created = item_store_tables(items, members, buckets)
        items = items.sort_by("item_id")
        field = {"cand_item_type": "item_type", "cand_topic": "topic", "cand_industry": "industry",
                 "cand_location": "location", "cand_company": "company"}
        cats = np.stack([stable_hash(items[field[f]].to_pylist(), f, buckets) for f in ITEM_FIELDS], 1)
        space.attr_ids, space.attr_cats = items["item_id"].to_pylist(), cats.tolist()

    def grow(self, items: pa.Table, members: pa.Table) -> int:
        """Give every item and member known today its own id row; returns how many item ids were added.

        A warm-started model keeps the id ranges of the logs it was first fitted on, so without this every item
        created later shares the 'unknown' row and the model cannot learn what sets one new item apart from
        another. The trained rows are kept as they are (the QR remainder size is frozen, so no id moves); a new
        row starts as the unknown id's embedding, what the model predicted for the item until now.
        """
        space, emb = self.space, getattr(self.model, "embeddings", None)
        if emb is None:
            return 0
        item_ids = max(space.item_ids, int(pc.max(items["item_id"]).as_py()) + 1 if items.num_rows else 0)
        member_ids = max(space.member_ids, int(pc.max(members["member_id"]).as_py()) + 1 if members.num_rows else 0)
        added = item_ids - space.item_ids
        for name, module, n in (("item", emb.item_id, item_ids), ("member", emb.member_id, member_ids)):
            if n > getattr(space, f"{name}_ids"):
                space.remainders[name] = space.remainder[name]
                _grow_table(module, n + 1)
                setattr(space, f"{name}_ids", n)
        return added

    # ------------------------------------------------------------------ training

    @classmethod
    def train_full(cls, cfg: RunConfig, cols: dict, items: pa.Table, members: pa.Table, epochs: int,
                   seed: int) -> tuple[LoopRanker, float]:
        """A fresh model on ``cols`` (all logs); returns it and the seconds it took."""
        start = time.perf_counter()
        torch.manual_seed(seed)
        space = cls.fit_space(cfg, cols, items, members)
        model = build_model(cfg, space)
        ranker = cls(cfg, space, model)
        ranker._train(cols, epochs, cfg.train.lr, cosine=True, anchor=0.0, seed=seed)
        return ranker, time.perf_counter() - start

    def update(self, cols: dict, lr: float, anchor: float, seed: int, epochs: int = 1) -> float:
        """``epochs`` passes over new logs from the current weights; returns the seconds it took."""
        start = time.perf_counter()
        torch.manual_seed(seed)
        self._train(cols, epochs, lr, cosine=False, anchor=anchor, seed=seed)
        return time.perf_counter() - start

    def _train(self, cols: dict, epochs: int, lr: float, cosine: bool, anchor: float, seed: int) -> None:
        if not cols:
            return
        tc = self.cfg.train
        torch.set_num_threads(tc.threads)
        enc = self.space.encode(cols)
        n = len(enc["task"])
        rng = np.random.default_rng(seed)
        model = self.model
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tc.weight_decay)
        steps = -(-n // tc.batch_size)
        total = max(epochs * steps, 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, (lambda i: tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * min(i / total, 1.0)))) if cosine else (lambda i: 1.0))
        anchor_weights = ([p.detach().clone() for p in model.parameters()] if anchor > 0 else None)
        model.train()
        for _ in range(epochs):
            order = rng.permutation(n)
            for step in range(steps):
                b = batch_tensors(enc, np.sort(order[step * tc.batch_size:(step + 1) * tc.batch_size]))
                mask = b["cand_mask"]
                loss = F.binary_cross_entropy_with_logits(model(b)[mask], b["labels"][mask])
                if anchor_weights is not None:
                    loss = loss + 0.5 * anchor * sum(((p - a) ** 2).sum() for p, a in
                                                     zip(model.parameters(), anchor_weights, strict=True))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
        model.eval()

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def score(self, cols: dict, representation: bool = False, slate: np.ndarray | None = None) -> Scored:
        """Every candidate of ``cols`` scored in the first slot (probability, raw head logit, representation).

        ``slate``: per request, the number of items the slate will show; a pool is larger than its slate, and
        the request's size is a feature, so the pool is scored as the slate it becomes (as training sees it).
        """
        if not cols:
            return Scored(np.zeros(0), np.zeros(0), None, np.zeros(0, np.int64))
        torch.set_num_threads(self.cfg.train.threads)
        model = self.model.eval()
        enc = self.space.encode(cols)
        enc["cand_slot"] = enc["cand_mask"].astype(np.int64)
        if slate is not None:
            # The same expression as FeatureSpace.encode's dense request-size feature.
            enc["dense"][:, 1] = np.asarray(slate, dtype=np.float32) / 16
        probs, logits, hs, tasks = [], [], [], []
        want_h = representation and self.has_representation
        for lo in range(0, len(enc["task"]), SCORE_BATCH):
            b = batch_tensors(enc, slice(lo, lo + SCORE_BATCH))
            if self.has_representation:
                bi, _, h = model.represent(b)
                raw = model.head_logit(b, bi, h, calibrate=False)
                cal = model.head_logit(b, bi, h)
                if want_h:
                    hs.append(h.numpy())
            else:
                mask = b["cand_mask"]
                cal = raw = model(b)[mask]
                bi = mask.nonzero(as_tuple=True)[0]
            probs.append(torch.sigmoid(cal).double().numpy())
            logits.append(raw.double().numpy())
            tasks.append(b["task"][bi].numpy())
        return Scored(np.concatenate(probs), np.concatenate(logits), np.concatenate(hs) if want_h else None,
                      np.concatenate(tasks))

    # ------------------------------------------------------------------ Bayesian last layer

    def start_posterior(self, scored: Scored, item: np.ndarray, prior: float, scale: float, decay: float) -> None:
        """The Bayesian last layer from the logs the model was trained on (``item``: each candidate's item id)."""
        if not self.has_representation:
            raise UserError(f"thompson sampling needs a ranker with a final representation (lirank), "
                            f"not {self.cfg.model_name}")
        self.bayes = BayesianLastLayer(scored.h.shape[1], self.space.num_tasks, prior, scale, decay)
        # No labels: the model was trained on these impressions, so their residuals would understate tau^2.
        self.bayes.update(scored.h, scored.task, scored.prob, item=item)

    # ------------------------------------------------------------------ saving

    def state(self) -> dict:
        return {"config": self.cfg.to_dict(), "space": self.space.to_dict(),
                "weights": {k: v.clone() for k, v in self.model.state_dict().items()},
                "bayes": None if self.bayes is None else self.bayes.state()}

    @classmethod
    def from_state(cls, state: dict) -> LoopRanker:
        c = state["config"]
        cfg = run_config(c["name"], base={"model": c["model"], "features": c["features"], "train": c["train"]})
        space = FeatureSpace.from_dict(state["space"])
        model = build_model(cfg, space)
        model.load_state_dict(state["weights"])
        ranker = cls(cfg, space, model.eval())
        if state["bayes"] is not None:
            ranker.bayes = BayesianLastLayer.from_state(state["bayes"])
        return ranker


@torch.no_grad()
def _grow_table(module: IdEmbedding, rows: int) -> None:
    """Resize an id table to ``rows`` id indices; the old rows are kept, new ids start as the unknown id (index 0)."""
    table = module.table
    if isinstance(table, QREmbedding):
        q, r = table.quotient_table.weight, table.remainder_table.weight
        n = math.ceil(rows / table.remainder)
        if n > len(q):
            # Id i is Q[i // R] + R[i % R]; with new quotient rows Q[0] + R[0] - mean(R) a new id is the unknown
            # embedding plus its remainder row's deviation from the mean (the pair stays unique to the id).
            fresh = (q[0] + r[0] - r.mean(0)).expand(n - len(q), -1)
            table.quotient_table = torch.nn.Embedding.from_pretrained(torch.cat([q, fresh]), freeze=False)
        table.num = rows
    elif rows > table.num_embeddings:
        w = table.weight
        module.table = torch.nn.Embedding.from_pretrained(torch.cat([w, w[:1].expand(rows - len(w), -1)]),
                                                          freeze=False)
