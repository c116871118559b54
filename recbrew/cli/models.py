"""`recbrew models ...`: prepare the default model, build recbrew-tiny, score examples with an LM."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recbrew.cli.options import Address, Engine, WorkerCpus, Workers, ray_only
from recbrew.cluster import check_engine, score_on_ray
from recbrew.data.ids import ITEM, MEMBER
from recbrew.errors import UserError
from recbrew.examples.folder import Examples
from recbrew.metrics import per_task_auc
from recbrew.models.loading import resolve
from recbrew.models.tiny import PRESETS, build_tiny
from recbrew.scoring.registry import ScorerOptions, family_of, load_scorer

if TYPE_CHECKING:
    from recbrew.data.ids import IdMap

app = typer.Typer(help="Language models: SmolLM2 (default), recbrew-tiny, or any local HF folder.",
                  no_args_is_help=True)


@app.command()
def prepare(name: Annotated[str, typer.Argument(help="Model to convert and cache.")] = "smollm2") -> None:
    """Convert SmolLM2 from the installed GGUF into a plain fp32 HF folder once; print its path."""
    typer.echo(str(resolve(name)))


@app.command()
def tiny(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus whose text trains the tokenizer.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the model and tokenizer.")],
    preset: Annotated[str, typer.Option(help="Size: tiny, small or base.")] = "small",
    seed: Annotated[int, typer.Option(help="Initialization seed.")] = 0,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="BPE vocabulary size.")] = 4096,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
) -> None:
    """Build a recbrew-tiny model (randomly initialized Llama + BPE tokenizer trained on the corpus)."""
    path = build_tiny(corpus, out, preset, seed, vocab_size, force)
    typer.echo(f"wrote {path} (preset {preset}: {PRESETS[preset]})")


@app.command()
def score(
    examples: Annotated[Path, typer.Option("--examples", help="Examples built by `recbrew data build`.")],
    model: Annotated[str, typer.Option("--model", help="'smollm2' or a model folder.")] = "smollm2",
    mode: Annotated[str, typer.Option(help="naive, prefix or multi.")] = "multi",
    tasks: Annotated[str | None, typer.Option(help="Comma-separated tasks (default: all scored tasks).")] = None,
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "test",
    limit: Annotated[int | None, typer.Option(help="At most this many requests per task.")] = None,
    tasks_dir: Annotated[Path | None, typer.Option("--tasks-dir", help="A task folder to check the examples' recorded "
                                                   "specs against (the answer words come from the examples).")
                         ] = None,
    layers: Annotated[int | None, typer.Option("--layers", min=1, help="Keep the first N decoder layers.")] = None,
    dtype: Annotated[str, typer.Option(help="auto (bf16 where the hardware has it), bf16 or fp32.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    engine: Engine = "local",
    address: Address = None,
    workers: Workers = None,
    worker_cpus: WorkerCpus = None,
) -> None:
    """Score examples with a language model (P of the answer word) and print AUC per task; --json adds every
    request's scores, with member and item ids as imported. With --engine ray the requests are scored by Ray
    actors, one model copy each (docs/scale.md)."""
    check_engine(engine)
    ray_only(engine, address=address, workers=workers, worker_cpus=worker_cpus)
    _check_lm(model, mode, dtype)
    folder = Examples.open(examples)
    catalog = folder.catalog(tasks_dir)
    rows = _ranked_requests(folder.requests(split, tasks.split(",") if tasks else None), limit)
    load = ScorerOptions(catalog=catalog, mode=mode, dtype=dtype, layers=layers)
    if engine == "ray":
        probs = _ray_probs(model, load, rows, mode, address=address, workers=workers, worker_cpus=worker_cpus)
    else:
        probs = _local_probs(model, load, rows, mode)
    result = _per_task(rows, probs)
    if as_json:
        typer.echo(json.dumps({"model": model, "mode": mode, "split": split, "tasks": result,
                               "requests": _scored_requests(rows, probs, folder.ids)}, indent=2))
        return
    for task, r in result.items():
        auc = "-" if r["auc"] is None else f"{r['auc']:.3f}"
        typer.echo(f"{task:34} requests {r['requests']:5}  candidates {r['candidates']:6}  AUC {auc}")


def _check_lm(model: str, mode: str, dtype: str) -> None:
    """One line before anything starts: an unknown mode or dtype, a model that is not an LM or is not there."""
    from recbrew.scoring.hf import MODES  # lazy: loads torch

    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: choose {', '.join(MODES)}")
    if dtype not in ("auto", "bf16", "fp32"):
        raise UserError(f"--dtype {dtype!r}: choose auto, bf16 or fp32")
    if family_of(model).name != "lm":
        raise UserError(f"--model {model}: not a language model; `recbrew baselines score` or `recbrew eval` score "
                        "the others")
    resolve(model)


def _ranked_requests(requests: list[dict], limit: int | None) -> list[dict]:
    """The requests that are not generative, the first ``limit`` of each task when given."""
    rows = [r for r in requests if r["kind"] != "generative"]
    if not limit:
        return rows
    per_task: Counter = Counter()
    kept = []
    for row in rows:
        if per_task[row["task"]] < limit:
            kept.append(row)
            per_task[row["task"]] += 1
    return kept


def _ray_probs(model: str, load: ScorerOptions, rows: list[dict], mode: str, *, address: str | None,
               workers: int | None, worker_cpus: int | None) -> list:
    """Every request's candidate probabilities, scored on Ray actors (one model copy each)."""
    # One request per Scorer call on the actors too, as below: the same numbers, and on CPUs the faster way.
    got, _ = score_on_ray(load_scorer, (model, load), rows, range(len(rows)), address=address, workers=workers,
                          worker_cpus=worker_cpus, per_call=1, desc=f"scoring ({mode})")
    return [got[i] for i in range(len(rows))]


def _local_probs(model: str, load: ScorerOptions, rows: list[dict], mode: str) -> list:
    """Every request's candidate probabilities, scored here one request at a time."""
    from tqdm.auto import tqdm

    scorer = load_scorer(model, load)
    return [scorer.score([row])[0] for row in tqdm(rows, desc=f"scoring ({mode})", unit="req")]


def _per_task(rows: list[dict], probs: list) -> dict[str, dict]:
    """Requests, candidates and AUC of each task."""
    requests = Counter(r["task"] for r in rows)
    return {task: {"requests": requests[task], "candidates": t["candidates"], "auc": t["auc"]}
            for task, t in per_task_auc(rows, probs).items()}


def _scored_requests(rows: list[dict], probs: list, ids: IdMap) -> list[dict]:
    """Every request's scores for --json, with member and item ids as imported."""
    return [{"request_id": row["request_id"], "task": row["task"],
             "member_id": ids.user(MEMBER, row.get("member_id")),
             "item_ids": ids.users(ITEM, row.get("candidate_ids") or []),
             "labels": list(row.get("labels") or []), "scores": [round(float(p), 6) for p in prob]}
            for row, prob in zip(rows, probs, strict=True)]
