"""Metrics of every model on the same requests: per task (with bootstrap intervals), T1/T2 macro averages
with intervals, paired differences between models, distance to the oracle, slices and top-k diversity.
Everything in the results dict is JSON-ready.

The bootstrap resamples units (requests, members or records: single candidates) within each task, with
replacement; every model is evaluated on the same resamples of a task, so differences between two models
are paired: the resampling noise they share cancels out of the interval of their difference.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recbrew import metrics as M
from recbrew.errors import UserError
from recbrew.eval.generation import generation_scores, normalize
from recbrew.eval.table import RequestTable

#: The slices whose buckets get bootstrap intervals and paired differences to the reference (the cold start:
#: where a text model should win, and the claim needs its interval).
SLICE_INTERVALS = ("cold_start",)
#: Slices as (request column, upper bucket edges): a value v falls in the first bucket whose edge >= v.
SLICES: dict[str, tuple[str, tuple[float, ...]]] = {
    "cold_start": ("member_interactions", (5, 10, 100)),
    "days_from_cutoff": ("days_from_cutoff", (2, 4, 6)),
    "history_length": ("history_length", (0, 5, 20)),
}
#: Per-task metrics whose bootstrap interval is reported.
CI_METRICS = ("auc", "gauc", "ndcg", "mrr", "recall", "log_loss")
#: Per-task metrics computed over requests with at least two candidates only.
RANK_METRICS = ("gauc", "ndcg", "recall", "mrr", "acc1")
UNITS = ("auto", "request", "member", "record")
TAGS = ("T1", "T2")
SINGLE_CANDIDATE = "single-candidate requests"


@dataclass
class CompareConfig:
    """Options of :func:`compare`."""

    #: Cut-off of NDCG@k, Recall@k and top-k diversity.
    k: int = 3
    #: Bootstrap resamples per task (0: no intervals).
    bootstrap: int = 200
    seed: int = 0
    #: Equal-width bins of the reliability diagram and ECE.
    bins: int = 15
    #: Coverage of the intervals.
    level: float = 0.95
    #: What the bootstrap resamples within a task: "request", "member" (all requests of a member together,
    #: right when a member has several requests: they are not independent), "record" (each candidate on its
    #: own, as when every logged record is an independent target; list metrics count a request as often as
    #: its first candidate is drawn), or "auto": member in tasks where some member has several requests,
    #: request elsewhere (there the two are the same).
    unit: str = "auto"
    #: Tasks with fewer positive candidates are flagged "too few positives": their numbers are shown
    #: but rest on too little evidence to rank models by.
    min_positives: int = 20

    def check(self) -> None:
        if self.unit not in UNITS:
            raise UserError(f"unknown bootstrap unit {self.unit!r}; choose one of {', '.join(UNITS)}")
        if self.bootstrap < 0 or self.k < 1 or not 0 < self.level < 1 or self.min_positives < 0:
            raise UserError("bootstrap must be >= 0, k >= 1, level in (0, 1) and min_positives >= 0")


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


def _ci(values: np.ndarray, level: float) -> list[float] | None:
    ci = M.interval(values, level)
    return None if ci is None else [round(ci[0], 6), round(ci[1], 6)]


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Column means of a (tasks x replicates) array over its non-NaN entries; NaN where a column has none."""
    ok = ~np.isnan(values)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, values, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)


# Resamples ------------------------------------------------------------------------------------------

@dataclass
class TaskSample:
    """One task's rankable candidates and its bootstrap draws, shared by every model."""

    task: str
    tag: str
    #: Flat candidate mask of the task (rankable requests only).
    cand: np.ndarray
    #: Member of each candidate; an unknown member (< 0) stands for its request alone.
    member: np.ndarray
    #: "request" or "member".
    unit: str
    #: Bootstrap unit of each candidate (index into the columns of ``counts``).
    unit_of_cand: np.ndarray
    #: (replicates x units) draw counts.
    counts: np.ndarray
    #: Sorted member ids and (replicates x members) draws: group AUC always resamples members, its groups.
    member_ids: np.ndarray
    member_counts: np.ndarray


