"""`recbrew data build`: Corpus + tasks -> Hugging Face datasets of rendered prompts and features.

Writes, under the output folder:
- ``text/``: DatasetDict(train, test) with one row per request: prompt prefix (shared by the
  request's candidates), candidate segments, labels, token counts, what history was cut, and
  metadata (task, version, T1/T2, cold-start count, history length, days after the cutoff);
- ``structured/``: the same requests as ids, categoricals and history sequences, for baselines;
- ``manifest.json``: split plan, seed, task versions, tokenizer, counts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from recbrew.data.corpus import Corpus
from recbrew.data.io import staged_directory
from recbrew.errors import ConfigError, UserError
from recbrew.examples.requests import DAY, Requests, SplitPlan, build_requests, task_rng, time_range
from recbrew.tasks import load_catalog
from recbrew.tasks.spec import Kind, TaskSpec
from recbrew.verbalize.context import CorpusView
from recbrew.verbalize.environment import make_environment
from recbrew.verbalize.render import Renderer

#: History steps kept in the structured view (most recent last).
STRUCTURED_HISTORY = 50
MEMBER_FEATURES = ("function", "industry", "seniority", "location", "company", "school", "occupation", "gender")
ITEM_FEATURES = ("item_type", "topic", "industry", "location", "company")


@dataclass
class BuildConfig:
    tasks: list[str] | None = None
    test_days: float = 7.0
    gap_days: float = 1.0
    max_train: int = 400
    max_test: int = 200
    #: Candidates kept per pointwise request (the session's first ones).
    max_candidates: int = 20
    #: Days at the start of the log that only feed histories: no request is made from them, so even the
    #: earliest training request has a member history behind it.
    burn_in_days: float = 0.0
    seed: int = 0
    style: str | None = None
    tokenizer: str = "smollm2"
    max_tokens: int | None = None


def _sample(req: Requests, cfg: BuildConfig, rng: np.random.Generator) -> Requests:
    """At most max_train / max_test requests per split (seeded), in time order."""
    keep = []
    for split, cap in (("train", cfg.max_train), ("test", cfg.max_test)):
        rows = np.flatnonzero(req.split == split)
        if len(rows) > cap:
            rows = np.sort(rng.choice(rows, size=cap, replace=False))
        keep.append(rows)
    rows = np.concatenate(keep)
    return req.take(rows[np.argsort(req.timestamp[rows], kind="stable")])


def _cap_candidates(req: Requests, k: int) -> Requests:
    lengths = np.diff(req.offsets)
    if (lengths <= k).all():
        return req
    keep = np.minimum(lengths, k)
    offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    idx = np.arange(offsets[-1]) - np.repeat(offsets[:-1], keep) + np.repeat(req.offsets[:-1], keep)
    return Requests(req.member_id, req.timestamp, req.split, offsets, req.candidates[idx], req.labels[idx],
                    req.true_probs[idx], req.target, req.hide_skill)


class _Columns:
    def __init__(self):
        self.data: dict[str, dict[str, list]] = {"train": {}, "test": {}}

    def add(self, split: str, row: dict) -> None:
        cols = self.data[split]
        for k, v in row.items():
            cols.setdefault(k, []).append(v)

    def dataset_dict(self):
        import datasets

        return datasets.DatasetDict({split: datasets.Dataset.from_dict(cols) for split, cols in self.data.items()})


def build_task(view: CorpusView, task: TaskSpec, renderer: Renderer, req: Requests, plan: SplitPlan,
               text: _Columns, structured: _Columns, progress) -> dict:
    """Render every request of one task; returns per-split counts."""
    counts = {"train": 0, "test": 0, "candidates": 0, "positives": 0}
    fields = tuple(task.candidate_fields)
    for i in range(len(req)):
        member, t, split = int(req.member_id[i]), int(req.timestamp[i]), str(req.split[i])
        if not view.has_member(member):
            continue
        lo, hi = req.offsets[i], req.offsets[i + 1]
        cand_ids = [int(c) for c in req.candidates[lo:hi]]
        labels = [int(x) for x in req.labels[lo:hi]]
        probs = [None if np.isnan(p) else float(p) for p in req.true_probs[lo:hi]]
        hidden = req.hide_skill[i] if req.hide_skill else None
        friends = view.connections(member, t)
        history = view.history(member, t, task)
        prompt = renderer.render(
            view.member(member, hidden), [view.candidate(member, c, t, task, friends) for c in cand_ids],
            history, network=view.network(member, t),
        )
        request_id = f"{task.name}/{split}/{i}"
        interactions = view.actions_before(member, t)
        text.add(split, {
            "request_id": request_id, "task": task.name, "task_version": task.version, "kind": task.kind.value,
            "split_tag": task.split.value, "surface": task.surface, "member_id": member, "timestamp": t,
            "candidate_ids": cand_ids, "labels": labels, "true_probs": probs,
            "target": req.target[i] if req.target else None,
            "prefix": prompt.prefix, "segments": prompt.segments, "prefix_tokens": prompt.prefix_tokens,
            "segment_tokens": prompt.segment_tokens, "history_kept": prompt.history_kept,
            "history_cut": prompt.history_cut, "over_budget": prompt.over_budget,
            "member_interactions": interactions, "history_length": len(history),
            "days_from_cutoff": (t - plan.cutoff) / DAY, "style": renderer.task.style,
        })
        h_lo, h_hi = view.actions_range(member, t)
        h_lo = max(h_lo, h_hi - STRUCTURED_HISTORY)
        profile = view.member(member)
        row = {
            "request_id": request_id, "task": task.name, "split_tag": task.split.value, "surface": task.surface,
            "member_id": member, "timestamp": t, "candidate_ids": cand_ids, "labels": labels, "true_probs": probs,
            "member_interactions": interactions,
            "hist_item_ids": view.h_item[h_lo:h_hi].tolist(), "hist_actions": view.h_action[h_lo:h_hi].tolist(),
            "hist_surfaces": view.h_surface[h_lo:h_hi].tolist(), "hist_timestamps": view.h_ts[h_lo:h_hi].tolist(),
        }
        row.update({f"member_{f}": profile.get(f) for f in MEMBER_FEATURES})
        items = [view.item(c, fields) for c in cand_ids]
        row.update({f"cand_{f}": [it.get(f) for it in items] for f in ITEM_FEATURES})
        structured.add(split, row)
        counts[split] += 1
        counts["candidates"] += len(cand_ids)
        counts["positives"] += sum(labels)
        progress.update(1)
    return counts


def build_examples(corpus_dir: str | Path, out: str | Path, cfg: BuildConfig, *, tasks_dir=None, prompts_dir=None,
                   force: bool = False, progress: bool = True) -> dict:
    """Build the datasets for the chosen tasks into ``out`` (written aside, then moved in place)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already exists and is not empty; pass --force to replace it")
    catalog = load_catalog(tasks_dir)
    names = cfg.tasks or sorted(catalog)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ConfigError(f"unknown task(s): {', '.join(unknown)}; `recbrew tasks list` shows the catalog")
    corpus = Corpus.load(corpus_dir)
    start, end = time_range(corpus)
    plan = SplitPlan.from_days(start, end, cfg.test_days, cfg.gap_days)
    if cfg.burn_in_days < 0 or start + cfg.burn_in_days * DAY >= plan.cutoff:
        raise ConfigError(f"--burn-in-days {cfg.burn_in_days:g} leaves no training days before the cutoff "
                          f"({(plan.cutoff - start) / DAY:.1f} days after the log starts)")
    tokenizer = None
    if cfg.tokenizer != "none":
        from recbrew.models.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    env = make_environment(prompts_dir)
    began = time.perf_counter()
    view = CorpusView(corpus)
    plans = []
    for name in names:
        task = catalog[name]
        req = build_requests(corpus, task, plan, cfg.seed)
        if cfg.burn_in_days:
            req = req.take(np.flatnonzero(req.timestamp >= start + cfg.burn_in_days * DAY))
        if task.kind == Kind.binary:
            req = _cap_candidates(req, cfg.max_candidates)
        plans.append((task, _sample(req, cfg, task_rng(cfg.seed + 1, task))))
    text, structured = _Columns(), _Columns()
    summary = {}
    bar = tqdm(total=sum(len(r) for _, r in plans), desc="rendering requests", unit="req", disable=not progress)
    for task, req in plans:
        renderer = Renderer(task, env=env, tokenizer=tokenizer, style=cfg.style)
        if cfg.max_tokens:
            renderer.task = renderer.task.model_copy(
                update={"history": renderer.task.history.model_copy(update={"max_tokens": cfg.max_tokens})})
        summary[task.name] = {"version": task.version, "split_tag": task.split.value, "kind": task.kind.value,
                              "surface": task.surface,
                              **build_task(view, task, renderer, req, plan, text, structured, bar)}
    bar.close()
    seconds = time.perf_counter() - began
    manifest = {
        "corpus": str(Path(corpus_dir).resolve()), "config": asdict(cfg),
        "split": {"cutoff": plan.cutoff, "test_start": plan.test_start, "end": plan.end},
        "tasks": summary, "seconds": round(seconds, 2),
        "rows": {s: sum(v[s] for v in summary.values()) for s in ("train", "test")},
    }
    with staged_directory(out) as staging:
        text.dataset_dict().save_to_disk(str(staging / "text"))
        structured.dataset_dict().save_to_disk(str(staging / "structured"))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
