"""`recbrew data build`: Corpus + tasks -> Hugging Face datasets of rendered prompts and features.

Writes, under the output folder (`docs/examples-format.md` describes every field):
- ``text/``: DatasetDict(train, [validation,] test) with one row per request: prompt prefix (shared by the
  request's candidates), candidate segments, labels, token counts, what history was cut, and
  metadata (task, version, T1/T2, cold-start count, history length, days after the cutoff);
- ``structured/``: the same requests as ids, categoricals and history sequences, for baselines;
- ``manifest.json``: the protocol, seed, the task specs by content, tokenizer, counts.

The protocol (`recbrew.examples.protocol`): requests are sessions or single targets (``one_target``),
split by time, by record order or leave-last, globally or per member, with an optional validation
split; a request's history is everything before it, or the last N interactions (``history``).
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from recbrew.cluster import build_on_ray, check_engine
from recbrew.data.corpus import Corpus
from recbrew.data.io import staged_directory, write_table
from recbrew.errors import ConfigError, UserError
from recbrew.examples.folder import FORMAT, IDS_FILE, spec_record
from recbrew.examples.history import HistoryIndex
from recbrew.examples.protocol import DAY, SplitRule, parse_history
from recbrew.examples.requests import Requests, build_requests, task_rng, time_range
from recbrew.models.tokenizers import load_tokenizer
from recbrew.tasks import load_catalog
from recbrew.tasks.spec import Kind, TaskSpec
from recbrew.verbalize.collab import fit_for_build
from recbrew.verbalize.collab import model_path as collab_path
from recbrew.verbalize.context import CorpusView
from recbrew.verbalize.environment import make_environment
from recbrew.verbalize.injections import inject_member, inject_one
from recbrew.verbalize.render import Renderer
from recbrew.verbalize.stats import STATS_DIM, dense_vector

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
    #: Split rule: ``time`` (by days), ``order`` (by the interactions' record order) or ``leave-last``.
    split: str = "time"
    #: ``global`` (one boundary for the whole log) or ``member`` (each member's own sequence).
    split_scope: str = "global"
    #: ``order``: the fraction of (each member's) requests at the end that is test (default 0.2).
    test_fraction: float | None = None
    #: Validation: the last ``val_days`` before the cutoff (time), or a seeded ``val_fraction`` of the
    #: training requests (global scope) or of the members (member scope: their last training request).
    val_days: float | None = None
    val_fraction: float | None = None
    max_val: int = 200
    #: Each labelled impression its own request (binary: one candidate; listwise and next-title: one per positive).
    one_target: bool = False
    #: ``all`` (everything before the request) or ``last:N`` (the last N interactions the history shows).
    history: str = "all"
    #: ``val_fraction`` as the latest share of the training requests (by the split's order), not a seeded draw.
    val_in_order: bool = False
    #: Targets only from their member's N-th action on (counted from 0: N earlier actions); history sees all.
    min_position: int = 0
    #: Only the last K labelled records (after ``min_position``) become requests; None: all.
    last_records: int | None = None
    #: Share of the training requests in which one candidate's free text ends with an instruction-like string
    #: (recbrew.verbalize.injections), the label unchanged: the fine-tune learns to ignore such text.
    inject_share: float = 0.0
    #: Share of the training requests in which the member's own title and headline are replaced by an
    #: instruction-like string (`recbrew.verbalize.injections.inject_member`), the label unchanged.
    inject_member_share: float = 0.0


def _sample(req: Requests, cfg: BuildConfig, rng: np.random.Generator, by_order: bool) -> Requests:
    """At most max_train / max_val / max_test requests per split (seeded), in time (or record) order."""
    keep = []
    for split, cap in (("train", cfg.max_train), ("validation", cfg.max_val), ("test", cfg.max_test)):
        rows = np.flatnonzero(req.split == split)
        if len(rows) > cap:
            rows = np.sort(rng.choice(rows, size=cap, replace=False))
        keep.append(rows)
    rows = np.concatenate(keep)
    key = req.pos[rows] if by_order else req.timestamp[rows]
    return req.take(rows[np.argsort(key, kind="stable")])


def _cap_candidates(req: Requests, k: int) -> Requests:
    lengths = np.diff(req.offsets)
    if (lengths <= k).all():
        return req
    keep = np.minimum(lengths, k)
    offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    idx = np.arange(offsets[-1]) - np.repeat(offsets[:-1], keep) + np.repeat(req.offsets[:-1], keep)
    return Requests(req.member_id, req.timestamp, req.split, offsets, req.candidates[idx], req.labels[idx],
                    req.true_probs[idx], req.target, req.hide_skill, req.pos)


class _Columns:
    def __init__(self, splits: list[str]):
        self.data: dict[str, dict[str, list]] = {split: {} for split in splits}

    def add(self, split: str, row: dict) -> None:
        cols = self.data[split]
        for k, v in row.items():
            cols.setdefault(k, []).append(v)

    def dataset_dict(self):
        import datasets

        built = {split: datasets.Dataset.from_dict(cols) for split, cols in self.data.items() if cols}
        # An empty split keeps the columns and types of the others, so readers need no special case.
        like = next(iter(built.values()), None)
        return datasets.DatasetDict({
            split: built.get(split) or (datasets.Dataset.from_dict({}) if like is None else
                                        datasets.Dataset.from_dict({c: [] for c in like.column_names},
                                                                   features=like.features))
            for split in self.data})


@dataclass
class _Context:
    """What every request of a build shares: the views, the history index and the protocol."""

    view: CorpusView
    history: HistoryIndex
    rule: SplitRule
    last: int | None  # the history window (``last:N``), None for everything before the request
    #: Share of training requests with an instruction-like string in one candidate's text (`inject_one`).
    inject_share: float = 0.0
    #: Share of training requests whose member's title and headline are an instruction-like string (`inject_member`).
    inject_member_share: float = 0.0
    seed: int = 0
    #: The rating models of the tasks that declare ``stats.collab`` (`recbrew.verbalize.collab.CollabSet`).
    collab: dict = field(default_factory=dict)


def structured_fields(view, member: int, t: int, cand_ids: list[int], fields: tuple[str, ...], history: tuple,
                      lo: int, hi: int, keep: int = STRUCTURED_HISTORY, task: TaskSpec | None = None,
                      candidates: list[dict] | None = None) -> dict:
    """The structured view of one request (what classic rankers read): ids, the member's profile fields, the
    candidates' fields and the last ``keep`` history steps of rows [lo, hi) of ``history`` = (item, action,
    surface, timestamp) arrays, and the task's as-of-time statistics as one dense vector per candidate (zeros
    when it declares none; read from ``candidates``, the `CorpusView.candidate` dicts, when the caller has them).
    `recbrew serve` builds the same for requests it ranks with a classic ranker."""
    item, action, surface, ts = history
    hist = slice(max(lo, hi - keep), hi)
    profile = view.member(member)
    items = [view.item(c, fields) for c in cand_ids]
    return {
        "member_id": member, "timestamp": t, "candidate_ids": list(cand_ids), "member_interactions": hi - lo,
        "hist_item_ids": item[hist].tolist(), "hist_actions": action[hist].tolist(),
        "hist_surfaces": surface[hist].tolist(), "hist_timestamps": ts[hist].tolist(),
        **{f"member_{f}": profile.get(f) for f in MEMBER_FEATURES},
        **{f"cand_{f}": [it.get(f) for it in items] for f in ITEM_FEATURES},
        "cand_stats": candidate_stats_vectors(view, member, t, cand_ids, task, candidates),
    }


def candidate_stats_vectors(view, member: int, t: int, cand_ids: list[int], task: TaskSpec | None,
                            candidates: list[dict] | None = None) -> list[list[float]]:
    """One `recbrew.verbalize.stats.dense_vector` per candidate (zeros when the task declares no statistics)."""
    if task is None or not task.stats.any:
        return [[0.0] * STATS_DIM for _ in cand_ids]
    m = view.member_stats(member, t, task)
    stats = ([c["stats"] for c in candidates] if candidates is not None
             else [view.candidate_stats(member, c, t, task) for c in cand_ids])
    return [dense_vector(m, s) for s in stats]


@dataclass
class Rendered:
    """One rendered request: its index in the task's requests, split, both views and whether text was injected."""

    index: int
    split: str
    text: dict
    structured: dict
    injected: bool = False
    member_injected: bool = False


