"""The ``recbrew`` command line: one sub-command group per stage of the flow."""

from __future__ import annotations

import sys

import typer

from recbrew import __version__
from recbrew.errors import UserError

app = typer.Typer(
    name="recbrew",
    help="Turn a decoder language model into a multi-task ranker for a professional network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"recbrew {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """recbrew: world -> tasks -> data -> train -> serve / baselines -> eval."""


def _register() -> None:
    # Imported here so `recbrew --version` stays fast and each stage's imports stay lazy.
    from recbrew.cli import baselines, bench, data, models, quickstart, serve, simulate, tasks, train, world
    from recbrew.cli import eval as eval_cli

    app.add_typer(world.app, name="world")
    app.add_typer(tasks.app, name="tasks")
    app.add_typer(data.app, name="data")
    app.add_typer(models.app, name="models")
    app.add_typer(train.app, name="train")
    app.add_typer(eval_cli.app, name="eval")
    app.add_typer(baselines.app, name="baselines")
    app.command("serve")(serve.serve)
    app.add_typer(bench.app, name="bench")
    app.command("quickstart")(quickstart.quickstart)
    app.command("simulate")(simulate.simulate)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes print one line and exit 2; other failures keep their traceback."""
    try:
        app(args=argv, standalone_mode=True)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