def task_samples(table: RequestTable, cfg: CompareConfig,
                 requests: np.ndarray | None = None) -> dict[str, TaskSample]:
    """Bootstrap draws of every task with rankable requests (among ``requests``, a mask, where given: a slice),
    seeded by (seed, task name) only, so a task's resamples do not depend on which models or other tasks take
    part."""
    cfg.check()
    out: dict[str, TaskSample] = {}
    for t in table.tasks():
        req_sel = (table.task == t) & table.rankable
        if requests is not None:
            req_sel &= requests
        if not req_sel.any():
            continue
        cand = table.candidate_mask(req_sel)
        request = table.request[cand]
        member = table.member[request]
        member = np.where(member >= 0, member, -1 - request)
        req_members = member[np.r_[0, np.flatnonzero(np.diff(request)) + 1]]
        repeats = len(np.unique(req_members)) < len(req_members)
        unit = cfg.unit if cfg.unit != "auto" else ("member" if repeats else "request")
        rng = np.random.default_rng([cfg.seed, zlib.crc32(t.encode())])
        drawn = {"member": member, "request": request, "record": np.arange(len(request))}[unit]
        units, unit_of_cand = np.unique(drawn, return_inverse=True)
        counts = M.bootstrap_counts(len(units), cfg.bootstrap, rng)
        if unit == "member":
            member_ids, member_counts = units, counts
        else:
            member_ids = np.unique(member)
            member_counts = M.bootstrap_counts(len(member_ids), cfg.bootstrap,
                                               np.random.default_rng([cfg.seed, zlib.crc32(t.encode()), 1]))
        out[t] = TaskSample(t, str(table.split_tag[req_sel][0]), cand, member, unit, unit_of_cand.ravel(), counts,
                            member_ids, member_counts)
    return out


@dataclass
class AucBootstrap:
    """Per model and task: the AUC and its replicates on the task's shared resamples (the raw material of
    macro-AUC intervals and paired differences; not JSON)."""

    level: float
    samples: dict[str, TaskSample]
    #: model -> task -> AUC, for tasks the model scored completely (NaN: one class only).
    auc: dict[str, dict[str, float]] = field(default_factory=dict)
    #: model -> task -> (replicates,) AUCs; NaN where a resample holds one class only.
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.auc)

    def tasks(self, model: str, tag: str) -> list[str]:
        """Tasks of ``tag`` where ``model`` has an AUC (the tasks its macro AUC averages)."""
        return [t for t, v in self.auc[model].items() if self.samples[t].tag == tag and not np.isnan(v)]

    def macro_replicates(self, model: str, tag: str) -> np.ndarray:
        """Macro AUC of ``model`` over its ``tag`` tasks, per resample."""
        tasks = self.tasks(model, tag)
        if not tasks:
            return np.zeros(0)
        return _nanmean_rows(np.stack([self.replicates[model][t] for t in tasks]))

    def macro_interval(self, model: str, tag: str) -> list[float] | None:
        return _ci(self.macro_replicates(model, tag), self.level)


def bootstrap_aucs(table: RequestTable, scores: dict[str, np.ndarray], cfg: CompareConfig | None = None,
                   samples: dict[str, TaskSample] | None = None) -> AucBootstrap:
    """Every model's AUC per task and on each of the task's resamples (one weighted-AUC pass per task and model)."""
    cfg = cfg or CompareConfig()
    cfg.check()
    samples = task_samples(table, cfg) if samples is None else samples
    boot = AucBootstrap(cfg.level, samples)
    for name, sc in scores.items():
        boot.auc[name], boot.replicates[name] = {}, {}
        for t, smp in samples.items():
            s = sc[smp.cand]
            if not len(s) or np.isnan(s).any():
                continue
            y = table.labels[smp.cand]
            boot.auc[name][t] = M.auc(y, s)
            boot.replicates[name][t] = (M.auc(y, s, smp.counts[:, smp.unit_of_cand]) if len(smp.counts)
                                        else np.zeros(0))
    return boot