def inject_rng(seed: int, task: TaskSpec, index: int, stream: int = 0) -> np.random.Generator:
    """The injection draws of request ``index`` of ``task``: a stream of its own, so a request renders the same
    whichever worker renders it and in whatever order. ``stream`` 1 draws the member's injection, apart from the
    candidates' (stream 0), so either share leaves the other's draws as they are."""
    return np.random.default_rng([seed + 3, zlib.crc32(task.name.encode()), index, *([stream] if stream else [])])


def render_requests(ctx: _Context, task: TaskSpec, renderer: Renderer, req: Requests, index: np.ndarray,
                    progress=None) -> list[Rendered]:
    """Render requests ``req`` of one task (``index[k]`` is row k's index among all the task's requests: it names
    the request and seeds its draws). Members the corpus lacks are skipped."""
    view = ctx.view
    fields = tuple(task.candidate_fields)
    days = ctx.rule.days_from_cutoff(req.member_id, req.timestamp)
    limit = ctx.last or 4 * renderer.task.history.max_items
    h = ctx.history
    out = []
    for k in range(len(req)):
        i = int(index[k])
        member, t, split = int(req.member_id[k]), int(req.timestamp[k]), str(req.split[k])
        if not view.has_member(member):
            continue
        lo, hi = req.offsets[k], req.offsets[k + 1]
        cand_ids = [int(c) for c in req.candidates[lo:hi]]
        labels = [int(x) for x in req.labels[lo:hi]]
        probs = [None if np.isnan(p) else float(p) for p in req.true_probs[lo:hi]]
        hidden = req.hide_skill[k] if req.hide_skill else None
        friends = view.connections(member, t)
        h_first, h_hi = h.before(member, t, int(req.pos[k]))
        history = h.entries(view, h_first, h_hi, t, task, limit)
        interactions = h_hi - h_first
        # "Past actions" counts what came before the request under the protocol (by record for order rules).
        network = {**view.network(member, t), "actions": interactions, "stats": view.member_stats(member, t, task)}
        collab = ctx.collab[task.name].for_request(split, i) if task.name in ctx.collab else None
        candidates = [view.candidate(member, c, t, task, friends, collab) for c in cand_ids]
        shown = candidates
        if ctx.inject_share and split == "train":
            rng = inject_rng(ctx.seed, task, i)
            if rng.random() < ctx.inject_share:
                shown = inject_one(candidates, fields, task.answer.words, rng)
        profile = original = view.member(member, hidden)
        if ctx.inject_member_share and split == "train":
            rng = inject_rng(ctx.seed, task, i, stream=1)
            if rng.random() < ctx.inject_member_share:
                profile = inject_member(profile, task.answer.words, rng)
        prompt = renderer.render(profile, shown, history, network=network)
        request_id = f"{task.name}/{split}/{i}"
        text = {
            "request_id": request_id, "task": task.name, "task_version": task.version, "kind": task.kind.value,
            "split_tag": task.split.value, "surface": task.surface, "member_id": member, "timestamp": t,
            "candidate_ids": cand_ids, "labels": labels, "true_probs": probs,
            "target": req.target[k] if req.target else None,
            "prefix": prompt.prefix, "segments": prompt.segments, "prefix_tokens": prompt.prefix_tokens,
            "segment_tokens": prompt.segment_tokens, "history_kept": prompt.history_kept,
            "history_cut": prompt.history_cut, "over_budget": prompt.over_budget,
            "member_interactions": interactions, "history_length": len(history),
            "days_from_cutoff": None if np.isnan(days[k]) else float(days[k]), "style": renderer.task.style,
            "record": int(req.pos[k]),
        }
        # Column order as it always was: ids, labels, then the fields.
        structured = {
            "request_id": request_id, "task": task.name, "split_tag": task.split.value, "surface": task.surface,
            "member_id": member, "timestamp": t, "candidate_ids": cand_ids, "labels": labels, "true_probs": probs,
            **structured_fields(view, member, t, cand_ids, fields, (h.item, h.action, h.surface, h.ts), h_first, h_hi,
                                ctx.last or STRUCTURED_HISTORY, task, candidates),
        }
        out.append(Rendered(i, split, text, structured, shown is not candidates, profile is not original))
        if progress is not None:
            progress.update(1)
    return out


