"""`recbrew world ...`: generate the synthetic network and read its card."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from recbrew import config as configs
from recbrew.errors import UserError

app = typer.Typer(help="Generate the synthetic professional network (with ground truth).", no_args_is_help=True)


def world_config(config: str | Path | None, members: int | None, days: int | None, seed: int | None,
                 overrides: list[str] | None = None):
    """The WorldConfig of a world config file (a path, or a shipped name such as ``default``), ``key=value``
    overrides (``behaviour.interest=1.5``) and the explicit ``--members/--days/--seed``."""
    from recbrew.world import WorldConfig  # lazy: loads scipy

    flags = [f"{k}={v}" for k, v in (("members", members), ("days", days), ("seed", seed)) if v is not None]
    return configs.load(WorldConfig, "world", config, [*(overrides or []), *flags], example="behaviour.social=0")


def print_card(card: dict) -> None:
    """The world card as a short human-readable summary."""
    from rich.console import Console
    from rich.table import Table

    sizes = card["sizes"]
    console = Console()
    console.print(
        f"world seed={card['seed']} members={sizes['members']:,} (new {sizes['new_members']:,}) "
        f"items={sizes['items']:,} interactions={sizes['interactions']:,} edges={sizes['edges']:,} days={card['days']}"
    )
    table = Table(title="actions per surface")
    for col in ("surface", "action", "positives", "rate", "oracle AUC", "popularity AUC"):
        table.add_column(col, justify="left" if col in ("surface", "action") else "right")
    for surface, actions in card["actions"].items():
        for action, s in actions.items():
            def fmt(v):
                return ("-" if v is None else f"{v:.3f}")
            name = f"{action}*" if s["main"] else action
            table.add_row(surface, name, f"{s['count']:,}", fmt(s["rate"]), fmt(s["oracle_auc"]), fmt(s["popularity_auc"]))
    console.print(table)
    console.print("* main action of the surface")


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the Corpus and world_card.json into.")],
    config: Annotated[str, typer.Option("--config", help="World config: a YAML path or a shipped name "
                                        "(configs/world/NAME.yaml).")] = "default",
    members: Annotated[int | None, typer.Option(help="Number of members (about 15% join during the window); "
                                                "default: the config's (2000).")] = None,
    days: Annotated[int | None, typer.Option(help="Days of activity to simulate; default: the config's (30).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed: the same seed gives byte-identical files; "
                                             "default: the config's (0).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value settings of the world config, e.g. "
                                                          "behaviour.social=0 or new_member_share=0.3.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it already holds files.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the world card as JSON.")] = False,
) -> None:
    """Generate a world: members, items, social graph and every impression with its true probabilities."""
    from recbrew.world import generate_world  # lazy: loads scipy

    start = time.perf_counter()
    cfg = world_config(config, members, days, seed, overrides)
    card = generate_world(cfg, out, force=force, progress=progress)
    if as_json:
        typer.echo(json.dumps(card, indent=2))
    else:
        print_card(card)
        typer.echo(f"wrote {out} in {time.perf_counter() - start:.1f} s")


@app.command()
def card(world: Annotated[Path, typer.Argument(help="A directory written by `recbrew world generate`.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON.")] = False) -> None:
    """Print a generated world's card: sizes, action rates, oracle and popularity AUC."""
    from recbrew.world import CARD_FILE  # lazy: loads scipy

    path = world / CARD_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: is {world} a directory written by `recbrew world generate`?")
    data = json.loads(path.read_text())
    typer.echo(json.dumps(data, indent=2)) if as_json else print_card(data)
