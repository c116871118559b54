"""`recbrew train`: fine-tune a language model across the task mixture (TRL + PEFT + DeepSpeed)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Fine-tune a language model across the task mixture (TRL + PEFT + DeepSpeed).",
                  no_args_is_help=True)