def collect(rows: list[Rendered], text: _Columns, structured: _Columns, inject: bool, inject_member: bool) -> dict:
    """Add one task's rendered requests to the columns, in request order; returns per-split counts (``injected``,
    ``injected_member``: the training requests whose candidate / member text was injected, when asked for)."""
    counts = {split: 0 for split in text.data} | {"candidates": 0, "positives": 0}
    # Requests per split whose prompt keeps / could keep HISTORY_LINES or more history lines.
    kept, available = {split: 0 for split in text.data}, {split: 0 for split in text.data}
    counts |= {"history_kept": kept, "history_available": available}
    if inject:
        counts["injected"] = 0
    if inject_member:
        counts["injected_member"] = 0
    for row in sorted(rows, key=lambda r: r.index):
        text.add(row.split, row.text)
        structured.add(row.split, row.structured)
        counts[row.split] += 1
        counts["candidates"] += len(row.text["candidate_ids"])
        counts["positives"] += sum(row.text["labels"])
        kept[row.split] += row.text["history_kept"] >= HISTORY_LINES
        available[row.split] += row.text["history_length"] >= HISTORY_LINES
        if inject:
            counts["injected"] += row.injected
        if inject_member:
            counts["injected_member"] += row.member_injected
    return counts


#: The history depth the build summary counts requests at (`history_summary`).
HISTORY_LINES = 5