def most_frequent_answer(targets: Sequence[str | None]) -> dict:
    """The trivial baseline of a generative task: always answer its most frequent test target. Its exact match
    is the best any constant answer can get, so a model at or below it has learned nothing the report can show."""
    counts = Counter(normalize(t) for t in targets if t)
    if not counts:
        return {"answer": None, "exact": None, "f1": None}
    answer = counts.most_common(1)[0][0]
    g = generation_scores([answer] * len(targets), list(targets))
    return {"answer": answer, "exact": _num(g["exact"].mean()), "f1": _num(g["f1"].mean())}


def paired_delta(source, a: str, b: str, level: float | None = None) -> dict:
    """Macro AUC of ``a`` minus ``b`` on T1 and T2 over the tasks both scored, with a paired bootstrap interval.

    ``source`` is an :class:`AucBootstrap`, anything holding one as ``.bootstrap`` (an ``EvalResult``), or a
    results dict (report.json), which holds the resamples' outcome only for the pairs its "paired" section
    compares. Both models are evaluated on identical resamples, so ``paired_delta(x, m, m)`` is exactly 0
    with [0, 0]. Returns ``delta_T1``, ``ci_T1``, ``n_T1_tasks`` (and the same for T2), ``a``, ``b``,
    ``level``, ``text``.
    """
    boot = source
    if not isinstance(source, AucBootstrap | dict):  # an EvalResult: its resamples, else its results
        boot = getattr(source, "bootstrap", None) or getattr(source, "results", None)
    if isinstance(boot, dict):
        paired = boot.get("paired") or {}
        if b == paired.get("reference") and a in paired.get("rows", {}) and level in (None, paired["level"]):
            return paired["rows"][a]
        raise UserError(f"this report holds no paired comparison of {a!r} with {b!r} (it compares every model "
                        f"with {paired.get('reference')!r}); run the eval again for other pairs")
    if not isinstance(boot, AucBootstrap):
        raise TypeError(f"paired_delta needs an AucBootstrap, an EvalResult or a results dict, got "
                        f"{type(source).__name__}")
    for name in (a, b):
        if name not in boot.auc:
            raise UserError(f"no model {name!r} in this comparison; models: {', '.join(boot.models)}")
    level = boot.level if level is None else level
    out: dict = {"a": a, "b": b, "level": level}
    for tag in TAGS:
        # NaN-ness of a task's AUC depends on labels only, so both models have the same defined tasks.
        tasks = [t for t in boot.tasks(a, tag) if t in boot.tasks(b, tag)]
        out[f"n_{tag}_tasks"] = len(tasks)
        if not tasks:
            out[f"delta_{tag}"], out[f"ci_{tag}"] = None, None
            continue
        out[f"delta_{tag}"] = _num(np.mean([boot.auc[a][t] - boot.auc[b][t] for t in tasks]))
        diff = np.stack([boot.replicates[a][t] - boot.replicates[b][t] for t in tasks])
        out[f"ci_{tag}"] = _ci(_nanmean_rows(diff), level) if diff.shape[1] else None
    out["text"] = delta_text(out)
    return out


def fmt_delta(delta: float | None, ci: list[float] | None) -> str:
    """'+0.0120 [-0.0040, +0.0270]' (no bracket without an interval, 'n/a' without a value)."""
    if delta is None:
        return "n/a"
    return f"{delta:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def delta_text(d: dict) -> str:
    """'ΔT1 +0.0120 [-0.0040, +0.0270], ΔT2 n/a' from a :func:`paired_delta` dict."""
    return ", ".join(f"Δ{tag} {fmt_delta(d[f'delta_{tag}'], d[f'ci_{tag}'])}" for tag in TAGS)


