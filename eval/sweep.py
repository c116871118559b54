"""Scaling sweeps at small scale: macro AUC vs training data, model size and history length.

Each point runs ``examples -> train -> score -> metrics``:

- ``data``: the same examples, training capped at N requests (baselines: ``train.max_rows``;
  language models: ``TrainConfig.max_examples``);
- ``model`` (language models only): recbrew-tiny presets ``tiny`` / ``small`` / ``base`` (built from
  the examples' Corpus) or any model spec such as ``smollm2``;
- ``history`` (language models only): examples rebuilt with ``BuildConfig(max_tokens=N)``, so
  prompts keep less or more history.

Training happens in :func:`train_point` only. A finished point is saved as ``point.json`` and reused
when the sweep runs again with the same settings. The trend is a least-squares fit of
AUC = a + b * log10(size), drawn over the points.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from recbrew.config import shipped_or_none
from recbrew.data.io import atomic_write_text
from recbrew.errors import ConfigError
from recbrew.eval.plots import trend_figure
from recbrew.eval.run import run_eval
from recbrew.eval.scorers import examples_fingerprint
from recbrew.examples.build import BuildConfig, build_examples
from recbrew.examples.folder import Examples
from recbrew.models.loading import load_model
from recbrew.models.tiny import build_tiny
from recbrew.reports import fmt, html_table, img, md_table
from recbrew.train import TrainConfig, train
from recbrew.train.config import load_config

AXES = ("data", "model", "history")
BASELINE_FAMILIES = ("lirank", "ligr", "dcnv2")
FAMILIES = (*BASELINE_FAMILIES, "llm")
TINY_PRESETS = ("tiny", "small", "base")
X_LABELS = {"data": "labelled training items", "model": "parameters", "history": "max prompt tokens"}


@dataclass
class SweepConfig:
    """One sweep: an axis, its values and how each point is trained."""

    examples: Path
    out: Path
    axis: str = "data"
    values: list = field(default_factory=list)
    family: str = "lirank"
    #: Language models: the model trained on data/history points (a tiny preset or any spec).
    base_model: str = "tiny"
    #: Training requests of model/history points (None: all).
    max_examples: int | None = None
    #: Language models: optimizer steps per point; baselines: epochs come from ``overrides``.
    max_steps: int = 50
    lora: bool | None = None
    seed: int = 0
    tasks: list[str] | None = None
    overrides: list[str] = field(default_factory=list)
    k: int = 3
    progress: bool = True
    #: Language models: a training config (name or path, e.g. ``smollm2-cpu``) each point trains with; the
    #: point's size (``max_examples``), seed and tasks go on top. None: a plain config of ``base_model``.
    train_config: str | None = None
    #: Score at most this many test requests per task (None: all).
    max_test: int | None = None

    def check(self) -> None:
        if self.axis not in AXES:
            raise ConfigError(f"unknown sweep axis {self.axis!r}; choose one of {', '.join(AXES)}")
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if self.family in BASELINE_FAMILIES and self.axis != "data":
            raise ConfigError(f"the {self.axis} axis needs a language model (--family llm); classic rankers "
                              "sweep the data axis")
        if not self.values:
            raise ConfigError("no sweep values: pass e.g. --values 100,300,1000")
        if self.axis in ("data", "history"):
            try:
                self.values = [int(v) for v in self.values]
            except (TypeError, ValueError):
                raise ConfigError(f"the {self.axis} axis takes whole numbers, got {self.values}") from None
            if min(self.values) < 1:
                raise ConfigError(f"the {self.axis} axis takes positive numbers, got {self.values}")
        else:
            self.values = [str(v) for v in self.values]


@dataclass
class Point:
    axis: str
    value: int | str
    label: str
    size: float | None = None
    model_dir: str | None = None
    examples: str | None = None
    auc_T1: float | None = None
    auc_T2: float | None = None
    train_info: dict = field(default_factory=dict)


def point_key(cfg: SweepConfig, value, examples: Path) -> str:
    parts = {"family": cfg.family, "axis": cfg.axis, "value": value, "base": cfg.base_model,
             "max_examples": cfg.max_examples, "max_steps": cfg.max_steps, "lora": cfg.lora, "seed": cfg.seed,
             "tasks": cfg.tasks, "overrides": cfg.overrides, "examples": examples_fingerprint(examples)}
    # Settings added later join the key only when set, so earlier sweeps keep their finished points.
    parts.update({k: v for k, v in (("train_config", cfg.train_config), ("max_test", cfg.max_test)) if v is not None})
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def point_examples(cfg: SweepConfig, value) -> Path:
    """The examples a point trains and scores on: the sweep's own, or rebuilt with a token budget."""
    if cfg.axis != "history":
        return cfg.examples

    out = cfg.out / "examples" / f"max_tokens-{value}"
    if (out / "manifest.json").is_file():
        return out
    folder = Examples.open(cfg.examples)
    base = folder.config
    known = BuildConfig.__dataclass_fields__
    # The same tasks as the sweep's examples, from the specs recorded there (the user's own tasks included).
    build_examples(folder.corpus_dir("the history sweep rebuilds the examples from it"), out,
                   BuildConfig(**{**{k: v for k, v in base.items() if k in known}, "max_tokens": int(value)}),
                   progress=cfg.progress, catalog=folder.catalog())
    return out