def history_summary(manifest: dict, split: str = "test", tag: str = "T1") -> dict | None:
    """How many of ``split``'s requests of ``tag`` tasks keep at least HISTORY_LINES history lines in their prompt,
    and how many have that many history entries before the request to keep (the token budget cuts the rest).

    ``shown`` restricts the counts to the tasks that show a history at all: a task without history groups (the
    catalog's ``pymk_connect_social`` judges from the two profiles and the ties between them alone) keeps none by design.
    None for a folder built before the counts were recorded, or without such requests."""
    rows = [t for t in manifest["tasks"].values() if t["split_tag"] == tag and "history_kept" in t]
    requests = sum(t.get(split, 0) for t in rows)
    if not requests:
        return None
    out = {"lines": HISTORY_LINES, "requests": requests,
           "kept": sum(t["history_kept"].get(split, 0) for t in rows),
           "available": sum(t["history_available"].get(split, 0) for t in rows)}
    if all("history_groups" in t for t in rows):  # folders built before it was recorded have no such count
        shown = [t for t in rows if t["history_groups"]]
        out["shown"] = {"requests": sum(t.get(split, 0) for t in shown),
                        "kept": sum(t["history_kept"].get(split, 0) for t in shown),
                        "available": sum(t["history_available"].get(split, 0) for t in shown)}
    return out


def history_line(manifest: dict) -> str | None:
    """The build summary's history line (test requests of T1 tasks), or None."""
    h = history_summary(manifest)
    if h is None:
        return None
    n, lines = h["requests"], h["lines"]
    whole = (f"{h['kept']:,} of {n:,} T1 test requests ({h['kept'] / n:.0%}) keep {lines} or more history lines in "
             f"the prompt; {h['available']:,} ({h['available'] / n:.0%}) have {lines} or more to keep")
    shown = h.get("shown")
    if shown is None or shown["requests"] in (0, n):
        return f"history: {whole}"
    s = shown["requests"]
    return (f"history: of the {s:,} T1 test requests whose task shows a history, {shown['kept']:,} "
            f"({shown['kept'] / s:.0%}) keep {lines} or more lines in the prompt and {shown['available']:,} "
            f"({shown['available'] / s:.0%}) have {lines} or more to keep; of all {n:,} (the other {n - s:,} are of "
            f"tasks that show none by design), {h['kept']:,} ({h['kept'] / n:.0%}) keep {lines} or more")


