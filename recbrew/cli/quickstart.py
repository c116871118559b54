"""`recbrew quickstart`: the main job end to end on the embedded defaults, re-using finished steps.

``--data world`` (the default): world -> examples for the whole catalog -> LoRA fine-tune of SmolLM2-135M ->
LiRank, LiGR, popularity -> eval of everything plus the oracle -> report.

``--data movielens``: the same comparison on real data: MovieLens-100K (from the installed recbole package)
-> ``movies_like`` examples with as-of-time statistics (time split, or leave-last) -> the real-data recipe
(``smollm2-cpu-real``) -> LiRank, LiGR, popularity -> eval, with a fusion row (mean of the LLM's and LiRank's
logits) as a reference.

Every step writes aside and moves its output into place when done, so an interrupted run (Ctrl-C included)
leaves no half-written step and the next run picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recbrew import assets
from recbrew.cli.world import print_card
from recbrew.cli.world import world_config as load_world_config
from recbrew.config import shipped_or_none
from recbrew.data.corpus import Corpus
from recbrew.data.io import staged_directory
from recbrew.data.movielens import load_movielens
from recbrew.errors import UserError
from recbrew.eval.run import run_eval
from recbrew.examples.build import BuildConfig, build_examples, history_line
from recbrew.examples.folder import Examples
from recbrew.tasks import load_catalog
from recbrew.train import load_config, train
from recbrew.train.run import META_FILE

if TYPE_CHECKING:
    from recbrew.eval.run import EvalResult

STEPS = 5


def _reusable(path: Path, wanted: dict, check=None) -> dict | None:
    """The JSON at ``path`` if it exists and matches ``wanted`` on every key, and ``check(path.parent)`` (a reader
    that verifies the folder's checksums) passes: a damaged or older folder is rebuilt, not re-used."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not all(data.get(k) == v for k, v in wanted.items()):
        return None
    if check is not None:
        try:
            check(path.parent)
        except UserError as exc:
            typer.echo(f"note: {path.parent} is built again ({exc})")
            return None
    return data


def _check_examples(folder: Path) -> None:
    Examples.open(folder).verify()


def _check_corpus(folder: Path) -> None:
    Corpus.load(folder)


#: Wall time of each step of this run, printed at the end.
_TIMES: dict[str, float] = {}


def _step(n: int, text: str) -> float:
    typer.echo(f"[{n}/{STEPS}] {text}")
    return time.time()


def _took(name: str, started: float) -> None:
    _TIMES[name] = _TIMES.get(name, 0.0) + time.time() - started


def _baseline(name: str, examples: Path, out: Path, seed: int, configs: str = "baselines",
              epochs: int | None = 5) -> Path:
    """Train one classic ranker into ``out`` (written aside, then moved into place) from its shipped config
    under ``configs/CONFIGS/``."""
    with staged_directory(out) as tmp:
        if name == "popularity":
            from recbrew.baselines.features import load_rows  # lazy: loads torch
            from recbrew.baselines.popularity import Popularity, PopularityConfig  # lazy: loads torch

            Popularity.fit(load_rows(examples, "train", split_tag="T1"), PopularityConfig()).save(tmp)
        else:
            from recbrew.baselines.config import run_config  # lazy: loads torch
            from recbrew.baselines.train import train_model  # lazy: loads torch

            # Five epochs on the world: both peak by then (validation AUC), and it saves a minute.
            cfg = run_config(name, shipped_or_none(configs, name),
                             [f"train.seed={seed}", *([f"train.epochs={epochs}"] if epochs else [])])
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
    max_train: Annotated[int | None, typer.Option("--max-train", help="Training requests per task (default: 300 on "
                                                  "the world; on movielens 5,000, or 20,000 with leave-last).")] = None,
    max_test: Annotated[int | None, typer.Option("--max-test", help="Test requests per task, every model scores "
                                                 "them (default: 50 on the world, 2,000 on movielens).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Prompt token budget of the world's prompts (history "
                                            "is cut to fit; movielens prompts get 768).")] = 384,
    burn_in_days: Annotated[float, typer.Option("--burn-in-days", help="Days that only feed histories.")] = 7.0,
    train_config: Annotated[str, typer.Option("--train-config", help="Fine-tuning config (name or path).")
                            ] = "smollm2-cpu",
    train_overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides of the fine-tuning config.")
                               ] = None,
    data: Annotated[str, typer.Option("--data", help="world (generated) or movielens (MovieLens-100K, real "
                                      "ratings).")] = "world",
    split: Annotated[str, typer.Option("--split", help="movielens: time (the last 30 days are test) or leave-last "
                                       "(each member's last rating is test).")] = "time",
    baseline_epochs: Annotated[int | None, typer.Option("--baseline-epochs", help="Epochs of LiRank and LiGR "
                                                        "(default: 5 on the world, the config's on movielens).")
                               ] = None,
) -> None:
    """Run the pipeline end to end: data -> examples -> LoRA fine-tune -> baselines -> eval report."""
    if data not in ("world", "movielens"):
        raise UserError(f"--data {data!r}: choose world or movielens")
    if data == "movielens":
        _on_movielens(out, split, seed, train_config, train_overrides, max_train=max_train, max_test=max_test,
                      baseline_epochs=baseline_epochs)
        return

    began = time.time()
    world_dir, examples_dir = out / "world", out / "examples"
    _TIMES.clear()
    _world_step(world_dir, world_config, members, days, seed)
    cfg = BuildConfig(max_train=max_train or 300, max_test=max_test or 50, seed=seed, max_tokens=max_tokens,
                      burn_in_days=burn_in_days)
    manifest = _world_examples_step(world_dir, examples_dir, cfg)
    llm_dir, llm = _fine_tune(out, examples_dir, train_config, seed, train_overrides)
    baselines = {name: str(_baseline_step(name, examples_dir, out, seed, epochs=baseline_epochs or 5))
                 for name in ("lirank", "ligr", "popularity")}
    result = _world_eval_step(examples_dir, out / "eval", {llm: str(llm_dir / "final"), **baselines}, manifest)
    _summary(result, llm, baselines, began)


