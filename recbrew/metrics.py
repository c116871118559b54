"""Ranking and calibration metrics over flat candidate arrays, vectorized with numpy: the one home of
AUC, ECE and the per-task / macro AUC that eval, the baselines, training and the CLI all report.

Candidates of many requests sit in one flat array; ``groups`` says which request (or member) each
belongs to. Ties are handled the way scikit-learn does: AUC counts a tied positive/negative pair
as half a win, NDCG@k and Recall@k average over every order of tied candidates. A group with a
single class has no AUC (NaN, left out of averages), never an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Probabilities are clipped to [EPS, 1 - EPS] in the log loss.
EPS = 1e-15


def _codes(groups) -> tuple[np.ndarray, int]:
    """Dense group codes 0..G-1 in order of first appearance of the sorted unique values."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    codes = codes.ravel()
    return codes, int(codes.max()) + 1 if len(codes) else 0


def _block_starts(*keys: np.ndarray) -> np.ndarray:
    """Start indices of runs of equal consecutive key tuples (keys already sorted)."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def auc(labels, scores, weights=None) -> float | np.ndarray:
    """ROC AUC (ties count half), optionally with sample weights; NaN when one class is missing.

    ``weights`` may be 2-D (replicates x candidates): then one AUC per replicate comes back, which
    is how the bootstrap evaluates hundreds of resamples in one pass.
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    w = np.ones((1, len(y))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if len(y) == 0:
        out = np.full(w.shape[0], np.nan)
    else:
        order = np.argsort(s, kind="mergesort")
        starts = _block_starts(s[order])
        wy = w[:, order] * y[order]
        wn = w[:, order] * (1.0 - y[order])
        out = auc_from_counts(np.add.reduceat(wy, starts, axis=1), np.add.reduceat(wn, starts, axis=1))
    return float(out[0]) if weights is None or np.ndim(weights) == 1 else out


def auc_from_counts(pos, neg) -> np.ndarray:
    """ROC AUC from the (weighted) positive and negative counts at each score level, levels ascending along
    the last axis (a tie within a level counts half); one AUC per row (a 0-d array for one histogram), NaN
    where a class is missing. This is how `auc` ends, and how a score histogram (the world card's streaming
    AUC) is read without keeping its rows.
    """
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    below = np.cumsum(neg, axis=-1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=-1)
    den = pos.sum(axis=-1) * neg.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def per_group_auc(labels, scores, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUC of each group, its candidate count, group codes); NaN AUC for single-class groups."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    codes, n_groups = _codes(groups)
    if n_groups == 0:
        return np.zeros(0), np.zeros(0), codes
    order = np.lexsort((s, codes))
    c, ss, yy = codes[order], s[order], y[order]
    starts = _block_starts(c, ss)
    block_group = c[starts]
    pos = np.add.reduceat(yy, starts)
    neg = np.add.reduceat(1.0 - yy, starts)
    cum = np.cumsum(neg) - neg
    # Negatives below a block counted within its own group only: subtract the group's offset.
    first = np.r_[0, np.flatnonzero(np.diff(block_group)) + 1]
    offset = np.repeat(cum[first], np.diff(np.r_[first, len(block_group)]))
    below = cum - offset
    num = np.bincount(block_group, pos * (below + 0.5 * neg), minlength=n_groups)
    p = np.bincount(block_group, pos, minlength=n_groups)
    n = np.bincount(block_group, neg, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where((p > 0) & (n > 0), num / (p * n), np.nan)
    return values, p + n, codes


def group_auc(labels, scores, groups) -> float:
    """Mean of per-group AUCs weighted by candidate count, over groups with both classes (GAUC)."""
    values, sizes, _ = per_group_auc(labels, scores, groups)
    ok = ~np.isnan(values)
    return float(np.average(values[ok], weights=sizes[ok])) if ok.any() else float("nan")


def rank_metrics(labels, scores, groups, k: int) -> dict[str, np.ndarray]:
    """Per-group NDCG@k, Recall@k and reciprocal rank, plus ``has_pos`` (groups where they are defined).

    NDCG and Recall average over every order of tied scores (as scikit-learn's ``ndcg_score``);
    the reciprocal rank places the best-scored positive in the middle of the negatives it ties with.
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    codes, n_groups = _codes(groups)
    if n_groups == 0:
        empty = np.zeros(0)
        return {"ndcg": empty, "recall": empty, "rr": empty, "has_pos": empty.astype(bool), "codes": codes}
    sizes = np.bincount(codes, minlength=n_groups)
    group_start = np.r_[0, np.cumsum(sizes)[:-1]]

    order = np.lexsort((-s, codes))
    c, ss, yy = codes[order], s[order], y[order]
    rank = np.arange(len(c)) - group_start[c]
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    in_top = (rank < k).astype(np.float64)
    starts = _block_starts(c, ss)
    block_size = np.diff(np.r_[starts, len(c)])
    block_group = c[starts]
    gain = np.add.reduceat(yy, starts)
    dcg = np.bincount(block_group, gain * np.add.reduceat(discount, starts) / block_size, minlength=n_groups)
    hits = np.bincount(block_group, gain * np.add.reduceat(in_top, starts) / block_size, minlength=n_groups)

    ideal_order = np.lexsort((-y, codes))
    ideal = y[ideal_order]
    idcg = np.bincount(codes[ideal_order], ideal * discount, minlength=n_groups)
    n_pos = np.bincount(codes, y, minlength=n_groups)
    has_pos = n_pos > 0

    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, codes, np.where(y > 0, s, -np.inf))
    neg = y == 0
    higher = np.bincount(codes, neg & (s > best[codes]), minlength=n_groups)
    tied = np.bincount(codes, neg & (s == best[codes]), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndcg = np.where(has_pos, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)
        recall = np.where(has_pos, hits / np.where(has_pos, n_pos, 1.0), np.nan)
        rr = np.where(has_pos, 1.0 / (1.0 + higher + 0.5 * tied), np.nan)
    return {"ndcg": ndcg, "recall": recall, "rr": rr, "has_pos": has_pos, "codes": codes}


def log_loss(labels, probs) -> float:
    """Mean binary cross-entropy, probabilities clipped to [EPS, 1 - EPS]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))) if len(y) else float("nan")