def split_rule(corpus: Corpus, cfg: BuildConfig) -> SplitRule:
    """The protocol's split rule for ``corpus`` (a ConfigError when the options do not fit together or the log)."""
    start, end = time_range(corpus)
    member_ids = member_end = None
    if cfg.split == "time" and cfg.split_scope == "member":
        inter = corpus.interactions
        m, ts = inter["member_id"].to_numpy(), inter["timestamp"].to_numpy()
        order = np.lexsort((ts, m))
        m, ts = m[order], ts[order]
        last = np.r_[m[1:] != m[:-1], True]
        member_ids, member_end = m[last], ts[last] + 1
    scope = "member" if cfg.split == "leave-last" else cfg.split_scope
    return SplitRule(cfg.split, scope, cfg.test_days, cfg.gap_days, cfg.test_fraction, cfg.val_days,
                     cfg.val_fraction, start, end, member_ids, member_end, val_in_order=cfg.val_in_order,
                     min_position=cfg.min_position, last_records=cfg.last_records)


def make_renderer(task: TaskSpec, env, tokenizer, cfg: BuildConfig, last: int | None) -> Renderer:
    """The task's renderer with the build's style, token budget and history window."""
    renderer = Renderer(task, env=env, tokenizer=tokenizer, style=cfg.style)
    history = {"max_tokens": cfg.max_tokens} if cfg.max_tokens else {}
    if last:
        history["max_items"] = last  # the window is the history: none of it is dropped before the budget
    if history:
        renderer.task = renderer.task.model_copy(update={"history": renderer.task.history.model_copy(update=history)})
    return renderer


def load_build_tokenizer(name: str):
    """The tokenizer that measures the token budget (None for ``none``)."""
    if name == "none":
        return None

    return load_tokenizer(name)


def render_shard(corpus: Corpus, rule: SplitRule, cfg: BuildConfig, plans: list[tuple[TaskSpec, Requests, np.ndarray]],
                 prompts_dir=None, progress=None, collab: dict | None = None) -> list[list[Rendered]]:
    """Render ``plans`` ((task, requests, their indices among the task's requests)) against ``corpus``: what one
    worker of a distributed build does with its members' requests (`recbrew.cluster.build_on_ray`). ``collab``:
    the rating models (`fit_collab`) of the tasks that declare ``stats.collab``."""
    ctx = _Context(CorpusView(corpus), HistoryIndex(corpus, rule.by_order), rule, parse_history(cfg.history),
                   cfg.inject_share, cfg.inject_member_share, cfg.seed, dict(collab or {}))
    env, tokenizer = make_environment(prompts_dir), load_build_tokenizer(cfg.tokenizer)
    return [render_requests(ctx, task, make_renderer(task, env, tokenizer, cfg, ctx.last), req, index, progress)
            for task, req, index in plans]


