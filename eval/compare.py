"""Metrics of every model on the same requests: per task (with bootstrap intervals), T1/T2 macro averages,
distance to the oracle, slices and top-k diversity. Everything returned is JSON-ready."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from recbrew.eval import metrics as M
from recbrew.eval.generation import generation_scores
from recbrew.eval.table import RequestTable

#: Slices as (request column, upper bucket edges): a value v falls in the first bucket whose edge >= v.
SLICES: dict[str, tuple[str, tuple[float, ...]]] = {
    "cold_start": ("member_interactions", (5, 10, 100)),
    "days_from_cutoff": ("days_from_cutoff", (2, 4, 6)),
    "history_length": ("history_length", (0, 5, 20)),
}
#: Per-task metrics whose bootstrap interval is reported.
CI_METRICS = ("auc", "gauc", "ndcg", "mrr", "recall", "log_loss")


@dataclass
class CompareConfig:
    k: int = 3
    bootstrap: int = 200
    seed: int = 0
    bins: int = 15
    level: float = 0.95


def bucket_labels(edges: tuple[float, ...]) -> list[str]:
    """'<= 5', '(5, 10]', …, '> 100' for edges (5, 10, 100)."""
    inner = [f"({lo:g}, {hi:g}]" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return [f"<= {edges[0]:g}", *inner, f"> {edges[-1]:g}"]


def buckets(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Bucket index per value: 0 for v <= edges[0], i for edges[i-1] < v <= edges[i], len(edges) above."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="left")


def _num(x) -> float | None:
    """JSON number or None for NaN."""
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def task_metrics(y: np.ndarray, s: np.ndarray, request: np.ndarray, member: np.ndarray, listwise: bool,
                 cfg: CompareConfig, rng: np.random.Generator) -> dict:
    """One task's metrics over its candidates; intervals from a member-level bootstrap."""
    rank = M.rank_metrics(y, s, request, cfg.k)
    gauc_values, gauc_sizes, _ = M.per_group_auc(y, s, member)
    ok_g = ~np.isnan(gauc_values)
    out = {
        "auc": M.auc(y, s),
        "gauc": float(np.average(gauc_values[ok_g], weights=gauc_sizes[ok_g])) if ok_g.any() else np.nan,
        "ndcg": float(np.nanmean(rank["ndcg"])) if rank["has_pos"].any() else np.nan,
        "recall": float(np.nanmean(rank["recall"])) if rank["has_pos"].any() else np.nan,
        "mrr": float(np.nanmean(rank["rr"])) if rank["has_pos"].any() else np.nan,
        "log_loss": M.log_loss(y, s),
        "ece": M.expected_calibration_error(y, s, cfg.bins),
    }
    if listwise:
        top1 = M.rank_metrics(y, s, request, 1)
        out["acc1"] = float(np.nanmean(top1["recall"])) if top1["has_pos"].any() else np.nan
    ci: dict[str, list | None] = {}
    if cfg.bootstrap:
        units, unit_of_cand = np.unique(member, return_inverse=True)
        counts = M.bootstrap_counts(len(units), cfg.bootstrap, rng)
        ci["auc"] = M.interval(M.auc(y, s, counts[:, unit_of_cand]), cfg.level)
        # Group-level metrics: each group carries the member it belongs to.
        req_codes = rank["codes"]
        first = np.unique(req_codes, return_index=True)[1]
        req_unit = unit_of_cand[first]
        for name in ("ndcg", "recall", "mrr"):
            values = rank["rr" if name == "mrr" else name]
            ci[name] = M.interval(M.weighted_means(values, np.ones(len(values)), counts[:, req_unit]), cfg.level)
        # per_group_auc numbers members in np.unique order, the same order as the bootstrap units.
        ci["gauc"] = M.interval(M.weighted_means(gauc_values, gauc_sizes, counts), cfg.level)
        p = np.clip(s, M.EPS, 1 - M.EPS)
        losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
        ci["log_loss"] = M.interval(M.weighted_means(losses, np.ones(len(losses)), counts[:, unit_of_cand]), cfg.level)
    return {**{k: _num(v) for k, v in out.items()}, "ci": ci}


def macro(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.mean(v)), 6) if v else None


def macro_auc_by_task(table: RequestTable, scores: np.ndarray, request_mask: np.ndarray) -> float | None:
    """Mean over tasks of the pooled AUC of the selected requests' candidates (tasks with both classes)."""
    cand = table.candidate_mask(request_mask & table.rankable) & ~np.isnan(scores)
    task_of = table.task[table.request]
    aucs = [M.auc(table.labels[sel], scores[sel]) for t in np.unique(task_of[cand])
            for sel in [cand & (task_of == t)]]
    return macro([_num(a) for a in aucs])