def _on_movielens(out: Path, split: str, seed: int, train_config: str, train_overrides: list[str] | None, *,
                  max_train: int | None, max_test: int | None, baseline_epochs: int | None) -> None:
    """`--data movielens`: its own output folder by default, the real-data recipe unless another is named."""
    if out == Path("runs/quickstart"):
        out = Path("runs/quickstart-movielens") / split
    caps = {k: v for k, v in (("max_train", max_train), ("max_test", max_test)) if v is not None}
    movielens(out, split, seed, "smollm2-cpu-real" if train_config == "smollm2-cpu" else train_config,
              train_overrides, caps, baseline_epochs)


def _world_step(world_dir: Path, world_config: str, members: int | None, days: int | None, seed: int) -> None:
    """Step 1: the world generated into OUT/world (re-used when its config is the same); its card printed."""
    from recbrew.world import CARD_FILE, generate_world  # lazy: loads scipy

    wcfg = load_world_config(world_config, members, days, seed)
    card = _reusable(world_dir / CARD_FILE, {"seed": wcfg.seed, "members": wcfg.members, "days": wcfg.days,
                                             "behaviour": dataclasses.asdict(wcfg.behaviour)}, _check_corpus)
    if card is not None:
        _step(1, f"world: re-using {world_dir}")
    else:
        started = _step(1, f"world: generating {wcfg.members:,} members x {wcfg.days} days into {world_dir}")
        card = generate_world(wcfg, world_dir, force=True)
        _took("world", started)
    print_card(card)


def _world_examples_step(world_dir: Path, examples_dir: Path, cfg: BuildConfig) -> dict:
    """Step 2: the whole catalog's examples (re-used when built from the same world and config); the manifest."""
    manifest = _reusable(examples_dir / "manifest.json", {"corpus": str(world_dir.resolve())}, _check_examples)
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
    if (line := history_line(manifest)) is not None:
        typer.echo(f"examples: {line}")
    return manifest


def _world_eval_step(examples_dir: Path, eval_dir: Path, models: dict[str, str], manifest: dict) -> EvalResult:
    """Step 5: every model plus the oracle on the same test requests, the report into OUT/eval."""
    started = _step(5, f"eval: every model plus the oracle on the same {manifest['rows']['test']:,} test requests")
    result = run_eval(examples_dir, models, eval_dir, progress=True, include_oracle=True)
    _took("eval", started)
    return result


#: The MovieLens protocols `--data movielens` runs: build options of the time split (the docs' split) and of
#: leave-last (each member's last rating is test, one target per request), and overrides of the fine-tune.
#: A one-target request holds one labelled candidate where a day's session holds about 12, so leave-last trains
#: on more requests for a similar number of tokens. Its short prompts make an epoch after the first cheap (about a
#: minute here, the frozen-layer cache), so it trains 10 epochs: 0.707 -> 0.741 AUC against 3 with every statistic in
#: the prompt (docs/baselines.md; 0.740 with the shipped taste and estimate lines).
#: On the time split the taste and estimate lines read as well after 3 epochs as after 8 (0.691 and 0.690 AUC
#: with the seven-word estimate scale, docs/baselines.md), so 3 it is (0.697 with the shipped 14-step scale).
MOVIELENS_SPLITS = {
    "time": ({"test_days": 30.0, "gap_days": 1.0, "max_train": 5000, "max_test": 2000}, []),
    "leave-last": ({"split": "leave-last", "one_target": True, "max_train": 20000, "max_test": 2000},
                   ["max_examples=4000", "epochs=10"]),
}


