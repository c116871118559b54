"""`run_eval`: every model on the same test requests -> metrics -> report.html / report.md / report.json, and
every candidate's scores in scores.csv."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recbrew.cluster import check_engine
from recbrew.errors import UserError
from recbrew.eval.compare import AucBootstrap, CompareConfig, bootstrap_aucs, compare, fmt_delta, paired_delta
from recbrew.eval.export import SCORES_FILE, example_rankings, write_scores
from recbrew.eval.report import fmt, unit_text, write_report
from recbrew.eval.scorers import (
    Model,
    RayOptions,
    Scores,
    cache_path,
    describe,
    examples_fingerprint,
    load_cached,
    parse_models,
    run_model,
    save_cached,
)
from recbrew.eval.table import RequestTable
from recbrew.examples.folder import Examples
from recbrew.scoring.registry import LM_ENGINES

if TYPE_CHECKING:
    from recbrew.tasks.spec import TaskSpec

PACKAGES = ("recbrew", "numpy", "scikit-learn", "torch", "transformers", "peft", "datasets", "matplotlib")


@dataclass
class EvalResult:
    """Paths of the written reports, the full results and the T1/T2 macro-AUC table per model.

    ``macro_auc[name]`` holds ``T1``, ``T2`` (macro AUC), ``T1_ci``, ``T2_ci`` (bootstrap intervals) and
    ``gap_T1``, ``gap_T2`` (to the oracle); ``bootstrap`` keeps the per-task AUC resamples that
    :meth:`paired` compares two models on.
    """

    paths: dict[str, Path]
    results: dict
    meta: dict
    macro_auc: dict[str, dict[str, float | None]] = field(default_factory=dict)
    bootstrap: AucBootstrap | None = field(default=None, repr=False)

    def paired(self, a: str, b: str) -> dict:
        """Paired bootstrap of ``a`` minus ``b`` on identical resamples: ``delta_T1``, ``ci_T1``, ``n_T1_tasks``,
        the same for T2, and ``text`` ('ΔT1 +0.0120 [-0.0040, +0.0270], ΔT2 …')."""
        return paired_delta(self, a, b)  # without the resamples: the comparisons the results hold

    @property
    def reference(self) -> str | None:
        """The model the report's paired comparisons are against (by default the best baseline by T1 macro AUC)."""
        return (self.results.get("paired") or {}).get("reference")

    def table(self) -> str:
        """The macro-AUC table (T1, T2 with intervals, gap to the oracle) as aligned text, then the paired
        differences against the reference model."""
        def ci(v) -> str:
            return f"[{v[0]:.3f}, {v[1]:.3f}]" if v else "-"

        width = max([len(n) for n in self.macro_auc] + [5])
        pct = f"{self.results['config']['level'] * 100:g}%"
        lines = [f"{'model':{width}}  {'T1 AUC':>8}  {pct + ' CI':>14}  {'T2 AUC':>8}  {pct + ' CI':>14}  "
                 f"{'gap T1':>8}  {'gap T2':>8}"]
        for name, row in self.macro_auc.items():
            lines.append(f"{name:{width}}  {fmt(row['T1']):>8}  {ci(row.get('T1_ci')):>14}  {fmt(row['T2']):>8}  "
                         f"{ci(row.get('T2_ci')):>14}  {fmt(row.get('gap_T1')):>8}  {fmt(row.get('gap_T2')):>8}")
        paired = self.results.get("paired")
        if paired and paired["rows"]:
            how = (f"{pct} interval on the same resamples of {unit_text(self.results)}"
                   if self.results["config"]["bootstrap"] else "no intervals (bootstrap = 0)")
            lines.append(f"paired vs {paired['reference']} ({paired['rule']}): Δ macro AUC, {how}")
            for name, d in paired["rows"].items():
                lines.append(f"  {name:{width}}  {'ΔT1 ' + fmt_delta(d['delta_T1'], d['ci_T1']):31}  "
                             f"ΔT2 {fmt_delta(d['delta_T2'], d['ci_T2'])}")
        return "\n".join(lines)


