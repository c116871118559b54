"""Generative tasks (next job title, skill suggestion): greedy generation scored by exact match and token F1."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}«»]")


def normalize(text: str | None) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (so 'Data  Engineer.' == 'data engineer')."""
    return " ".join(_PUNCT.sub(" ", (text or "").lower()).split())


def exact_match(prediction: str | None, target: str | None) -> float:
    return float(normalize(prediction) == normalize(target))


def token_f1(prediction: str | None, target: str | None) -> float:
    """Harmonic mean of token precision and recall (multiset overlap of normalized words)."""
    pred, gold = normalize(prediction).split(), normalize(target).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def generation_scores(predictions: Sequence[str | None], targets: Sequence[str | None]) -> dict[str, np.ndarray]:
    """Per-request exact match and token F1."""
    return {"exact": np.array([exact_match(p, t) for p, t in zip(predictions, targets, strict=True)]),
            "f1": np.array([token_f1(p, t) for p, t in zip(predictions, targets, strict=True)])}