def verdict(d: dict, tag: str) -> str:
    """Which side of 0 the paired interval lies on."""
    ci = d.get(f"ci_{tag}")
    if d.get(f"delta_{tag}") is None:
        return "n/a"
    if not ci:
        return "no interval"
    if ci[0] > 0:
        return f"{d['a']} better"
    if ci[1] < 0:
        return f"{d['b']} better"
    return "no clear difference"


def pick_reference(summary: dict[str, dict], oracle: str | None, reference: str | None = None,
                   baselines: Sequence[str] | None = None) -> tuple[str | None, str]:
    """(reference model, how it was chosen): ``reference`` if given, else the best of ``baselines``
    (all models but the oracle when None) by T1 macro AUC."""
    if reference is not None:
        if reference not in summary:
            raise UserError(f"reference model {reference!r} is not among the models: {', '.join(summary)}")
        return reference, "chosen reference"
    pool = [n for n in (summary if baselines is None else baselines) if n in summary and n != oracle]
    pool = [n for n in pool if summary[n]["auc_T1"] is not None]
    if not pool:
        return None, ""
    best = max(pool, key=lambda n: summary[n]["auc_T1"])  # first of equals: the models' order breaks ties
    return best, ("best baseline by T1 macro AUC" if baselines is not None else
                  "best model by T1 macro AUC, oracle excluded")


# Per task -------------------------------------------------------------------------------------------

def slice_intervals(table: RequestTable, scores: dict[str, np.ndarray], cfg: CompareConfig, requests: np.ndarray,
                    reference: str | None) -> dict:
    """A slice's macro AUC intervals (every task of the slice, as its ``macro_auc``) and, with a ``reference``,
    each model's paired difference to it on the same resamples of the slice's members or requests."""
    boot = bootstrap_aucs(table, scores, cfg, task_samples(table, cfg, requests))

    def replicates(name: str, tasks: list[str]) -> np.ndarray:
        return _nanmean_rows(np.stack([boot.replicates[name][t] for t in tasks]))

    defined = {n: [t for t, v in boot.auc[n].items() if not np.isnan(v)] for n in scores}
    out: dict = {"interval": {n: _ci(replicates(n, defined[n]), cfg.level) if defined[n] else None for n in scores},
                 "paired": {}}
    if reference in scores:
        for n in scores:
            tasks = [t for t in defined[n] if t in defined[reference]]
            if n == reference or not tasks:
                continue
            delta = _num(np.mean([boot.auc[n][t] - boot.auc[reference][t] for t in tasks]))
            out["paired"][n] = {"delta": delta, "ci": _ci(replicates(n, tasks) - replicates(reference, tasks),
                                                          cfg.level)}
    return out


def multi_candidate(request: np.ndarray) -> np.ndarray:
    """Candidates whose request has at least two candidates (a ranking there means something)."""
    codes, n = M._codes(request)
    return np.bincount(codes, minlength=n)[codes] >= 2 if n else np.zeros(0, dtype=bool)


