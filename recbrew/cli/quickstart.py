"""`recbrew quickstart`: the main job end to end on the embedded defaults, re-using finished steps.

Every step writes aside and moves its output into place when done, so an interrupted run leaves
no half-written step and the next run picks up where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

STEPS = 2


def _reusable(path: Path, wanted: dict) -> dict | None:
    """The JSON at ``path`` if it exists and matches ``wanted`` on every key."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if all(data.get(k) == v for k, v in wanted.items()) else None


def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Where every step writes its outputs.")] = Path("runs/quickstart"),
    members: Annotated[int, typer.Option(help="Members of the generated world.")] = 2000,
    days: Annotated[int, typer.Option(help="Days of the generated world.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the whole run.")] = 0,
    max_train: Annotated[int, typer.Option("--max-train", help="Training requests per task.")] = 300,
    max_test: Annotated[int, typer.Option("--max-test", help="Test requests per task.")] = 150,
) -> None:
    """Run the pipeline end to end: world -> examples for the whole catalog (later stages join as they land)."""
    from recbrew.cli.world import print_card
    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.world import CARD_FILE, WorldConfig, generate_world

    world_dir = out / "world"
    card = _reusable(world_dir / CARD_FILE, {"seed": seed, "members": members, "days": days})
    if card is not None:
        typer.echo(f"[1/{STEPS}] world: re-using {world_dir}")
    else:
        typer.echo(f"[1/{STEPS}] world: generating {members:,} members x {days} days into {world_dir}")
        card = generate_world(WorldConfig(members=members, days=days, seed=seed), world_dir, force=True)
    print_card(card)

    examples_dir = out / "examples"
    cfg = BuildConfig(max_train=max_train, max_test=max_test, seed=seed)
    manifest = _reusable(examples_dir / "manifest.json", {"corpus": str(world_dir.resolve())})
    if manifest is not None and manifest["config"] == json.loads(json.dumps(cfg.__dict__)):
        typer.echo(f"[2/{STEPS}] examples: re-using {examples_dir}")
    else:
        typer.echo(f"[2/{STEPS}] examples: rendering the task catalog into {examples_dir}")
        manifest = build_examples(world_dir, examples_dir, cfg, force=True)
    tags = {}
    for row in manifest["tasks"].values():
        tags[row["split_tag"]] = tags.get(row["split_tag"], 0) + 1
    typer.echo(f"examples: {len(manifest['tasks'])} tasks ({', '.join(f'{n} {t}' for t, n in sorted(tags.items()))}), "
               f"{manifest['rows']['train']:,} train / {manifest['rows']['test']:,} test requests")
    typer.echo(f"world card: {world_dir / CARD_FILE}")
    typer.echo(f"examples:   {examples_dir} (text/, structured/, manifest.json)")