def fuse_logits(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Per candidate, the sigmoid of the mean logit of several models' probabilities (NaN where one is NaN)."""
    eps = 1e-6
    p = np.clip(np.stack([np.asarray(s, np.float64) for s in scores]), eps, 1 - eps)
    return 1 / (1 + np.exp(-np.log(p / (1 - p)).mean(0)))


def has_true_probs(requests: Sequence[dict]) -> bool:
    """Whether every rankable request carries a true probability for each candidate (none None or NaN)."""
    ranked = [r for r in requests if r.get("kind") != "generative" and r.get("candidate_ids")]
    if not ranked or any(r.get("true_probs") is None or len(r["true_probs"]) != len(r["candidate_ids"])
                         for r in ranked):
        return False
    # float conversion turns None into NaN: one test covers both.
    probs = np.array([p for r in ranked for p in r["true_probs"]], dtype=np.float64)
    return bool(np.isfinite(probs).all())


def versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class _TestSet:
    """The test requests every model scores: the examples folder they come from, its catalog, the table."""

    examples: Path
    folder: Examples
    catalog: dict[str, TaskSpec]
    requests: list[dict]
    table: RequestTable


@dataclass
class _Source:
    """Where one model reads its test requests and prompts: the shared examples folder or its own."""

    examples: Path
    requests: list[dict]
    catalog: dict[str, TaskSpec]


@dataclass
class _Lineup:
    """The models in report order (the oracle first where it joins) and those that read their own examples."""

    entries: list[Model]
    oracle: str | None
    own: dict[str, _Source] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.entries]


@dataclass
class _Scored:
    """Every row's scores and generations on the test table, and what the report says of each run."""

    scores: dict[str, np.ndarray] = field(default_factory=dict)
    generations: dict[str, dict[int, str] | None] = field(default_factory=dict)
    run_info: list[dict] = field(default_factory=list)


def _ray_options(engine: str, ray: RayOptions | None) -> RayOptions | None:
    """The Ray options the language models score with: None unless ``engine`` is ray (then defaults if not given)."""
    check_engine(engine)
    if engine == "ray":
        return ray or RayOptions()
    if ray is not None:
        raise UserError("Ray options need engine='ray' (--engine ray)")
    return None


def _check_lm_engine(lm_engine: str, ray: RayOptions | None) -> None:
    """One line for an engine that is not one, or for vLLM asked inside Ray actors (they run the hf engine)."""
    if lm_engine not in LM_ENGINES:
        raise UserError(f"--llm-engine {lm_engine!r}: choose {' or '.join(LM_ENGINES)}")
    if lm_engine != "hf" and ray is not None:
        raise UserError(f"--llm-engine {lm_engine} scores in this process; with --engine ray the actors score "
                        "through hf: drop one of the two")


def _out_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    return out


def _first_per_task(requests: list[dict], max_per_task: int | None) -> list[dict]:
    """The first ``max_per_task`` requests of each task (all of them when None), in their order."""
    if max_per_task is None:
        return requests
    kept: Counter = Counter()
    first = []
    for r in requests:
        kept[r["task"]] += 1
        if kept[r["task"]] <= max_per_task:
            first.append(r)
    return first


def _test_set(examples: Path, tasks: Sequence[str] | None, tasks_dir: str | Path | None,
              max_per_task: int | None) -> _TestSet:
    """The examples folder's test requests (of ``tasks``, the first ``max_per_task`` of each) and its catalog."""
    folder = Examples.open(examples)
    catalog = folder.catalog(tasks_dir)  # before minutes of scoring: a conflicting --tasks-dir fails here
    requests = _first_per_task(folder.requests("test", tasks), max_per_task)
    if not requests:
        raise UserError(f"{examples}: no test requests" + (f" for tasks {', '.join(tasks)}" if tasks else ""))
    return _TestSet(examples, folder, catalog, requests, RequestTable.from_requests(requests))


def _lineup(specs: Mapping[str, object], requests: Sequence[dict], include_oracle: bool) -> _Lineup:
    """A Model per spec, with the oracle first when asked for, not given, and every request has true probs."""
    entries: list[Model] = [describe(name, spec) for name, spec in specs.items()]
    oracle = next((m.name for m in entries if m.kind == "oracle"), None)
    if include_oracle and oracle is None and has_true_probs(requests):
        entries.insert(0, describe("oracle", "oracle"))
        oracle = "oracle"
    return _Lineup(entries, oracle)


def _check_fusions(fusions: Mapping[str, Sequence[str]], names: list[str]) -> None:
    for name, parts in fusions.items():
        if name in names or not parts or any(p not in names for p in parts):
            raise UserError(f"fusion {name!r}: its models ({', '.join(parts) or 'none'}) must be among the models "
                            f"({', '.join(names)}) and its name must be new")


def _own_sources(model_examples: Mapping[str, str | Path], names: list[str], test: _TestSet,
                 tasks: Sequence[str] | None, tasks_dir: str | Path | None) -> dict[str, _Source]:
    """``--model-examples``: each named model's own examples folder, checked to hold the same test requests."""
    unknown = sorted(set(model_examples) - set(names))
    if unknown:
        raise UserError(f"--model-examples names {', '.join(unknown)}, not among the models: {', '.join(names)}")
    return {name: _same_requests(name, Path(path), test.requests, tasks, tasks_dir)
            for name, path in model_examples.items()}


def _check_reference(reference: str | None, names: list[str], fusions: Mapping[str, Sequence[str]]) -> None:
    if reference is not None and reference not in names + list(fusions):  # before minutes of scoring
        raise UserError(f"reference model {reference!r} is not among the models: {', '.join(names)}")


