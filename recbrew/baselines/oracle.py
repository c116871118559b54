"""The oracle: scores candidates with the true engagement probabilities the synthetic world logged.

Its AUC is the Bayes-optimal ceiling of every other scorer on the same requests. For a listwise
request with exactly one positive, the posterior of slot j being that positive is
p_j * prod_{i != j} (1 - p_i) / Z, i.e. the odds p_j / (1 - p_j) normalized over the slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recbrew.errors import UserError


class Oracle:
    """Scorer from each row's ``true_probs`` (synthetic world only)."""

    name = "oracle"

    def score(self, requests: Sequence[dict]) -> list[np.ndarray]:
        out = []
        for r in requests:
            probs = r.get("true_probs")
            if probs is None or any(p is None or p != p for p in probs):
                raise UserError(
                    f"request {r.get('request_id', '?')}: no true probabilities (true_probs); the oracle scores "
                    "only examples built from a synthetic world (`recbrew world generate`)")
            p = np.asarray(probs, dtype=np.float64)
            if r.get("kind") == "listwise" and len(p):
                odds = p / np.clip(1.0 - p, 1e-12, None)
                p = odds / odds.sum() if odds.sum() > 0 else np.full(len(p), 1.0 / len(p))
            out.append(p)
        return out
