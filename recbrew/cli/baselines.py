"""`recbrew baselines ...`: train and score the classic rankers."""

from __future__ import annotations

import typer

app = typer.Typer(help="Train and score the classic rankers: LiRank, LiGR, DCNv2, popularity.", no_args_is_help=True)