def build_examples(corpus_dir: str | Path, out: str | Path, cfg: BuildConfig, *, tasks_dir=None, prompts_dir=None,
                   force: bool = False, progress: bool = True, catalog: dict[str, TaskSpec] | None = None,
                   engine: str = "local", address: str | None = None, workers: int | None = None) -> dict:
    """Build the datasets for the chosen tasks into ``out`` (written aside, then moved in place).

    ``catalog`` hands the task specs in directly (e.g. those recorded in another examples folder); otherwise
    they come from ``tasks_dir`` or the shipped catalog. ``engine="ray"`` renders the requests on a Ray cluster
    (``address``, or a local one), partitioned by member over ``workers`` tasks: the folder is the same as a local
    build's.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already exists and is not empty; pass --force to replace it")
    catalog = dict(catalog) if catalog is not None else load_catalog(tasks_dir)
    names = cfg.tasks or sorted(catalog)
    _check_build(catalog, names, cfg, engine)
    corpus = Corpus.load(corpus_dir)
    rule = split_rule(corpus, cfg)
    start = _check_burn_in(corpus, rule, cfg)
    began = time.perf_counter()
    plans = _plan(corpus, rule, cfg, [catalog[name] for name in names], start)
    total = sum(len(r) for _, r, _ in plans)
    collab = {}
    if engine == "ray":
        rendered = build_on_ray(render_shard, corpus, rule, cfg, plans, prompts_dir=prompts_dir, address=address,
                                workers=workers, progress=progress)
    else:
        collab = fit_collab(corpus, rule, cfg, plans, progress)
        bar = tqdm(total=total, desc="rendering requests", unit="req", disable=not progress)
        rendered = render_shard(corpus, rule, cfg, plans, prompts_dir, bar, collab)
        bar.close()
    splits = rule.splits
    text, structured = _Columns(splits), _Columns(splits)
    summary = {task.name: {"version": task.version, "split_tag": task.split.value, "kind": task.kind.value,
                           "surface": task.surface, "history_groups": len(task.history.groups),
                           **collect(rows, text, structured, bool(cfg.inject_share), bool(cfg.inject_member_share))}
               for (task, _, _), rows in zip(plans, rendered, strict=True)}
    seconds = time.perf_counter() - began
    manifest = {
        "format": FORMAT,
        "corpus": str(Path(corpus_dir).resolve()), "config": asdict(cfg),
        "split": rule.describe(), "splits": splits,
        "tasks": summary,
        "task_specs": {task.name: spec_record(task) for task, _, _ in plans},
        "seconds": round(seconds, 2),
        "rows": {s: sum(v[s] for v in summary.values()) for s in splits},
    }
    with staged_directory(out) as staging:
        text.dataset_dict().save_to_disk(str(staging / "text"))
        structured.dataset_dict().save_to_disk(str(staging / "structured"))
        for name, models in collab.items():  # what serving renders the tasks' test-time prompts with
            models.full.save(collab_path(staging, name))
        if corpus.ids:  # the user's ids travel with the examples: scores and reports name them
            write_table(corpus.ids.to_table(), staging / IDS_FILE)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _check_build(catalog: dict, names: list[str], cfg: BuildConfig, engine: str) -> None:
    """What can be refused before the Corpus is read."""
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ConfigError(f"unknown task(s): {', '.join(unknown)}; `recbrew tasks list` shows the catalog")
    for name in ("inject_share", "inject_member_share"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"{name} {getattr(cfg, name):g}: a share of the training requests, from 0 to 1")
    check_engine(engine)
    parse_history(cfg.history)
    fitted = [n for n in names if catalog[n].stats.collab]
    if fitted and engine == "ray":
        raise ConfigError(f"task(s) {', '.join(fitted)} declare stats.collab, whose rating model a Ray build does not "
                          "fit; build them with --engine local")


def fit_collab(corpus: Corpus, rule: SplitRule, cfg: BuildConfig, plans, progress: bool = True) -> dict:
    """The rating models (`recbrew.verbalize.collab`) of the planned tasks that declare ``stats.collab``, fitted on
    what the split leaves to training: for a split in time over the whole log, nothing from the first held-out
    moment on."""
    before = None
    if rule.rule == "time" and rule.scope == "global":
        before = rule.validation_start or rule.cutoff
    echo = tqdm.write if progress else None
    return {task.name: fit_for_build(corpus, task, req, before, cfg.seed, echo)
            for task, req, _ in plans if task.stats.collab}


def _check_burn_in(corpus: Corpus, rule: SplitRule, cfg: BuildConfig) -> int:
    """The log's first timestamp, once the burn-in is known to leave training days before the held-out ones."""
    start, _ = time_range(corpus)
    first_held_out = rule.validation_start or rule.cutoff
    if cfg.burn_in_days < 0 or (rule.rule == "time" and rule.scope == "global"
                                and start + cfg.burn_in_days * DAY >= first_held_out):
        raise ConfigError(f"--burn-in-days {cfg.burn_in_days:g} leaves no training days before the "
                          f"{'validation start' if rule.validation_start else 'cutoff'} "
                          f"({(first_held_out - start) / DAY:.1f} days after the log starts)")
    return start


def _plan(corpus: Corpus, rule: SplitRule, cfg: BuildConfig, tasks: list[TaskSpec],
          start) -> list[tuple[TaskSpec, Requests, np.ndarray]]:
    """Each task's requests after the burn-in, the candidate cap and the sampling, before any rendering."""
    plans = []
    for task in tasks:
        req = build_requests(corpus, task, rule, cfg.seed, one_target=cfg.one_target)
        if cfg.burn_in_days:
            req = req.take(np.flatnonzero(req.timestamp >= start + cfg.burn_in_days * DAY))
        if task.kind == Kind.binary:
            req = _cap_candidates(req, cfg.max_candidates)
        req = _sample(req, cfg, task_rng(cfg.seed + 1, task), rule.by_order)
        plans.append((task, req, np.arange(len(req))))
    return plans