def diversity(table: RequestTable, scores: np.ndarray, k: int) -> dict:
    """Top-k of requests with more than k candidates: intra-list topic diversity, item and company coverage."""
    req = table.rankable & (np.diff(table.offsets) > k)
    cand = table.candidate_mask(req) & ~np.isnan(scores)
    if not cand.any():
        return {"requests": 0, "k": k, "topic_diversity": None, "item_coverage": None, "company_coverage": None}
    r, s = table.request[cand], scores[cand]
    order = np.lexsort((-s, r))  # stable: ties keep the candidates' order
    r_sorted = r[order]
    start = np.r_[0, np.flatnonzero(np.diff(r_sorted)) + 1]
    rank = np.arange(len(r_sorted)) - np.repeat(start, np.diff(np.r_[start, len(r_sorted)]))
    top = np.zeros(len(r), dtype=bool)
    top[order[rank < k]] = True
    topics, items, companies = table.topic[cand], table.item[cand], table.company[cand]
    # Same-topic pairs per list: sum over (request, topic) of c (c - 1) / 2, out of k (k - 1) / 2 pairs.
    _, pair_counts = np.unique(np.stack([r[top].astype(str), topics[top].astype(str)]), axis=1, return_counts=True)
    same = float((pair_counts * (pair_counts - 1) / 2).sum())
    lists = len(np.unique(r[top]))
    ild = 1.0 - same / (lists * k * (k - 1) / 2) if k > 1 else None
    has_co = companies != ""
    co_all = len(set(companies[has_co].tolist()))
    return {"requests": int(lists), "k": k, "topic_diversity": _num(ild),
            "item_coverage": _num(len(np.unique(items[top])) / len(np.unique(items))),
            "company_coverage": _num(len(set(companies[top & has_co].tolist())) / co_all) if co_all else None}


def compare(table: RequestTable, scores: dict[str, np.ndarray], generations: dict[str, dict[int, str] | None],
            cfg: CompareConfig | None = None, oracle: str | None = None) -> dict:
    """All metrics of every model. ``generations[name]`` is None for models that cannot generate."""
    cfg = cfg or CompareConfig()
    task_of = table.task[table.request]
    member_of = table.member[table.request]
    tasks: dict[str, dict] = {}
    for t in table.tasks():
        req_sel = table.task == t
        kind = str(table.kind[req_sel][0])
        tag = str(table.split_tag[req_sel][0])
        entry = {"kind": kind, "split_tag": tag, "requests": int(req_sel.sum()), "models": {}}
        if kind == "generative":
            idx = np.flatnonzero(req_sel)
            for name, gens in generations.items():
                if gens is None or not all(int(i) in gens for i in idx):
                    entry["models"][name] = None
                    continue
                g = generation_scores([gens[int(i)] for i in idx], [table.target[i] for i in idx])
                entry["models"][name] = {"exact": _num(g["exact"].mean()), "f1": _num(g["f1"].mean())}
        else:
            cand = (task_of == t) & table.candidate_mask(table.rankable)
            y = table.labels[cand]
            entry.update(candidates=int(cand.sum()), positives=int(y.sum()))
            for name, sc in scores.items():
                s = sc[cand]
                if not len(s) or np.isnan(s).any():
                    entry["models"][name] = None
                    continue
                rng = np.random.default_rng([cfg.seed, zlib.crc32(t.encode())])  # same resamples for every model
                entry["models"][name] = task_metrics(y, s, table.request[cand], member_of[cand], kind == "listwise",
                                                     cfg, rng)
        tasks[t] = entry

    names = list(scores)
    summary: dict[str, dict] = {}
    for name in names:
        row: dict = {}
        for tag in ("T1", "T2"):
            ranked = [e["models"].get(name) for e in tasks.values() if e["split_tag"] == tag and e["kind"] != "generative"]
            for metric in ("auc", "gauc", "ndcg", "mrr"):
                row[f"{metric}_{tag}"] = macro([m[metric] if m else None for m in ranked])
        gens = [e["models"].get(name) for e in tasks.values() if e["kind"] == "generative"]
        row["exact"] = macro([g["exact"] if g else None for g in gens])
        row["f1"] = macro([g["f1"] if g else None for g in gens])
        binary = table.candidate_mask(table.rankable & (table.kind == "binary")) & ~np.isnan(scores[name])
        y, s = table.labels[binary], scores[name][binary]
        row["ece_binary"] = _num(M.expected_calibration_error(y, s, cfg.bins)) if len(y) else None
        rel = M.reliability(y, s, cfg.bins)
        row["reliability"] = {k: [_num(v) for v in rel[k]] for k in ("edges", "count", "mean_prob", "rate")}
        summary[name] = row

    if oracle in summary:
        for name in names:
            for tag in ("T1", "T2"):
                o, m = summary[oracle][f"auc_{tag}"], summary[name][f"auc_{tag}"]
                summary[name][f"oracle_gap_{tag}"] = None if o is None or m is None else round(o - m, 6)
        for e in tasks.values():
            o = e["models"].get(oracle)
            for m in e["models"].values():
                if m and o and "auc" in m:
                    m["oracle_gap"] = None if m["auc"] is None or o["auc"] is None else round(o["auc"] - m["auc"], 6)

    slices: dict[str, dict] = {}
    for dim, (column, edges) in SLICES.items():
        which = buckets(getattr(table, column), edges)
        labels = bucket_labels(edges)
        rows = []
        for b, label in enumerate(labels):
            sel = which == b
            rows.append({"bucket": label, "requests": int((sel & table.rankable).sum()),
                         "macro_auc": {n: macro_auc_by_task(table, scores[n], sel) for n in names}})
        slices[dim] = {"column": column, "edges": list(edges), "buckets": rows}
    slices["split_tag"] = {"column": "split_tag", "edges": [], "buckets": [
        {"bucket": tag, "requests": int(((table.split_tag == tag) & table.rankable).sum()),
         "macro_auc": {n: macro_auc_by_task(table, scores[n], table.split_tag == tag) for n in names}}
        for tag in ("T1", "T2")]}

    return {"config": {"k": cfg.k, "bootstrap": cfg.bootstrap, "seed": cfg.seed, "bins": cfg.bins,
                       "level": cfg.level},
            "models": names, "oracle": oracle if oracle in summary else None, "tasks": tasks, "summary": summary,
            "slices": slices, "diversity": {n: diversity(table, scores[n], cfg.k) for n in names}}