def task_metrics(y: np.ndarray, s: np.ndarray, request: np.ndarray, sample: TaskSample, listwise: bool,
                 cfg: CompareConfig, auc_replicates: np.ndarray | None = None) -> dict:
    """One task's metrics over its candidates, with intervals from the task's shared resamples.

    Rank metrics (NDCG, Recall, MRR, Acc@1, group AUC) count only requests with at least two candidates:
    a one-candidate list is ranked perfectly by any model. Group AUC groups those candidates by member.
    """
    multi = multi_candidate(request)
    out = {"auc": M.auc(y, s), "log_loss": M.log_loss(y, s), "ece": M.expected_calibration_error(y, s, cfg.bins)}
    out.update(dict.fromkeys(RANK_METRICS[:4], np.nan))
    ym, sm, rm, mm = y[multi], s[multi], request[multi], sample.member[multi]
    rank = M.rank_metrics(ym, sm, rm, cfg.k)
    gauc_values, gauc_sizes, _ = M.per_group_auc(ym, sm, mm)
    ok_g = ~np.isnan(gauc_values)
    if ok_g.any():
        out["gauc"] = float(np.average(gauc_values[ok_g], weights=gauc_sizes[ok_g]))
    if rank["has_pos"].any():
        out.update(ndcg=np.nanmean(rank["ndcg"]), recall=np.nanmean(rank["recall"]), mrr=np.nanmean(rank["rr"]))
    if listwise:
        top1 = M.rank_metrics(ym, sm, rm, 1)
        out["acc1"] = float(np.nanmean(top1["recall"])) if top1["has_pos"].any() else np.nan
    ci: dict[str, list | None] = {}
    if len(sample.counts):
        counts, unit_of_cand = sample.counts, sample.unit_of_cand
        if auc_replicates is None:
            auc_replicates = M.auc(y, s, counts[:, unit_of_cand])
        ci["auc"] = M.interval(auc_replicates, cfg.level)
        # Request-level metrics: each request carries the unit it belongs to (rank codes follow np.unique order).
        first = np.unique(rank["codes"], return_index=True)[1]
        req_unit = unit_of_cand[multi][first]
        for name in ("ndcg", "recall", "mrr"):
            values = rank["rr" if name == "mrr" else name]
            ci[name] = M.interval(M.weighted_means(values, np.ones(len(values)), counts[:, req_unit]), cfg.level)
        # per_group_auc numbers members in np.unique order; map them onto the task's member draws.
        group_member = np.searchsorted(sample.member_ids, np.unique(mm))
        ci["gauc"] = M.interval(M.weighted_means(gauc_values, gauc_sizes, sample.member_counts[:, group_member]),
                                cfg.level)
        p = np.clip(s, M.EPS, 1 - M.EPS)
        losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
        ci["log_loss"] = M.interval(M.weighted_means(losses, np.ones(len(losses)), counts[:, unit_of_cand]), cfg.level)
    return {**{k: _num(v) for k, v in out.items()}, "ci": ci}


def macro(values: list[float | None]) -> float | None:
    value = M.macro(values)
    return None if value is None else round(value, 6)


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


def task_notes(entry: dict, min_positives: int) -> list[str]:
    """Why a ranked task's numbers deserve caution: too few positives, or no request to rank."""
    notes = []
    if entry["positives"] < min_positives:
        notes.append(f"too few positives ({entry['positives']} < {min_positives})")
    if entry["ranked_requests"] == 0:
        notes.append(SINGLE_CANDIDATE)
    return notes


def _generative_entry(entry: dict, table: RequestTable, idx: np.ndarray,
                      generations: dict[str, dict[int, str] | None]) -> None:
    """A generative task's exact match and token F1 per model (None for a model without an answer to every
    request), and the most frequent answer's as the trivial baseline."""
    for name, gens in generations.items():
        if gens is None or not all(int(i) in gens for i in idx):
            entry["models"][name] = None
            continue
        g = generation_scores([gens[int(i)] for i in idx], [table.target[i] for i in idx])
        entry["models"][name] = {"exact": _num(g["exact"].mean()), "f1": _num(g["f1"].mean())}
    entry["trivial"] = trivial = most_frequent_answer([table.target[i] for i in idx])
    if trivial["answer"] is not None:
        entry["notes"] = [f"most frequent answer ({trivial['answer']!r}): EM {trivial['exact']:.3f} / "
                          f"F1 {trivial['f1']:.3f}; no star at or below it"]


def _ranked_entry(entry: dict, table: RequestTable, task: str, req_sel: np.ndarray, scores: dict[str, np.ndarray],
                  cfg: CompareConfig, boot: AucBootstrap) -> None:
    """A ranked task's counts, caution notes and every model's metrics on the task's bootstrap sample."""
    smp = boot.samples[task]
    y, request = table.labels[smp.cand], table.request[smp.cand]
    sizes = np.diff(table.offsets)[req_sel & table.rankable]
    entry.update(candidates=int(smp.cand.sum()), positives=int(y.sum()),
                 ranked_requests=int((sizes >= 2).sum()), unit=smp.unit)
    notes = task_notes(entry, cfg.min_positives)
    entry.update(flagged=entry["positives"] < cfg.min_positives, notes=notes)
    for name, sc in scores.items():
        if task not in boot.auc.get(name, {}):
            entry["models"][name] = None
            continue
        entry["models"][name] = task_metrics(y, sc[smp.cand], request, smp, entry["kind"] == "listwise", cfg,
                                             boot.replicates[name].get(task))


