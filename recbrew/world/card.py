"""Streaming AUC and the world card: sizes, action rates, oracle and popularity AUC per action."""

from __future__ import annotations

import numpy as np

from recbrew.metrics import auc_from_counts


class StreamingAUC:
    """ROC AUC from score histograms on the logit scale: O(1) memory however many rows stream in.

    Scores within one bin (width 28/2**16 ≈ 4e-4 in logit) count as ties, which moves the AUC by
    far less than its sampling error at any size the world generates.
    """

    BINS = 1 << 16
    LO, HI = -14.0, 14.0

    def __init__(self) -> None:
        self.pos = np.zeros(self.BINS, dtype=np.int64)
        self.neg = np.zeros(self.BINS, dtype=np.int64)

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        b = np.clip(((np.asarray(logits) - self.LO) / (self.HI - self.LO) * self.BINS).astype(np.int64), 0, self.BINS - 1)
        labels = np.asarray(labels, dtype=bool)
        self.pos += np.bincount(b[labels], minlength=self.BINS)
        self.neg += np.bincount(b[~labels], minlength=self.BINS)

    @property
    def positives(self) -> int:
        return int(self.pos.sum())

    @property
    def negatives(self) -> int:
        return int(self.neg.sum())

    def auc(self) -> float | None:
        value = float(auc_from_counts(self.pos, self.neg))
        return None if np.isnan(value) else value


class ActionStats:
    """Per (surface, action): counts, oracle AUC and popularity AUC, accumulated day by day."""

    def __init__(self) -> None:
        self.impressions: dict[str, int] = {}
        self.oracle: dict[tuple[str, str], StreamingAUC] = {}
        self.popularity: dict[tuple[str, str], StreamingAUC] = {}

    def add(self, surface: str, action: str, oracle_logits, popularity_logits, labels) -> None:
        key = (surface, action)
        if key not in self.oracle:
            self.oracle[key], self.popularity[key] = StreamingAUC(), StreamingAUC()
        self.oracle[key].add(oracle_logits, labels)
        self.popularity[key].add(popularity_logits, labels)

    def count_impressions(self, surface: str, n: int) -> None:
        self.impressions[surface] = self.impressions.get(surface, 0) + n

    def summary(self, main_actions: dict[str, str]) -> dict:
        out = {}
        for (surface, action), oracle in self.oracle.items():
            pop = self.popularity[(surface, action)]
            n = self.impressions.get(surface, 0)
            o, p = oracle.auc(), pop.auc()
            out.setdefault(surface, {})[action] = {
                "main": main_actions.get(surface) == action,
                "count": oracle.positives,
                "rate": round(oracle.positives / n, 6) if n else None,
                "oracle_auc": None if o is None else round(o, 4),
                "popularity_auc": None if p is None else round(p, 4),
            }
        return out
