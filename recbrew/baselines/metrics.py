"""Per-task AUC, macro AUC over T1 / T2 tasks, and expected calibration error.

A task's AUC pools the candidates of all its requests (binary: P(positive) of each candidate;
listwise: each slot's probability of being the chosen one). Macro AUC averages the tasks of a
split tag that have both classes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def per_task_auc(rows: Sequence[dict], probs: Sequence[np.ndarray]) -> dict[str, dict]:
    by_task: dict[str, tuple[list, list, str]] = {}
    for row, p in zip(rows, probs, strict=True):
        if not len(row["labels"]):
            continue
        labels, scores, _ = by_task.setdefault(row["task"], ([], [], row["split_tag"]))
        labels.extend(row["labels"])
        scores.extend(np.asarray(p, dtype=np.float64).tolist())
    out = {}
    for task, (labels, scores, tag) in sorted(by_task.items()):
        y = np.asarray(labels)
        auc = float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else None
        out[task] = {"auc": auc, "split_tag": tag, "candidates": len(y), "positives": int(y.sum())}
    return out


def macro_auc(tasks: dict[str, dict]) -> dict[str, float | None]:
    out = {}
    for tag in ("T1", "T2"):
        aucs = [t["auc"] for t in tasks.values() if t["split_tag"] == tag and t["auc"] is not None]
        out[tag] = round(float(np.mean(aucs)), 4) if aucs else None
    return out


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Sum over equal-width probability bins of |mean label - mean probability| weighted by bin share."""
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if len(labels) == 0:
        return float("nan")
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(labels[sel].mean() - probs[sel].mean())
    return float(total)


def evaluate(scorer, rows: Sequence[dict]) -> dict:
    """Score ``rows`` with a Scorer: per-task AUC, macro AUC per split tag, ECE on T1 binary tasks, speed."""
    start = time.perf_counter()
    probs = scorer.score(rows)
    seconds = time.perf_counter() - start
    tasks = per_task_auc(rows, probs)
    sel = [(r, p) for r, p in zip(rows, probs, strict=True) if r["split_tag"] == "T1" and r.get("kind") != "listwise"]
    ece = (expected_calibration_error(np.concatenate([r["labels"] for r, _ in sel]),
                                      np.concatenate([p for _, p in sel])) if sel else None)
    candidates = sum(len(r["labels"]) for r in rows)
    return {"scorer": scorer.name, "macro_auc": macro_auc(tasks), "ece_t1_binary": None if ece is None else round(ece, 4),
            "tasks": tasks, "candidates": candidates, "seconds": round(seconds, 3),
            "candidates_per_s": round(candidates / seconds, 1) if seconds > 0 else None}
