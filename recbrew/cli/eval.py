"""`recbrew eval`: score every model on the same test requests and write the report."""

from __future__ import annotations

import typer

app = typer.Typer(help="Score every model on the same test requests and write the report.", no_args_is_help=True)