def _task_entry(table: RequestTable, task: str, scores: dict[str, np.ndarray],
                generations: dict[str, dict[int, str] | None], cfg: CompareConfig, boot: AucBootstrap) -> dict:
    """One task of the results: its kind, tag and counts, and every model's metrics on it."""
    req_sel = table.task == task
    kind = str(table.kind[req_sel][0])
    tag = str(table.split_tag[req_sel][0])
    entry = {"kind": kind, "split_tag": tag, "requests": int(req_sel.sum()), "models": {}}
    if kind == "generative":
        _generative_entry(entry, table, np.flatnonzero(req_sel), generations)
    elif task in boot.samples:
        _ranked_entry(entry, table, task, req_sel, scores, cfg, boot)
    else:  # no request of the task has candidates
        entry.update(candidates=0, positives=0, ranked_requests=0, unit=None, flagged=True, notes=["no candidates"],
                     models=dict.fromkeys(scores))
    return entry


def _calibration(table: RequestTable, scores: np.ndarray, bins: int) -> dict:
    """ECE and the reliability diagram of one model over the binary tasks' candidates, pooled."""
    binary = table.candidate_mask(table.rankable & (table.kind == "binary")) & ~np.isnan(scores)
    y, s = table.labels[binary], scores[binary]
    ece = _num(M.expected_calibration_error(y, s, bins)) if len(y) else None
    rel = M.reliability(y, s, bins)
    reliability = {k: [_num(v) for v in rel[k]] for k in ("edges", "count", "mean_prob", "rate")}
    return {"ece_binary": ece, "reliability": reliability}


def _summary_row(table: RequestTable, tasks: dict[str, dict], name: str, scores: np.ndarray, cfg: CompareConfig,
                 boot: AucBootstrap) -> dict:
    """One model's macro averages over the T1 and T2 tasks (AUC with its interval), generation and calibration."""
    row: dict = {}
    n_tasks: dict[str, int] = {}
    for tag in TAGS:
        ranked = [(e, e["models"].get(name)) for e in tasks.values()
                  if e["split_tag"] == tag and e["kind"] != "generative"]
        for metric in ("auc", "gauc", "ndcg", "mrr"):
            values = [m[metric] if m else None for _, m in ranked]
            row[f"{metric}_{tag}"] = macro(values)
            n_tasks[f"{metric}_{tag}"] = sum(v is not None for v in values)
        row[f"auc_{tag}_ci"] = boot.macro_interval(name, tag) if name in boot.auc else None
        row[f"flagged_{tag}"] = sum(bool(e["flagged"]) for e, m in ranked if m and m["auc"] is not None)
    row["n_tasks"] = n_tasks
    gens = [e["models"].get(name) for e in tasks.values() if e["kind"] == "generative"]
    row["exact"] = macro([g["exact"] if g else None for g in gens])
    row["f1"] = macro([g["f1"] if g else None for g in gens])
    row.update(_calibration(table, scores, cfg.bins))
    return row


def _add_oracle_gaps(summary: dict[str, dict], tasks: dict[str, dict], oracle: str) -> None:
    """Each model's distance to the oracle: macro AUC per tag in the summary, AUC per task in the tasks."""
    for name in summary:
        for tag in TAGS:
            o, m = summary[oracle][f"auc_{tag}"], summary[name][f"auc_{tag}"]
            summary[name][f"oracle_gap_{tag}"] = None if o is None or m is None else round(o - m, 6)
    for e in tasks.values():
        o = e["models"].get(oracle)
        for m in e["models"].values():
            if m and o and "auc" in m:
                m["oracle_gap"] = None if m["auc"] is None or o["auc"] is None else round(o["auc"] - m["auc"], 6)


