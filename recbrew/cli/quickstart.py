"""`recbrew quickstart`: the main job end to end on the embedded defaults, re-using finished steps.

world -> examples for the whole catalog -> LoRA fine-tune of SmolLM2-135M -> LiRank, LiGR, popularity
-> eval of everything plus the oracle -> report. Every step writes aside and moves its output into
place when done, so an interrupted run (Ctrl-C included) leaves no half-written step and the next run
picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer

STEPS = 5


def _reusable(path: Path, wanted: dict) -> dict | None:
    """The JSON at ``path`` if it exists and matches ``wanted`` on every key."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if all(data.get(k) == v for k, v in wanted.items()) else None


#: Wall time of each step of this run, printed at the end.
_TIMES: dict[str, float] = {}


def _step(n: int, text: str) -> float:
    typer.echo(f"[{n}/{STEPS}] {text}")
    return time.time()


def _took(name: str, started: float) -> None:
    _TIMES[name] = _TIMES.get(name, 0.0) + time.time() - started


def _baseline(name: str, examples: Path, out: Path, seed: int) -> Path:
    """Train one classic ranker into ``out`` (written aside, then moved into place)."""
    from recbrew.data.io import staged_directory

    with staged_directory(out) as tmp:
        if name == "popularity":
            from recbrew.baselines.features import load_rows
            from recbrew.baselines.popularity import Popularity, PopularityConfig

            Popularity.fit(load_rows(examples, "train", split_tag="T1"), PopularityConfig()).save(tmp)
        else:
            from recbrew.baselines.config import run_config
            from recbrew.baselines.train import train_model
            from recbrew.config import shipped_or_none

            # Five epochs: on the quickstart's data both peak by then (validation AUC), and it saves a minute.
            cfg = run_config(name, shipped_or_none("baselines", name), [f"train.seed={seed}", "train.epochs=5"])
            train_model(cfg, examples, tmp, progress=False)
        (tmp / "quickstart.json").write_text(json.dumps({"examples": str(examples.resolve()), "seed": seed}))
    return out


