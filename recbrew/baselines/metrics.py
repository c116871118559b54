"""One Scorer on examples rows: per-task and macro AUC, ECE and speed (the metrics live in `recbrew.metrics`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from recbrew.metrics import expected_calibration_error, macro_auc, per_task_auc


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