def _same_requests(name: str, path: Path, requests: Sequence[dict], tasks: Sequence[str] | None,
                   tasks_dir: str | Path | None) -> _Source:
    """A model's own examples folder: its test requests in the order of ``requests`` (the same ids, candidates
    and labels, or one error line), and its catalog."""
    folder = Examples.open(path)
    theirs = {r["request_id"]: r for r in folder.requests("test", tasks)}
    out = []
    for r in requests:
        other = theirs.get(r["request_id"])
        if other is None or list(other["candidate_ids"]) != list(r["candidate_ids"]) \
                or list(other["labels"]) != list(r["labels"]):
            what = "lacks" if other is None else "has other candidates or labels in"
            raise UserError(f"--model-examples {name}={path}: it {what} test request {r['request_id']}; build both "
                            "folders from the same corpus with the same split options")
        out.append(other)
    return _Source(path, out, folder.catalog(tasks_dir))


def _score_model(m: Model, source: _Source, key_parts: dict, out: Path, table: RequestTable, *, use_cache: bool,
                 max_new_tokens: int, progress: bool, device: str | None, ray: RayOptions | None,
                 lm_engine: str) -> Scores:
    """One model's scores on ``table``: from the cache under ``out`` when it holds them, else run and cached."""
    if m.kind == "lm" and lm_engine != "hf":  # its own cache entry; the hf engine's keys stay as they were
        key_parts = {**key_parts, "lm_engine": lm_engine}
    path = cache_path(out, m, key_parts) if use_cache else None
    got = load_cached(path, table)
    if got is None:
        got = run_model(m, source.requests, table, examples=source.examples, max_new_tokens=max_new_tokens,
                        progress=progress, device=device, catalog=source.catalog, ray=ray, lm_engine=lm_engine)
        save_cached(path, table, got)
        m.release()
    return got


def _run_row(m: Model, got: Scores, ray: RayOptions | None, own: _Source | None, lm_engine: str) -> dict:
    """What the report's Run table says of one model's scoring."""
    engine = "ray" if ray is not None else lm_engine
    return {"name": m.name, "spec": m.spec or type(m.scorer).__name__, "kind": m.kind,
            "fingerprint": (m.fingerprint or "-")[:12], "cached": got.cached,
            "seconds": round(got.seconds, 3),
            **({"engine": engine} if engine != "hf" and m.kind == "lm" and not got.cached else {}),
            **({"examples": str(own.examples)} if own is not None else {})}


def _score_all(lineup: _Lineup, test: _TestSet, out: Path, *, tasks: Sequence[str] | None, use_cache: bool,
               max_new_tokens: int, progress: bool, device: str | None, ray: RayOptions | None,
               lm_engine: str) -> _Scored:
    """Every model of the lineup on the same test table, each on its own examples where it has them."""
    key_parts = {"examples": examples_fingerprint(test.examples), "tasks": sorted(tasks) if tasks else None,
                 "max_new_tokens": max_new_tokens}
    shared = _Source(test.examples, test.requests, test.catalog)
    scored = _Scored()
    for m in lineup.entries:
        own = lineup.own.get(m.name)
        source, m_key = shared, key_parts
        if own is not None:
            source, m_key = own, {**key_parts, "examples": examples_fingerprint(own.examples)}
        got = _score_model(m, source, m_key, out, test.table, use_cache=use_cache, max_new_tokens=max_new_tokens,
                           progress=progress, device=device, ray=ray, lm_engine=lm_engine)
        scored.scores[m.name] = got.scores
        scored.generations[m.name] = got.generations if (m.can_generate or got.generations) else None
        scored.run_info.append(_run_row(m, got, ray, own, lm_engine))
    return scored


def _add_fusions(scored: _Scored, fusions: Mapping[str, Sequence[str]]) -> None:
    """A row per fusion: each candidate scored by the mean logit of its models (no model runs again)."""
    for name, parts in fusions.items():
        scored.scores[name], scored.generations[name] = fuse_logits([scored.scores[p] for p in parts]), None
        scored.run_info.append({"name": name, "spec": "mean logit of " + " + ".join(parts), "kind": "fusion",
                                "fingerprint": "-", "cached": True, "seconds": 0.0})


