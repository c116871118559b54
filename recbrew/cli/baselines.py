"""`recbrew baselines ...`: train and score the classic rankers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from recbrew.config import shipped_or_none
from recbrew.errors import UserError
from recbrew.scoring.registry import family_of, load_scorer

app = typer.Typer(help="Train and score the classic rankers: LiRank, LiGR, DCNv2, popularity.", no_args_is_help=True)

TRAINABLE = ("lirank", "ligr", "dcnv2", "popularity")


def _check_out(out: Path, force: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (force or resume):
        raise UserError(f"{out} already exists and is not empty; pass --force to overwrite its model "
                        "or --resume to continue from its checkpoint")


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="lirank, ligr, dcnv2 or popularity.")],
    examples: Annotated[Path, typer.Option("--examples", help="Examples built by `recbrew data build`.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write (model.pt, train.json, checkpoint.pt).")],
    config: Annotated[str | None, typer.Option("--config", help="A YAML file, or a shipped config by its path under "
                                               "configs/ (lirank, movielens/lirank = movielens/baselines/lirank; "
                                               "default: configs/baselines/MODEL.yaml).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="section.field=value overrides, e.g. train.epochs=3.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --out/checkpoint.pt.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Train a ranker on the T1 training requests; the folder loads back with `recbrew.baselines.load_scorer`."""
    if model not in TRAINABLE:
        raise UserError(f"unknown model {model!r} (one of: {', '.join(TRAINABLE)})")
    _check_out(out, force, resume)
    if model == "popularity":
        from recbrew.baselines.features import load_rows  # lazy: loads torch
        from recbrew.baselines.popularity import Popularity, PopularityConfig  # lazy: loads torch

        if overrides:
            raise UserError("popularity takes no overrides")
        pop = Popularity.fit(load_rows(examples, "train", split_tag="T1"), PopularityConfig())
        typer.echo(f"wrote {pop.save(out)}")
        return
    from recbrew.baselines.config import run_config  # lazy: loads torch
    from recbrew.baselines.train import train_model  # lazy: loads torch

    cfg = run_config(model, config if config is not None else shipped_or_none("baselines", model), overrides)
    _, _, log = train_model(cfg, examples, out, resume=resume, progress=progress)
    comp = log["compression"]["total"]
    typer.echo(f"{model}: best epoch {log['best_epoch']}, validation macro AUC {log['best_val_auc']}, "
               f"{log['parameters']:,} parameters, id tables {comp['ids']:,} ids in {comp['rows']:,} rows "
               f"(QR x{comp['ratio']}), {log['seconds']:.0f} s -> {out}")


def scorer_for(spec: str, examples: Path, quantize_bits: int | None = None):
    """'oracle', 'popularity' (fitted on the examples' T1 training requests) or a model folder
    (`recbrew.scoring.registry`)."""
    from recbrew.baselines.scorer import load_scorer as load_baseline  # lazy: loads torch

    if family_of(spec).name == "lm":  # not a classic ranker: the baseline loader says what is missing
        return load_baseline(spec)
    return load_scorer(spec, examples=examples, quantize_bits=quantize_bits)


def model_labels(items: Sequence[str]) -> dict[str, str]:
    """``--model`` values -> {label: spec}: ``NAME=SPEC`` labels SPEC NAME, a bare SPEC by its folder's name
    (``oracle`` and ``popularity`` by themselves). Two models with one label are refused."""
    out: dict[str, str] = {}
    for item in items:
        name, named, spec = item.partition("=")
        if not named or Path(item).exists():  # a folder whose name holds '=' is a bare folder
            name, named, spec = "", "", item
        name, spec = name.strip(), spec.strip()
        if not spec or (named and not name):
            raise UserError(f"--model {item!r}: write DIR, oracle, popularity or NAME=DIR")
        label = name or Path(spec).name or Path(spec).resolve().name or spec
        if label in out:
            raise UserError(f"two models are labelled {label!r} ({out[label]} and {spec}); "
                            f"name them with --model NAME={spec}")
        out[label] = spec
    return out


@app.command()
def score(
    model: Annotated[list[str], typer.Option(
        "--model", help="Model folder, 'popularity' or 'oracle', or NAME=any of these; repeat to compare. "
                        "Columns are labelled NAME, else the folder's name.")],
    examples: Annotated[Path, typer.Option("--examples", help="Examples built by `recbrew data build`.")],
    split: Annotated[str, typer.Option(help="Split to score.")] = "test",
    quantize: Annotated[int | None, typer.Option("--quantize", help="Score with b-bit embedding tables (e.g. 8).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Per-task AUC and macro AUC over T1 and T2 tasks of each scorer on the same requests."""
    import torch

    from recbrew.baselines.features import load_rows  # lazy: loads torch
    from recbrew.baselines.metrics import evaluate  # lazy: loads torch
    models = model_labels(model)  # before any loading: a clash is reported at once
    torch.set_num_threads(1)
    rows = load_rows(examples, split)
    results = []
    for label, spec in models.items():
        scorer = scorer_for(spec, examples, quantize)
        results.append({"name": label, "spec": spec, **evaluate(scorer, rows)})
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    widths = [max(12, len(r["name"])) for r in results]

    def row(head: str, values) -> str:
        return f"{head:38} " + " ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))

    typer.echo(row(f"{'task':34} {'tag':3}", [r["name"] for r in results]))
    for task, info in results[0]["tasks"].items():
        aucs = [r["tasks"][task]["auc"] for r in results]
        typer.echo(row(f"{task:34} {info['split_tag']:3}", ["-" if a is None else f"{a:.4f}" for a in aucs]))
    for tag in ("T1", "T2"):
        typer.echo(row(f"macro AUC {tag}", [str(r["macro_auc"][tag]) for r in results]))
    typer.echo(row("ECE (T1 binary)", [str(r["ece_t1_binary"]) for r in results]))


@app.command()
def ablate(
    examples: Annotated[Path, typer.Option("--examples", help="Examples built by `recbrew data build`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for ablation.md, ablation.json and the trained variants.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.field=value applied to every variant.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per variant (AUCs are averaged).")] = 1,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """The ablation table: DCNv2 vs RDCN, dense gating, isotonic calibration ECE, 8-bit embeddings,
    QR vs full vocabulary, LiGR set-wise attention."""
    from recbrew.baselines.ablation import run_ablation  # lazy: loads torch

    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    result = run_ablation(examples, out, overrides=overrides, seeds=seeds, progress=progress)
    typer.echo(result["markdown"])
    typer.echo(f"wrote {out / 'ablation.md'} and {out / 'ablation.json'}")
