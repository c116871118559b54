"""``recbrew data``: import user tables, build MovieLens-100K, and inspect a saved Corpus."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recbrew.errors import UserError

if TYPE_CHECKING:
    from recbrew.data.corpus import Corpus

app = typer.Typer(
    help="Build, import and inspect a Corpus (members, items, interactions, edges).",
    no_args_is_help=True,
    add_completion=False,
)


class Format(str, Enum):
    parquet = "parquet"
    jsonl = "jsonl"
    csv = "csv"


@app.command("import")
def import_tables(
    members: Annotated[Path, typer.Option(help="Members table (.parquet, .jsonl or .csv).")],
    items: Annotated[Path, typer.Option(help="Items table.")],
    interactions: Annotated[Path, typer.Option(help="Interactions table.")],
    out: Annotated[Path, typer.Option(help="Directory to write the Corpus to.")],
    edges: Annotated[Path | None, typer.Option(help="Edges table (optional).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Format of the written tables.")] = Format.parquet,
    force: Annotated[bool, typer.Option("--force", help="Replace the corpus in a non-empty --out.")] = False,
) -> None:
    """Validate user tables against the Corpus schema and save them as a Corpus."""
    from recbrew.data.corpus import Corpus
    from recbrew.data.io import conform, empty_table, read_table

    _check_out(out, force)
    sources = {"members": members, "items": items, "interactions": interactions, "edges": edges}
    for path in sources.values():
        # Saving replaces the corpus files in --out, which could be the very files being imported.
        if path is not None and path.resolve().parent == out.resolve():
            raise UserError(f"{out}: holds the input file {path.name}; write the corpus to another directory")
    tables = {
        name: empty_table(name) if path is None else conform(name, read_table(path, name), str(path))
        for name, path in sources.items()
    }
    meta = {"source": "import", "files": {name: str(p) for name, p in sources.items() if p is not None}}
    corpus = Corpus(**tables, meta=meta)
    corpus.check_references()
    corpus.save(out, fmt.value)
    typer.echo(f"wrote {_counts_line(corpus)} to {out} ({fmt.value})")


@app.command("movielens")
def movielens(
    out: Annotated[Path, typer.Option(help="Directory to write the Corpus to.")],
    force: Annotated[bool, typer.Option("--force", help="Replace the corpus in a non-empty --out.")] = False,
) -> None:
    """Build the MovieLens-100K Corpus from the installed recbole package."""
    from recbrew.data.movielens import load_movielens

    _check_out(out, force)
    corpus = load_movielens()
    corpus.save(out)
    typer.echo(f"wrote {_counts_line(corpus)} to {out}")


@app.command("show")
def show(
    directory: Annotated[Path, typer.Argument(help="A saved Corpus directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Print a saved Corpus's summary: row counts, item types, actions, surfaces, time range."""
    from recbrew.data.corpus import Corpus

    summary = Corpus.load(directory).summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(_render(directory, summary))


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: directory is not empty; pass --force to replace the corpus in it")


def _counts_line(corpus: Corpus) -> str:
    return ", ".join(f"{tbl.num_rows} {name}" for name, tbl in corpus.tables.items())


def _render(directory: Path, summary: dict) -> str:
    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in values.items()) or "-"

    span = summary["time_range"]
    rows = [
        ("corpus", str(directory)),
        ("source", summary["source"] or "-"),
        ("rows", counts(summary["rows"])),
        ("time", f"{span['start_utc']} .. {span['end_utc']}" if span else "-"),
        ("item types", counts(summary["item_types"])),
        ("actions", counts(summary["actions"])),
        ("surfaces", counts(summary["surfaces"])),
        ("edge kinds", counts(summary["edge_kinds"])),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
