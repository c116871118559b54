"""Command groups of the stages that build on the world and the Corpus.

Each group collects the commands of one stage of the flow; a stage's commands register here as
the stage lands, so `recbrew --help` always shows the whole pipeline in order.
"""

from __future__ import annotations

import typer

STAGES = {
    "train": "Fine-tune a language model across the task mixture (TRL + PEFT + DeepSpeed).",
    "eval": "Score every model on the same test requests and write the report.",
}


def apps() -> dict[str, typer.Typer]:
    return {name: typer.Typer(help=text, no_args_is_help=True) for name, text in STAGES.items()}