def _parameters(spec: str) -> int:
    model, _ = load_model(spec, device="cpu")
    return sum(p.numel() for p in model.parameters())


def train_point(cfg: SweepConfig, value, examples: Path, out: Path) -> tuple[str, float, dict]:
    """Train one point's model into ``out``: (model spec for eval, size on the axis, training info)."""
    if cfg.family in BASELINE_FAMILIES:
        from recbrew.baselines.config import run_config  # lazy: loads torch
        from recbrew.baselines.train import train_model  # lazy: loads torch

        overrides = [*cfg.overrides, f"train.seed={cfg.seed}", f"train.max_rows={int(value)}"]
        rc = run_config(cfg.family, shipped_or_none("baselines", cfg.family), overrides)
        _, _, log = train_model(rc, examples, out, progress=cfg.progress)
        info = {"train_requests": log["train_requests"], "parameters": log["parameters"],
                "best_val_auc": log.get("best_val_auc")}
        return str(out), float(log["train_requests"] + log["val_requests"]), info

    if cfg.train_config is not None:
        return _train_with_config(cfg, value, examples, out)
    model = str(value) if cfg.axis == "model" else cfg.base_model
    if model in TINY_PRESETS:
        folder = cfg.out / "models" / f"recbrew-tiny-{model}-seed{cfg.seed}"
        if not (folder / "config.json").is_file():
            corpus = Examples.open(examples).corpus_dir("the tiny model's vocabulary is built from it")
            build_tiny(corpus, folder, model, seed=cfg.seed, force=True)
        model = str(folder)
    cap = int(value) if cfg.axis == "data" else cfg.max_examples
    # Randomly initialized tiny models learn little through an adapter: they are fine-tuned fully.
    lora = cfg.lora if cfg.lora is not None else not Path(model).is_dir()
    result = train(TrainConfig(model=model, examples=str(examples), out=str(out), max_steps=cfg.max_steps,
                               max_examples=cap, seed=cfg.seed, lora=lora, tasks=cfg.tasks, resume=False),
                   progress=cfg.progress)
    if cfg.axis == "model":
        size = float(_parameters(model))
    else:
        size = float(cap or 0) if cfg.axis == "data" else float(value)
    info = {"final_loss": result.final_loss, "val_macro_auc": result.val_macro_auc, "steps": result.steps,
            "seconds": round(result.seconds, 1), "base_model": model, "lora": lora}
    return str(result.model_dir), size, info


def _train_with_config(cfg: SweepConfig, value, examples: Path, out: Path) -> tuple[str, float, dict]:
    """A language-model point trained with ``cfg.train_config`` (its recipe: depth, LoRA, cache, epochs)."""
    overrides = [f"examples={examples}", f"out={out}", f"seed={cfg.seed}", "resume=false", "eval_requests=0"]
    if cfg.axis == "data":
        overrides.append(f"max_examples={int(value)}")
    elif cfg.axis == "model":
        overrides.append(f"model={value}")
    if cfg.tasks:
        overrides.append(f"tasks={','.join(cfg.tasks)}")
    result = train(load_config(cfg.train_config, overrides), progress=cfg.progress)
    items = sum(result.log.get("mix", {}).values())
    # The data axis counts what the model learns from: labelled training items (candidates, listwise questions).
    size = float(items) if cfg.axis == "data" else float(value) if cfg.axis == "history" else float(_parameters(str(value)))
    info = {"final_loss": result.final_loss, "steps": result.steps, "seconds": round(result.seconds, 1),
            "labelled_items": items, "train_config": cfg.train_config}
    return str(result.model_dir), size, info


def score_point(cfg: SweepConfig, label: str, spec: str, examples: Path, out: Path) -> dict[str, float | None]:
    res = run_eval(examples, {label: spec}, out, tasks=cfg.tasks, k=cfg.k, bootstrap=0, progress=cfg.progress,
                   max_per_task=cfg.max_test,
                   include_oracle=False)
    return res.macro_auc[label]


