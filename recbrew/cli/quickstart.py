"""`recbrew quickstart`: the main job end to end on the embedded defaults, re-using finished steps."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Where every step writes its outputs."),
    members: int = typer.Option(2000, help="Members of the generated world."),
    days: int = typer.Option(30, help="Days of the generated world."),
    seed: int = typer.Option(0, help="Seed of the whole run."),
) -> None:
    """Run the pipeline end to end: generate the world and print its card (later stages join as they land)."""
    from recbrew.cli.world import print_card
    from recbrew.world import CARD_FILE, WorldConfig, generate_world

    world_dir = out / "world"
    card_path = world_dir / CARD_FILE
    wanted = {"seed": seed, "members": members, "days": days}
    if card_path.is_file() and {k: json.loads(card_path.read_text()).get(k) for k in wanted} == wanted:
        typer.echo(f"[1/1] world: re-using {world_dir}")
        card = json.loads(card_path.read_text())
    else:
        typer.echo(f"[1/1] world: generating {members:,} members x {days} days into {world_dir}")
        card = generate_world(WorldConfig(members=members, days=days, seed=seed), world_dir, force=True)
    print_card(card)
    typer.echo(f"world card: {card_path}")