def _meta(test: _TestSet, run_info: list[dict]) -> dict:
    """The report's Run section: the data, the models' runs, the package versions, when."""
    manifest = test.folder.manifest
    table = test.table
    return {"examples": str(test.examples), "data_seed": manifest.get("config", {}).get("seed"),
            "cutoff": manifest.get("split", {}).get("cutoff"), "requests": len(table),
            "task_versions": {t: manifest["tasks"][t]["version"] for t in table.tasks() if t in manifest.get("tasks", {})},
            "tasks": table.tasks(), "models": run_info, "versions": versions(),
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _write(out: Path, test: _TestSet, scores: dict[str, np.ndarray], results: dict, meta: dict,
           k: int) -> dict[str, Path]:
    """scores.csv and the reports under ``out`` (the results gain the example rankings); their paths."""
    ids = test.folder.ids
    results["rankings"] = example_rankings(test.table, scores, ids, k)
    write_scores(out / SCORES_FILE, test.table, scores, ids)
    paths = write_report(out, results, meta)
    paths["scores"] = out / SCORES_FILE
    return paths


def _macro_auc(results: dict) -> dict[str, dict[str, float | None]]:
    summary = results["summary"]
    return {n: {"T1": summary[n]["auc_T1"], "T2": summary[n]["auc_T2"], "T1_ci": summary[n]["auc_T1_ci"],
                "T2_ci": summary[n]["auc_T2_ci"], "gap_T1": summary[n].get("oracle_gap_T1"),
                "gap_T2": summary[n].get("oracle_gap_T2")} for n in results["models"]}


def run_eval(examples_dir: str | Path, models: Mapping[str, object] | Sequence[str], out_dir: str | Path, *,
             tasks: Sequence[str] | None = None, k: int = 3, bootstrap: int = 200, seed: int = 0,
             use_cache: bool = True, max_new_tokens: int = 16, progress: bool = True, device: str | None = None,
             include_oracle: bool = True, unit: str = "auto", min_positives: int = 20,
             reference: str | None = None, tasks_dir: str | Path | None = None,
             max_per_task: int | None = None, fusions: Mapping[str, Sequence[str]] | None = None,
             model_examples: Mapping[str, str | Path] | None = None, engine: str = "local",
             ray: RayOptions | None = None, lm_engine: str = "hf") -> EvalResult:
    """Score ``models`` ({name: spec or Scorer}, or a list of specs) on the test split and write the reports.

    With ``include_oracle`` the oracle joins as a reference when every request carries true probabilities.
    ``unit`` is what the bootstrap resamples within a task (see :class:`CompareConfig`); tasks with fewer
    than ``min_positives`` positives are flagged. The paired comparisons are against ``reference``, by
    default the best baseline (popularity or a trained baseline folder) by T1 macro AUC. Language models read the
    answer words from the task specs recorded in the examples; ``tasks_dir`` is checked against them.
    ``max_per_task`` scores only the first N test requests of each task (quick looks, sweeps).
    ``fusions`` ({name: [model, model, ...]}) adds rows that score each candidate by the mean of those models'
    logits (a reference for what a score blend gives; no model is run twice).
    ``model_examples`` ({name: examples folder}) lets a model read its prompts and structured views from another
    examples folder built from the same corpus and split (a prompt ablation: the same test requests, candidates
    and labels, checked, with other prompt contents); the comparison stays paired.
    ``engine="ray"`` scores the language models on Ray actors (``ray``: the cluster's address, the actors and
    their CPUs; a local Ray by default); the other models score here, as they take seconds.
    ``lm_engine`` is what the language models score through here: ``hf`` (the multi-item path, the faster one on
    a CPU) or ``vllm`` (vLLM's offline engine with prefix caching; the same scores within 1e-3).
    """
    fusions, model_examples = fusions or {}, model_examples or {}
    ray = _ray_options(engine, ray)
    _check_lm_engine(lm_engine, ray)
    cfg = CompareConfig(k=k, bootstrap=bootstrap, seed=seed, unit=unit, min_positives=min_positives)
    cfg.check()
    out = _out_folder(out_dir)
    specs = dict(models) if isinstance(models, Mapping) else parse_models(list(models))
    test = _test_set(Path(examples_dir), tasks, tasks_dir, max_per_task)
    lineup = _lineup(specs, test.requests, include_oracle)
    _check_fusions(fusions, lineup.names)
    lineup.own = _own_sources(model_examples, lineup.names, test, tasks, tasks_dir)
    _check_reference(reference, lineup.names, fusions)

    scored = _score_all(lineup, test, out, tasks=tasks, use_cache=use_cache, max_new_tokens=max_new_tokens,
                        progress=progress, device=device, ray=ray, lm_engine=lm_engine)
    _add_fusions(scored, fusions)
    baselines = [m.name for m in lineup.entries if m.kind in ("popularity", "baseline")] or None
    boot = bootstrap_aucs(test.table, scored.scores, cfg)
    results = compare(test.table, scored.scores, scored.generations, cfg, oracle=lineup.oracle,
                      reference=reference, baselines=baselines, boot=boot)
    meta = _meta(test, scored.run_info)
    paths = _write(out, test, scored.scores, results, meta, k)
    return EvalResult(paths=paths, results=results, meta=meta, macro_auc=_macro_auc(results), bootstrap=boot)