def run_point(cfg: SweepConfig, value) -> Point:
    """examples -> train -> score -> metrics for one value, reusing a finished point with the same settings."""
    label = f"{cfg.axis}-{value}"
    folder = cfg.out / "points" / label.replace("/", "_")
    examples = point_examples(cfg, value)
    key = point_key(cfg, value, examples)
    saved = folder / "point.json"
    if saved.is_file():
        data = json.loads(saved.read_text())
        if data.get("key") == key:
            data.pop("key")
            return Point(**data)
    spec, size, info = train_point(cfg, value, examples, folder / "model")
    macro = score_point(cfg, label, spec, examples, folder / "eval")
    point = Point(cfg.axis, value, label, size, spec, str(examples), macro["T1"], macro["T2"], info)
    atomic_write_text(saved, json.dumps({**asdict(point), "key": key}, indent=1, default=str))
    return point


def fit_trend(points: list[Point], attr: str) -> dict | None:
    """Least squares AUC = intercept + slope * log10(size) over points with a size and a value; r2 too."""
    xy = [(p.size, getattr(p, attr)) for p in points if p.size and p.size > 0 and getattr(p, attr) is not None]
    if len(xy) < 2 or len({x for x, _ in xy}) < 2:
        return None
    x = np.log10([a for a, _ in xy])
    y = np.array([b for _, b in xy])
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * x
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return {"slope": round(float(slope), 6), "intercept": round(float(intercept), 6), "r2": round(r2, 6),
            "per_decade": round(float(slope), 6)}


@dataclass
class SweepResult:
    points: list[Point]
    fits: dict[str, dict | None]
    paths: dict[str, Path]

    def table(self) -> str:
        lines = [f"{'point':24} {'size':>12} {'T1 AUC':>8} {'T2 AUC':>8}"]
        lines += [f"{p.label:24} {p.size or 0:12.0f} {fmt(p.auc_T1):>8} {fmt(p.auc_T2):>8}" for p in self.points]
        for tag, f in self.fits.items():
            if f:
                lines.append(f"trend {tag}: AUC = {f['intercept']:.4f} + {f['slope']:.4f} * log10(size) (r2 {f['r2']:.3f})")
        return "\n".join(lines)


def run_sweep(cfg: SweepConfig) -> SweepResult:
    """Every point of the sweep, the fitted trends and sweep.json / sweep.md / sweep.html under ``cfg.out``."""
    cfg.check()

    Examples.open(cfg.examples)  # one clear error when it is not an examples folder
    points = [run_point(cfg, v) for v in cfg.values]
    fits = {"T1": fit_trend(points, "auc_T1"), "T2": fit_trend(points, "auc_T2")}
    series = {tag: [(p.size, getattr(p, f"auc_{tag}")) for p in points if p.size] for tag in ("T1", "T2")}
    title = f"{cfg.family}: macro AUC vs {X_LABELS[cfg.axis]}"
    figure = trend_figure(title, X_LABELS[cfg.axis], series, fits)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    doc = {"config": settings, "points": [asdict(p) for p in points], "fits": fits}
    header = ["point", X_LABELS[cfg.axis], "macro AUC T1", "macro AUC T2", "model"]
    rows = [[p.label, f"{p.size:g}" if p.size else "n/a", fmt(p.auc_T1), fmt(p.auc_T2), str(p.model_dir)]
            for p in points]
    trend_lines = [f"- {tag}: AUC = {f['intercept']:.4f} + {f['slope']:.4f} x log10(size), r2 = {f['r2']:.3f}"
                   for tag, f in fits.items() if f] or ["- too few points for a trend"]
    md = "\n".join([f"# recbrew sweep: {title}", "", md_table(header, rows), "", "Fitted trends:", "",
                    *trend_lines, ""])
    page = "\n".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>recbrew sweep</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:24px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:3px 7px}</style></head><body>",
        f"<h1>{title}</h1>", html_table(header, rows), img(figure, "trend"),
        "<ul>" + "".join(f"<li>{line[2:]}</li>" for line in trend_lines) + "</ul>",
        '<script>document.body.setAttribute("data-rendered","1");</script></body></html>'])
    paths = {"json": atomic_write_text(cfg.out / "sweep.json", json.dumps(doc, indent=1, default=str)),
             "md": atomic_write_text(cfg.out / "sweep.md", md), "html": atomic_write_text(cfg.out / "sweep.html", page)}
    return SweepResult(points, fits, paths)