def movielens(out: Path, split: str, seed: int, train_config: str, train_overrides: list[str] | None,
              caps: dict | None = None, baseline_epochs: int | None = None) -> None:
    """MovieLens-100K end to end: corpus -> movies_like examples -> fine-tune -> LiRank, LiGR, popularity -> eval."""
    if split not in MOVIELENS_SPLITS:
        raise UserError(f"--split {split!r}: choose {' or '.join(MOVIELENS_SPLITS)}")
    began = time.time()
    _TIMES.clear()
    corpus_dir = out / "corpus"
    if _reusable(corpus_dir / "corpus.json", {}, _check_corpus) is not None:
        _step(1, f"corpus: re-using {corpus_dir}")
    else:
        started = _step(1, f"corpus: MovieLens-100K from the recbole package into {corpus_dir}")
        corpus = load_movielens()
        with staged_directory(corpus_dir) as tmp:
            corpus.save(tmp)
        _took("corpus", started)

    examples_dir = out / "examples"
    build, train_defaults = MOVIELENS_SPLITS[split]
    cfg = BuildConfig(seed=seed, max_tokens=768, **{**build, **(caps or {})})
    catalog = load_catalog(assets.path("configs") / "movielens" / "tasks")
    manifest = _reusable(examples_dir / "manifest.json", {"corpus": str(corpus_dir.resolve())}, _check_examples)
    if manifest is not None and manifest["config"] == json.loads(json.dumps(cfg.__dict__)):
        _step(2, f"examples: re-using {examples_dir}")
    else:
        started = _step(2, f"examples: movies_like ({split} split) into {examples_dir}")
        manifest = build_examples(corpus_dir, examples_dir, cfg, force=True, catalog=catalog)
        _took("examples", started)
    typer.echo(f"examples: {manifest['rows']['train']:,} train / {manifest['rows']['test']:,} test requests")

    llm_dir, llm = _fine_tune(out, examples_dir, train_config, seed, [*train_defaults, *(train_overrides or [])])
    baselines = {}
    for name in ("lirank", "ligr", "popularity"):
        baselines[name] = str(_baseline_step(name, examples_dir, out, seed, "movielens/baselines", baseline_epochs))

    started = _step(5, f"eval: every model on the same {manifest['rows']['test']:,} test requests")
    models = {llm: str(llm_dir / "final"), **baselines}
    result = run_eval(examples_dir, models, out / "eval", progress=True, include_oracle=False,
                      fusions={f"{llm}+lirank": [llm, "lirank"]})
    _took("eval", started)
    _summary(result, llm, baselines, began)


def _fine_tune(out: Path, examples_dir: Path, train_config: str, seed: int,
               overrides: list[str] | None) -> tuple[Path, str]:
    """Step 3: the LoRA fine-tune into OUT/llm (re-used when its config is the same); (folder, model name)."""
    llm_dir = out / "llm"
    # No validation pass: step 5 scores the model on the test requests right after.
    tcfg = load_config(train_config, [f"examples={examples_dir}", f"out={llm_dir}", f"seed={seed}", "eval_requests=0",
                                      *(overrides or [])])
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
    llm_name = (tcfg.model if tcfg.model in ("smollm2", "smollm2-135m") else Path(tcfg.model).name)
    return llm_dir, f"{llm_name}-{'lora' if tcfg.lora else 'ft'}"


def _baseline_step(name: str, examples_dir: Path, out: Path, seed: int, configs: str = "baselines",
                   epochs: int | None = 5) -> Path:
    """Step 4 for one classic ranker: trained into OUT/baselines/NAME, or re-used for the same examples and seed."""
    folder = out / "baselines" / name
    if _reusable(folder / "quickstart.json", {"examples": str(examples_dir.resolve()), "seed": seed}):
        _step(4, f"baselines: re-using {folder}")
    else:
        started = _step(4, f"baselines: training {name} into {folder}")
        _baseline(name, examples_dir, folder, seed, configs, epochs)
        _took("baselines", started)
        typer.echo(f"baselines: {name} in {time.time() - started:.0f} s")
    return folder


def _summary(result, llm: str, baselines: dict, began: float) -> None:
    """The eval table, the LLM against the best classic model (paired), where the report is and the wall times."""
    typer.echo(result.table())
    auc = {name: row.get("T1") for name, row in result.macro_auc.items()}
    best = max((n for n in baselines if auc.get(n) is not None), key=lambda n: auc[n], default=None)
    if auc.get(llm) is not None and best is not None:
        oracle = auc.get("oracle")
        typer.echo(f"{llm}: T1 macro AUC {auc[llm]:.3f}; best baseline {best} {auc[best]:.3f} "
                   f"(gap {auc[llm] - auc[best]:+.3f})" + (f"; oracle {oracle:.3f} (gap {auc[llm] - oracle:+.3f})"
                                                          if oracle is not None else ""))
    if best is not None and llm in result.macro_auc:
        draws = result.results["config"]["bootstrap"]
        typer.echo(f"{llm} vs {best} on the same test requests (paired bootstrap): {result.paired(llm, best)['text']}"
                   + (f" ({draws} resamples; `recbrew eval --bootstrap N` draws more)" if draws else ""))
    typer.echo(f"report: {result.paths['html']}")
    typer.echo("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in _TIMES.items()) if _TIMES else "wall time: all "
               "steps re-used")
    typer.echo(f"quickstart done in {(time.time() - began) / 60:.1f} min")
