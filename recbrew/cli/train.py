"""`recbrew train`: fine-tune a language model across the task mixture (TRL + PEFT + DeepSpeed).

``recbrew train --config tiny max_steps=20 lora_r=8`` runs a job: the config is a shipped name
(`configs/train/NAME.yaml`) or a path, and any field can be overridden as ``key=value``.
``recbrew train export RUN --out DIR`` turns its result into a plain HF folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from recbrew.assets import path as asset_path
from recbrew.train import load_config
from recbrew.train import train as run
from recbrew.train.export import export
from recbrew.train.launch import launch


class _TrainGroup(TyperGroup):
    """A group whose own invocation takes ``key=value`` overrides next to its sub-commands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            return super().parse_args(ctx, args)
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
        ctx.meta["train_overrides"] = overrides
        return super().parse_args(ctx, [a for a in args if a not in overrides])


app = typer.Typer(cls=_TrainGroup, invoke_without_command=True, no_args_is_help=False,
                  help="Fine-tune a language model across the task mixture (TRL + PEFT + DeepSpeed). "
                       "Fields of the config can be overridden as key=value.")


@app.callback()
def train(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option("--config", "-c",
                                               help="configs/train/NAME.yaml name (tiny, smollm2-cpu, 7b-gpu) or a path.")
                      ] = None,
    objective: Annotated[str | None, typer.Option(help="sft (answer-token loss) or dpo (preference pairs).")] = None,
    deepspeed: Annotated[str | None, typer.Option(help="DeepSpeed config: zero2, zero3, zeropp or a path.")] = None,
    nproc: Annotated[int, typer.Option(help="Processes (ranks) for a DeepSpeed run on this machine.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run a fine-tuning job (when no sub-command is given)."""
    if ctx.invoked_subcommand is not None:
        return

    overrides = list(ctx.meta.get("train_overrides", []))
    if objective:
        overrides.append(f"objective={objective}")
    if deepspeed:
        overrides.append(f"deepspeed={deepspeed}")
    if config is None and not overrides:
        typer.echo(ctx.get_help())
        raise typer.Exit()
    cfg = load_config(config, overrides)
    if cfg.deepspeed and "LOCAL_RANK" not in os.environ:
        code = launch(cfg, nproc)
        if code:
            raise typer.Exit(code)
        return

    result = run(cfg, progress=not quiet, echo=typer.echo)
    summary = {"model_dir": str(result.model_dir), "final_loss": result.final_loss,
               "val_macro_auc": result.val_macro_auc, "steps": result.steps, "final_step": result.final_step,
               "seconds": round(result.seconds, 1)}
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        val = ""
        if result.val_macro_auc is not None:
            val = f", validation macro AUC {result.val_macro_auc:.3f}"
            if result.final_step != result.steps:
                val += f" at step {result.final_step} (the best; final/ holds it)"
        typer.echo(f"trained {result.steps} steps in {result.seconds:.0f} s: final loss {result.final_loss:.4f}{val}")
        typer.echo(f"result: {result.model_dir} (export a merged model with `recbrew train export {cfg.out}`)")


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A training run folder (or its final/).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write.")],
    adapter: Annotated[bool, typer.Option("--adapter", help="Keep the LoRA adapter instead of merging it.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Merge LoRA into a plain HF folder (loadable by vLLM and `recbrew serve`) or keep the adapter."""
    path = export(run, out, merge=not adapter, force=force)
    typer.echo(f"exported {'adapter' if adapter else 'model'} to {path}")


@app.command("configs")
def configs_cmd() -> None:
    """List the shipped training and DeepSpeed configs."""
    root = asset_path("configs")
    for kind in ("train", "deepspeed"):
        names = sorted(p.stem for p in (root / kind).glob("*.*") if p.suffix in (".yaml", ".json"))
        typer.echo(f"{kind}: {', '.join(names) or '-'}")


@app.command("hpz-check")
def hpz_check_cmd(
    nproc: Annotated[int, typer.Option(help="CPU ranks (gloo).")] = 4,
    hpz: Annotated[int, typer.Option(help="hpZ group size (ranks per simulated node).")] = 2,
    steps: Annotated[int, typer.Option(help="Training steps per run.")] = 4,
    faults: Annotated[str, typer.Option(help="Comma-separated runs after the hpZ-off baseline: none, stale, zeroed.")
                      ] = "none,stale,zeroed",
    out: Annotated[Path | None, typer.Option("--out", help="Keep the runs' results here.")] = None,
) -> None:
    """ZeRO++ hpZ self-test on CPU: hpZ on vs off bit-identical, injected faults caught by the integrity check."""
    from recbrew.bench.zero_selftest import format_selftest, run_selftest  # lazy: loads torch

    runs = [None if f.strip() == "none" else f.strip() for f in faults.split(",") if f.strip()]
    result = run_selftest(nproc=nproc, hpz=hpz, steps=steps, fault=runs, out_dir=out)
    typer.echo(format_selftest(result))
    if not result["ok"]:
        raise typer.Exit(1)