def reliability(labels, probs, bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width probability bins: candidate count, mean predicted probability and observed rate."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    which = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    sum_p = np.bincount(which, p, minlength=bins)
    sum_y = np.bincount(which, y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": np.linspace(0, 1, bins + 1), "count": count,
                "mean_prob": np.where(count > 0, sum_p / np.maximum(count, 1), np.nan),
                "rate": np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)}


def expected_calibration_error(labels, probs, bins: int = 15) -> float:
    """Sum over equal-width bins of |observed rate - mean probability| weighted by the bin's share."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    which = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    gap = np.bincount(which, y, minlength=bins) - np.bincount(which, p, minlength=bins)
    return float(np.abs(gap).sum() / len(y))


# Bootstrap ------------------------------------------------------------------------------------------

def bootstrap_counts(n_units: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates x units) draw counts of resampling ``n_units`` units with replacement."""
    if n_units == 0:
        return np.zeros((replicates, 0))
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=replicates).astype(np.float64)


def interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile interval of bootstrap replicates (NaN replicates dropped); None if too few remain."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) < 10:
        return None
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def weighted_means(values: np.ndarray, weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per replicate: mean of ``values`` (NaN ones skipped) weighted by ``weights`` x draw ``counts``."""
    ok = ~np.isnan(values)
    w = counts[:, ok] * weights[ok]
    tot = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (w @ values[ok]) / np.where(tot > 0, tot, 1.0), np.nan)


# Per task and macro ---------------------------------------------------------------------------------

def per_task_auc(rows: Sequence[dict], probs: Sequence[np.ndarray]) -> dict[str, dict]:
    """A task's AUC pools the candidates of all its requests (binary: P(positive) of each candidate; listwise:
    each slot's probability of being the chosen one); None where the task lacks one of the classes."""
    by_task: dict[str, tuple[list, list, str | None]] = {}
    for row, p in zip(rows, probs, strict=True):
        if not len(row["labels"]):
            continue
        labels, scores, _ = by_task.setdefault(row["task"], ([], [], row.get("split_tag")))
        labels.extend(row["labels"])
        scores.extend(np.asarray(p, dtype=np.float64).tolist())
    out = {}
    for task, (labels, scores, tag) in sorted(by_task.items()):
        y = np.asarray(labels, dtype=np.float64)
        value = auc(y, scores) if 0 < y.sum() < len(y) else None
        out[task] = {"auc": value, "split_tag": tag, "candidates": len(y), "positives": int(y.sum())}
    return out


def macro(values: Sequence[float | None]) -> float | None:
    """Mean of the values that exist (None when none does)."""
    v = [x for x in values if x is not None and not np.isnan(x)]
    return float(np.mean(v)) if v else None


def macro_auc(tasks: dict[str, dict]) -> dict[str, float | None]:
    """Macro AUC per split tag (T1, T2) over ``per_task_auc``'s tasks that have both classes."""
    out = {}
    for tag in ("T1", "T2"):
        value = macro([t["auc"] for t in tasks.values() if t["split_tag"] == tag])
        out[tag] = None if value is None else round(value, 4)
    return out
