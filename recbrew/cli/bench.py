"""`recbrew bench ...`: benchmarks that print JSON with ratios against a baseline measured in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Benchmarks: JSON with ratios against a baseline measured in the same run.",
                  no_args_is_help=True)


@app.command()
def world(
    members: int = typer.Option(5000, help="Members at the base size."),
    days: int = typer.Option(3, help="Days at the base size."),
    scale: int = typer.Option(10, help="Factor for the larger runs (days and members each)."),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """World generation: member-days/s, impressions/s and peak RSS at two sizes `scale`x apart."""
    from recbrew.errors import UserError
    from recbrew.world.bench import bench_world

    if scale < 2:
        raise UserError("--scale must be at least 2")
    result = bench_world(members, days, scale, seed)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, row in result["runs"].items():
        typer.echo(f"{name:>14}: {row['members']:>9,} members x {row['days']:>3} days  {row['seconds']:8.2f} s  "
                   f"{row['impressions_per_s']:>12,.0f} impressions/s  peak RSS {row['peak_rss_mib']:8.1f} MiB")
    typer.echo(json.dumps(result["ratios"]))


@app.command()
def render(
    members: int = typer.Option(1000, help="Members of the generated world the prompts come from."),
    days: int = typer.Option(14, help="Days of that world."),
    requests: int = typer.Option(200, help="Requests (members x moments) to render."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Prompt budget."),
    task: str = typer.Option("feed_like", help="Task whose prompts are rendered."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Prompt rendering + tokenization on one core (shared prefix vs. one prompt per candidate), build rows/s."""
    from recbrew.examples.bench import bench_render

    result = bench_render(members, days, requests, max_tokens, task)
    typer.echo(json.dumps(result, indent=None if not as_json else 2))


@app.command()
def baselines(
    examples: Path = typer.Option(Path("runs/quickstart/examples"), "--examples", help="Examples built by `recbrew data build`."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Training examples/s and scoring candidates/s on CPU for each classic ranker."""
    from recbrew.baselines.bench import bench_baselines

    typer.echo(json.dumps(bench_baselines(examples), indent=2 if as_json else None))


@app.command()
def score(
    model: str = typer.Option("smollm2", help="'smollm2' or a model folder."),
    examples: Path = typer.Option(Path("runs/quickstart/examples"), "--examples", help="Where real prompts come from."),
    grid: str = typer.Option("250x10,250x50,1000x10,1000x50", help="PREFIX_TOKENSxCANDIDATES cells."),
    modes: str = typer.Option("naive,prefix,multi", help="Modes to time (the first is the reference)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Candidates/s and tokens processed per scoring mode, with speed-ups against naive in the same run."""
    from recbrew.errors import UserError
    from recbrew.scoring.bench import bench_score

    try:
        cells = tuple(tuple(int(x) for x in cell.split("x")) for cell in grid.split(","))
    except ValueError:
        raise UserError(f"--grid {grid!r}: expected cells like 250x10,1000x50") from None
    result = bench_score(model, str(examples), cells, tuple(m.strip() for m in modes.split(",")))
    typer.echo(json.dumps(result, indent=2 if as_json else None))


@app.command()
def kernels(as_json: bool = typer.Option(False, "--json", help="Print JSON only.")) -> None:
    """Multi-item attention vs dense-mask SDPA / FlexAttention, and the answer head vs torch: time and memory."""
    from recbrew.kernels.bench import bench_kernels

    typer.echo(json.dumps(bench_kernels(), indent=2 if as_json else None))


@app.command()
def serve(
    model: str = typer.Option("smollm2", help="'smollm2' or a model folder."),
    world: Path = typer.Option(Path("runs/quickstart/world"), "--world", help="Corpus the requests come from."),
    candidates: int = typer.Option(50, help="Candidates per /v1/rank request."),
    requests: int = typer.Option(3, help="Requests (members with the longest histories)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """/v1/rank candidates/s with vLLM prefix caching on vs off, and vs the HF multi-item scorer."""
    from recbrew.serve.bench import bench_serve

    typer.echo(json.dumps(bench_serve(model, str(world), candidates, requests), indent=2 if as_json else None))
