"""Popularity: each item's time-decayed positive rate per task, fitted on training rows.

For task t and item i, with weights 0.5 ** (age / half_life) measured back from the latest
training request,

    rate(t, i) = (positives(t, i) + prior * rate(t)) / (impressions(t, i) + prior)

A task the scorer never saw (a T2 task) uses the item's rate pooled over all trained tasks,
shrunk to the global rate. Listwise requests get the slots' rates normalized to sum to 1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recbrew.data.io import atomic_write_text
from recbrew.errors import UserError

DAY = 86_400
FILE = "popularity.json"


@dataclass
class PopularityConfig:
    #: Days after which an impression counts half.
    half_life_days: float = 7.0
    #: Pseudo-impressions at the task's (or global) rate that every item starts with.
    prior: float = 20.0


def _rates(keys: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict:
    uniq, inv = np.unique(keys, return_inverse=True)
    return {"keys": uniq.tolist(), "positives": np.bincount(inv, weights * labels).tolist(),
            "impressions": np.bincount(inv, weights).tolist()}


class Popularity:
    """Scorer from per-(task, item) and per-item decayed positive rates."""

    name = "popularity"
    views = ("structured",)

    def __init__(self, state: dict):
        self.state = state
        self.config = PopularityConfig(**state["config"])
        self._task_items = {t: dict(zip(v["keys"], zip(v["positives"], v["impressions"], strict=True), strict=True))
                            for t, v in state["tasks"].items()}
        pooled = state["items"]
        self._items = dict(zip(pooled["keys"], zip(pooled["positives"], pooled["impressions"], strict=True),
                               strict=True))

    @classmethod
    def fit(cls, rows: Sequence[dict], config: PopularityConfig | None = None) -> Popularity:
        cfg = config or PopularityConfig()
        rows = [r for r in rows if len(r["candidate_ids"])]
        if not rows:
            raise UserError("popularity: no training rows with candidates")
        n = [len(r["candidate_ids"]) for r in rows]
        task = np.repeat([r["task"] for r in rows], n)
        item = np.concatenate([np.asarray(r["candidate_ids"], dtype=np.int64) for r in rows])
        label = np.concatenate([np.asarray(r["labels"], dtype=np.float64) for r in rows])
        ts = np.repeat(np.asarray([r["timestamp"] for r in rows], dtype=np.float64), n)
        weight = 0.5 ** ((ts.max() - ts) / (cfg.half_life_days * DAY))
        tasks = {}
        for t in np.unique(task):
            sel = task == t
            stats = _rates(item[sel], label[sel], weight[sel])
            stats["rate"] = float((weight[sel] * label[sel]).sum() / weight[sel].sum())
            tasks[str(t)] = stats
        state = {"config": asdict(cfg), "reference_time": int(ts.max()), "tasks": tasks,
                 "items": _rates(item, label, weight), "global_rate": float((weight * label).sum() / weight.sum())}
        return cls(state)

    def item_rates(self, task: str, items: Sequence[int]) -> np.ndarray:
        prior = self.config.prior
        if task in self._task_items:
            stats, base = self._task_items[task], self.state["tasks"][task]["rate"]
        else:
            stats, base = self._items, self.state["global_rate"]
        out = np.empty(len(items))
        for j, i in enumerate(items):
            pos, imp = stats.get(int(i), (0.0, 0.0))
            out[j] = (pos + prior * base) / (imp + prior)
        return out

    def score(self, requests: Sequence[dict]) -> list[np.ndarray]:
        out = []
        for r in requests:
            p = self.item_rates(r["task"], r["candidate_ids"])
            if r.get("kind") == "listwise" and len(p):
                p = p / p.sum()
            out.append(p)
        return out

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / FILE
        atomic_write_text(path, json.dumps({"model": "popularity", **self.state}))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Popularity:
        state = json.loads((Path(directory) / FILE).read_text())
        state.pop("model", None)
        return cls(state)
