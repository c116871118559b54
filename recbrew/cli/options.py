"""Parsing and options shared by the commands."""

from __future__ import annotations

from typing import Annotated

import typer

from recbrew.errors import UserError

#: ``--engine``, ``--address``, ``--workers`` and ``--worker-cpus``: where `data build`, `models score` and `eval`
#: run their work (`recbrew.cluster`; docs/scale.md).
Engine = Annotated[str, typer.Option("--engine", help="local (this process) or ray (Ray workers; docs/scale.md).")]
Address = Annotated[str | None, typer.Option("--address", help="--engine ray: a running Ray cluster (HOST:PORT); "
                                             "default: a local Ray for this command.")]
Workers = Annotated[int | None, typer.Option("--workers", min=1, help="--engine ray: Ray workers (default: as "
                                             "many as the cluster's CPUs or GPUs fit).")]
WorkerCpus = Annotated[int | None, typer.Option("--worker-cpus", min=1, help="--engine ray: CPUs of each scoring "
                                                "actor (default: up to 4; on GPUs one GPU each).")]


def ray_only(engine: str, **given) -> None:
    """One line when a Ray option is given without ``--engine ray``."""
    named = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
    if engine != "ray" and named:
        raise UserError(f"{', '.join(named)}: option{'s' * (len(named) > 1)} of --engine ray")


def comma_items(values: str | list[str] | None) -> list[str] | None:
    """Comma-separated items of an option (None when there are none); a repeatable option's occurrences all
    count, none is dropped for the last one."""
    if not values:
        return None
    return [v.strip() for value in ([values] if isinstance(values, str) else values)
            for v in value.split(",") if v.strip()] or None