def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Where every step writes its outputs.")] = Path("runs/quickstart"),
    world_config: Annotated[str, typer.Option("--world-config", help="World config: a YAML path or a shipped "
                                              "name (configs/world/NAME.yaml).")] = "default",
    members: Annotated[int | None, typer.Option(help="Members of the generated world (default: the world "
                                                "config's, 2000).")] = None,
    days: Annotated[int | None, typer.Option(help="Days of the generated world (default: the world config's, "
                                             "30).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the whole run.")] = 0,
    max_train: Annotated[int, typer.Option("--max-train", help="Training requests per task.")] = 300,
    max_test: Annotated[int, typer.Option("--max-test", help="Test requests per task (every model scores them).")] = 50,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Prompt token budget (history is cut to fit).")] = 320,
    burn_in_days: Annotated[float, typer.Option("--burn-in-days", help="Days that only feed histories.")] = 7.0,
    train_config: Annotated[str, typer.Option("--train-config", help="Fine-tuning config (name or path).")
                            ] = "smollm2-cpu",
    train_overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides of the fine-tuning config.")
                               ] = None,
) -> None:
    """Run the pipeline end to end: world -> examples -> LoRA fine-tune -> baselines -> eval report."""
    from recbrew.cli.world import print_card
    from recbrew.cli.world import world_config as load_world_config
    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.world import CARD_FILE, generate_world

    began = time.time()
    world_dir = out / "world"
    _TIMES.clear()
    wcfg = load_world_config(world_config, members, days, seed)
    card = _reusable(world_dir / CARD_FILE, {"seed": wcfg.seed, "members": wcfg.members, "days": wcfg.days,
                                             "behaviour": dataclasses.asdict(wcfg.behaviour)})
    if card is not None:
        _step(1, f"world: re-using {world_dir}")
    else:
        started = _step(1, f"world: generating {wcfg.members:,} members x {wcfg.days} days into {world_dir}")
        card = generate_world(wcfg, world_dir, force=True)
        _took("world", started)
    print_card(card)

    examples_dir = out / "examples"
    cfg = BuildConfig(max_train=max_train, max_test=max_test, seed=seed, max_tokens=max_tokens,
                      burn_in_days=burn_in_days)
    manifest = _reusable(examples_dir / "manifest.json", {"corpus": str(world_dir.resolve())})
    if manifest is not None and manifest["config"] == json.loads(json.dumps(cfg.__dict__)):
        _step(2, f"examples: re-using {examples_dir}")
    else:
        started = _step(2, f"examples: rendering the task catalog into {examples_dir}")
        manifest = build_examples(world_dir, examples_dir, cfg, force=True)
        _took("examples", started)
    tags: dict[str, int] = {}
    for row in manifest["tasks"].values():
        tags[row["split_tag"]] = tags.get(row["split_tag"], 0) + 1
    typer.echo(f"examples: {len(manifest['tasks'])} tasks ({', '.join(f'{n} {t}' for t, n in sorted(tags.items()))}), "
               f"{manifest['rows']['train']:,} train / {manifest['rows']['test']:,} test requests")

    from recbrew.train import load_config, train
    from recbrew.train.run import META_FILE

    llm_dir = out / "llm"
    # No validation pass: step 5 scores the model on the test requests right after.
    tcfg = load_config(train_config, [f"examples={examples_dir}", f"out={llm_dir}", f"seed={seed}", "eval_requests=0",
                                      *(train_overrides or [])])
    done = _reusable(llm_dir / "final" / META_FILE, {"config": tcfg.model_dump()})
    if done is not None:
        _step(3, f"fine-tune: re-using {llm_dir / 'final'}")
    else:
        length = f"{tcfg.max_steps} steps" if tcfg.max_steps > 0 else f"{tcfg.epochs:g} epochs"
        started = _step(3, f"fine-tune: LoRA on {tcfg.model} ({length}) into {llm_dir}")
        result = train(tcfg, progress=True, echo=typer.echo)
        _took("fine-tune", started)
        typer.echo(f"fine-tune: {result.steps} steps in {time.time() - started:.0f} s, final loss "
                   f"{result.final_loss:.4f}")

    baselines = {}
    for name in ("lirank", "ligr", "popularity"):
        folder = out / "baselines" / name
        if _reusable(folder / "quickstart.json", {"examples": str(examples_dir.resolve()), "seed": seed}):
            _step(4, f"baselines: re-using {folder}")
        else:
            started = _step(4, f"baselines: training {name} into {folder}")
            _baseline(name, examples_dir, folder, seed)
            _took("baselines", started)
            typer.echo(f"baselines: {name} in {time.time() - started:.0f} s")
        baselines[name] = str(folder)

    from recbrew.eval.run import run_eval

    started = _step(5, f"eval: every model plus the oracle on the same {manifest['rows']['test']:,} test requests")
    llm_name = (tcfg.model if tcfg.model in ("smollm2", "smollm2-135m") else Path(tcfg.model).name)
    models = {f"{llm_name}-{'lora' if tcfg.lora else 'ft'}": str(llm_dir / "final"), **baselines}
    result = run_eval(examples_dir, models, out / "eval", progress=True, include_oracle=True)
    _took("eval", started)
    typer.echo(result.table())
    llm = next(iter(models))
    auc = {name: row.get("T1") for name, row in result.macro_auc.items()}
    best = max((n for n in baselines if auc.get(n) is not None), key=lambda n: auc[n], default=None)
    if auc.get(llm) is not None and best is not None:
        oracle = auc.get("oracle")
        typer.echo(f"{llm}: T1 macro AUC {auc[llm]:.3f}; best baseline {best} {auc[best]:.3f} "
                   f"(gap {auc[llm] - auc[best]:+.3f})" + (f"; oracle {oracle:.3f} (gap {auc[llm] - oracle:+.3f})"
                                                          if oracle is not None else ""))
    if best is not None and llm in result.macro_auc:
        typer.echo(f"{llm} vs {best} on the same test requests (paired bootstrap): {result.paired(llm, best)['text']}")
    typer.echo(f"report: {result.paths['html']}")
    typer.echo("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in _TIMES.items()) if _TIMES else "wall time: all "
               "steps re-used")
    typer.echo(f"quickstart done in {(time.time() - began) / 60:.1f} min")