def _value_slice(table: RequestTable, scores: dict[str, np.ndarray], cfg: CompareConfig, ref: str | None,
                 dim: str) -> dict:
    """Macro AUC per bucket of one request column (:data:`SLICES`), with paired intervals where asked for."""
    column, edges = SLICES[dim]
    names = list(scores)
    values = np.asarray(getattr(table, column), dtype=np.float64)
    # A request without a value (days after the cutoff under a record-order split) is left out of the
    # slice, never put in a bucket; a slice no request has a value for does not apply and has no buckets.
    known = ~np.isnan(values)
    which = np.where(known, buckets(np.where(known, values, 0.0), edges), -1)
    rows = []
    if known.any():
        for b, label in enumerate(bucket_labels(edges)):
            sel = which == b
            rows.append({"bucket": label, "requests": int((sel & table.rankable).sum()),
                         "macro_auc": {n: macro_auc_by_task(table, scores[n], sel) for n in names}})
            if dim in SLICE_INTERVALS and cfg.bootstrap and rows[-1]["requests"]:
                rows[-1].update(slice_intervals(table, {n: scores[n] for n in names}, cfg, sel,
                                                ref if ref in names else None))
    out = {"column": column, "edges": list(edges), "buckets": rows,
           "without_value": int((~known & table.rankable).sum())}
    if not known.any():
        out["note"] = f"does not apply: no request has a {column} value"
    return out


def _slices(table: RequestTable, scores: dict[str, np.ndarray], cfg: CompareConfig, ref: str | None) -> dict:
    """Macro AUC by bucket of every slice of :data:`SLICES`, then by split tag."""
    slices = {dim: _value_slice(table, scores, cfg, ref, dim) for dim in SLICES}
    slices["split_tag"] = {"column": "split_tag", "edges": [], "buckets": [
        {"bucket": tag, "requests": int(((table.split_tag == tag) & table.rankable).sum()),
         "macro_auc": {n: macro_auc_by_task(table, scores[n], table.split_tag == tag) for n in scores}}
        for tag in TAGS]}
    return slices


def compare(table: RequestTable, scores: dict[str, np.ndarray], generations: dict[str, dict[int, str] | None],
            cfg: CompareConfig | None = None, oracle: str | None = None, *, reference: str | None = None,
            baselines: Sequence[str] | None = None, boot: AucBootstrap | None = None) -> dict:
    """All metrics of every model. ``generations[name]`` is None for models that cannot generate.

    ``results["paired"]`` compares every model with ``reference``, or with the best of ``baselines`` by T1
    macro AUC (every model but the oracle when None). ``boot`` reuses :func:`bootstrap_aucs` of the same
    table, scores and config.
    """
    cfg = cfg or CompareConfig()
    cfg.check()
    boot = boot if boot is not None else bootstrap_aucs(table, scores, cfg)
    tasks = {t: _task_entry(table, t, scores, generations, cfg, boot) for t in table.tasks()}
    names = list(scores)
    summary = {name: _summary_row(table, tasks, name, scores[name], cfg, boot) for name in names}
    if oracle in summary:
        _add_oracle_gaps(summary, tasks, oracle)
    ref, rule = pick_reference(summary, oracle if oracle in summary else None, reference, baselines)
    paired = None
    if ref is not None:
        paired = {"reference": ref, "rule": rule, "level": cfg.level,
                  "rows": {n: paired_delta(boot, n, ref) for n in names if n != ref}}
    slices = _slices(table, scores, cfg, ref)
    return {"config": {"k": cfg.k, "bootstrap": cfg.bootstrap, "seed": cfg.seed, "bins": cfg.bins,
                       "level": cfg.level, "unit": cfg.unit, "min_positives": cfg.min_positives},
            "models": names, "oracle": oracle if oracle in summary else None, "tasks": tasks, "summary": summary,
            "paired": paired, "slices": slices, "diversity": {n: diversity(table, scores[n], cfg.k) for n in names}}
