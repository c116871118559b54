"""`recbrew eval`: score every model on the same test requests and write the report; `recbrew eval sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recbrew.cli.options import Address, Engine, WorkerCpus, Workers, comma_items, ray_only
from recbrew.errors import UserError
from recbrew.eval.compare import UNITS
from recbrew.eval.run import run_eval
from recbrew.eval.scorers import RayOptions, parse_models
from recbrew.eval.sweep import SweepConfig, run_sweep

app = typer.Typer(help="Score every model on the same test requests and write the report "
                       "(`recbrew eval --models A,B --examples DIR --out DIR`); `recbrew eval sweep` for scaling sweeps.",
                  no_args_is_help=True, invoke_without_command=True)


def _named(option: str, values: list[str] | None, example: str) -> dict[str, str]:
    """``NAME=VALUE`` items of a repeatable option, each name once."""
    out: dict[str, str] = {}
    for part in comma_items(values) or []:
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not name or not value:
            raise UserError(f"{option} {part!r}: write NAME=VALUE, e.g. {example}")
        if name in out:
            raise UserError(f"{option} names {name!r} twice ({out[name]} and {value})")
        out[name] = value
    return out


def bootstrap_option(value: str) -> tuple[str, int]:
    """``--bootstrap``: ``N`` resamples, a ``UNIT`` or ``UNIT:N`` -> (unit, resamples); auto and 200 by default."""
    head, sep, tail = value.strip().partition(":")
    unit, count = (head, tail) if sep else ("auto", head) if head.isdigit() else (head, "200")
    if unit not in UNITS or not count.isdigit():
        raise UserError(f"--bootstrap {value!r}: write a number of resamples (200), what they draw "
                        f"({', '.join(UNITS)}) or both (record:1000)")
    return unit, int(count)


@app.callback()
def evaluate(
    ctx: typer.Context,
    models: Annotated[list[str] | None, typer.Option("--models", help="Comma-separated SPEC or NAME=SPEC: oracle, "
                                                     "popularity, a baseline folder, smollm2, a recbrew-tiny/HF/LoRA "
                                                     "folder (repeatable).")] = None,
    examples: Annotated[Path | None, typer.Option("--examples", help="Examples built by `recbrew data build`.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for report.html/.md/.json and scores/ (cache).")] = None,
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help="Comma-separated tasks (default: all; "
                                                    "repeatable).")] = None,
    k: Annotated[int, typer.Option("--k", help="Cut-off of NDCG@k, Recall@k and top-k diversity.")] = 3,
    bootstrap: Annotated[str, typer.Option("--bootstrap", help="Bootstrap of the intervals: resamples (0: none), "
                                           "what they draw within a task (member, request, record: single "
                                           "candidates; auto: member where members repeat) or both, e.g. "
                                           "record:1000.")] = "auto:200",
    reference: Annotated[str | None, typer.Option("--reference", help="The model every paired Δ is against "
                                                  "(default: the best baseline by T1 macro AUC).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse scores cached under OUT/scores/.")] = True,
    oracle: Annotated[bool, typer.Option("--oracle/--no-oracle", help="Add the oracle as reference when the "
                                         "examples come from a synthetic world.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    tasks_dir: Annotated[Path | None, typer.Option("--tasks-dir", help="A task folder to check the examples' recorded "
                                                   "task specs against (not needed: the specs travel with the "
                                                   "examples).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write the report into a non-empty --out (its cached "
                                        "scores are reused unless --no-cache).")] = False,
    model_examples: Annotated[list[str] | None, typer.Option("--model-examples", help="Comma-separated NAME=DIR: "
                                                             "that model reads its prompts from another examples "
                                                             "folder of the same corpus and split (a prompt "
                                                             "ablation; the test requests must be the same; "
                                                             "repeatable).")] = None,
    fusion: Annotated[list[str] | None, typer.Option("--fusion", help="Comma-separated NAME=A+B: a row scoring each "
                                                     "candidate by the mean of those models' logits "
                                                     "(repeatable).")] = None,
    engine: Engine = "local",
    address: Address = None,
    workers: Workers = None,
    worker_cpus: WorkerCpus = None,
    llm_engine: Annotated[str, typer.Option("--llm-engine", help="What the language models score through: hf "
                                            "(the multi-item path; the faster one on a CPU) or vllm (vLLM's "
                                            "offline engine with prefix caching; the same scores within 1e-3).")
                          ] = "hf",
) -> None:
    """Run every model on the same test requests: per-task metrics with intervals, slices, report. With --engine
    ray the language models score on Ray actors (one model copy each); the other models score here."""
    if ctx.invoked_subcommand is not None:
        return
    _require(models=models, examples=examples, out=out)
    unit, resamples = bootstrap_option(bootstrap)
    ray_only(engine, address=address, workers=workers, worker_cpus=worker_cpus)
    _check_report_options(k, out, force)
    own = {name: Path(folder) for name, folder in
           _named("--model-examples", model_examples, "text-only=runs/ex-text").items()}
    fusions = _fusions(fusion)

    ray = RayOptions(address, workers, worker_cpus) if engine == "ray" else None
    result = run_eval(examples, parse_models(models), out, tasks=comma_items(tasks), k=k,
                      bootstrap=resamples, seed=seed, use_cache=cache, progress=progress, include_oracle=oracle,
                      tasks_dir=tasks_dir, unit=unit, reference=reference, model_examples=own, fusions=fusions,
                      engine=engine, ray=ray, lm_engine=llm_engine)
    typer.echo(result.table())
    typer.echo(f"wrote {result.paths['html']}, {result.paths['md'].name}, {result.paths['json'].name}, "
               f"{result.paths['scores'].name}")


def _require(**given: object) -> None:
    """One line naming the options `recbrew eval` needs and was not given."""
    missing = [f"--{name}" for name, value in given.items() if value is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)}: e.g. recbrew eval --models oracle,popularity "
                        "--examples runs/quickstart/examples --out runs/eval")


def _check_report_options(k: int, out: Path, force: bool) -> None:
    if k < 1:
        raise UserError("--k must be at least 1")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already exists and is not empty; pass --force to write the report over it "
                        "(the scores cached in it are reused)")


def _fusions(fusion: list[str] | None) -> dict[str, list[str]]:
    """``--fusion NAME=A+B``: {name: [model, model, ...]}, two models or more each."""
    fusions = {}
    for name, members in _named("--fusion", fusion, "blend=llm+lirank").items():
        parts = [p.strip() for p in members.split("+") if p.strip()]
        if len(parts) < 2:
            raise UserError(f"--fusion {name}={members}: name two models or more, e.g. blend=llm+lirank")
        fusions[name] = parts
    return fusions


@app.command()
def sweep(
    examples: Annotated[Path, typer.Option("--examples", help="Examples built by `recbrew data build`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for sweep.html/.md/.json and each point's model.")],
    axis: Annotated[str, typer.Option("--axis", help="data, model or history.")] = "data",
    values: Annotated[str, typer.Option("--values", help="Comma-separated: training requests (data), presets or "
                                        "specs like tiny,small,base,smollm2 (model), max prompt tokens (history).")] = "",
    family: Annotated[str, typer.Option("--family", help="lirank, ligr, dcnv2 (data axis) or llm.")] = "lirank",
    base_model: Annotated[str, typer.Option("--base-model", help="llm: model of data/history points "
                                            "(tiny/small/base preset or a spec).")] = "tiny",
    max_examples: Annotated[int | None, typer.Option("--max-examples", help="Training requests of model/history "
                                                     "points (default: all).")] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="llm: optimizer steps per point.")] = 50,
    train_config: Annotated[str | None, typer.Option("--train-config", help="llm: train every point with this "
                                                     "config (name or path, e.g. smollm2-cpu); the point's size "
                                                     "sets max_examples.")] = None,
    max_test: Annotated[int | None, typer.Option("--max-test", help="Score at most N test requests per task.")
                        ] = None,
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help="Comma-separated tasks (default: all; "
                                                    "repeatable).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of training.")] = 0,
    overrides: Annotated[list[str] | None, typer.Argument(help="Baselines: section.field=value, e.g. train.epochs=3.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Scaling sweep: each point trains a model, scores it and the report fits AUC vs log10(size)."""
    cfg = SweepConfig(examples=examples, out=out, axis=axis, values=comma_items(values) or [], family=family,
                      base_model=base_model, max_examples=max_examples, max_steps=max_steps, seed=seed,
                      tasks=comma_items(tasks), overrides=list(overrides or []), progress=progress,
                      train_config=train_config, max_test=max_test)
    result = run_sweep(cfg)
    typer.echo(result.table())
    typer.echo(f"wrote {result.paths['html']}, {result.paths['md'].name}, {result.paths['json'].name}, "
               f"{result.paths['scores'].name}")
