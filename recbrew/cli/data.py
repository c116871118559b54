"""``recbrew data``: import user tables, build MovieLens-100K, and inspect a saved Corpus."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from recbrew.cli.options import Address, Engine, Workers, comma_items, ray_only
from recbrew.data.corpus import Corpus
from recbrew.data.ids import encode_ids
from recbrew.data.io import check_values, conform, empty_table, read_table
from recbrew.data.movielens import load_movielens
from recbrew.data.schema import TABLES
from recbrew.errors import UserError
from recbrew.examples.build import BuildConfig, build_examples, history_line

app = typer.Typer(
    help="Build, import and inspect a Corpus (members, items, interactions, edges).",
    no_args_is_help=True,
    add_completion=False,
)


class Format(str, Enum):
    parquet = "parquet"
    jsonl = "jsonl"
    csv = "csv"


def schema_text() -> str:
    """The Corpus tables' columns and types (from `recbrew.data.schema`), for ``data import --help``."""
    def kind(t) -> str:
        return {"string": "str", "int64": "int", "int32": "int", "float": "float", "bool": "bool",
                "list<item: string>": "list of str"}.get(str(t), str(t))

    parts = ["Columns (* required; any other column is kept as it is):"]
    for table in TABLES.values():
        cols = [f"{c.name}{'*' if c.required else ''} ({kind(c.type)})" + (f": {c.doc}" if c.doc else "")
                for c in table.columns]
        cols += [f"{prefix}ACTION ({kind(t)}): true probability of ACTION (synthetic worlds)"
                 for prefix, t in table.prefixed.items()]
        parts.append(f"{table.name}: " + "; ".join(cols) + ".")
    parts.append("Member and item ids may be integers or text (UUIDs, hashed ids, titles): text ids are mapped to "
                 "integers inside the corpus and shown as yours in reports, scores and server answers.")
    parts.append("Times are integer seconds since the Unix epoch (UTC). In csv a list cell is a JSON list or a|b. "
                 "The interactions' row order is kept: record-order protocols (data build --split order) read it.")
    return "\n\n".join(parts)


@app.command("import", epilog=schema_text())
def import_tables(
    members: Annotated[Path, typer.Option(help="Members table (.parquet, .jsonl or .csv).")],
    items: Annotated[Path, typer.Option(help="Items table.")],
    interactions: Annotated[Path, typer.Option(help="Interactions table.")],
    out: Annotated[Path, typer.Option(help="Directory to write the Corpus to.")],
    edges: Annotated[Path | None, typer.Option(help="Edges table (optional).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Format of the written tables.")] = Format.parquet,
    force: Annotated[bool, typer.Option("--force", help="Replace the corpus in a non-empty --out.")] = False,
) -> None:
    """Validate user tables against the Corpus schema (types, value ranges, references) and save them as a
    Corpus. Rows of interactions and edges that repeat an earlier row are dropped, with a count."""
    _check_out(out, force)
    sources = {"members": members, "items": items, "interactions": interactions, "edges": edges}
    for path in sources.values():
        # Saving replaces the corpus files in --out, which could be the very files being imported.
        if path is not None and path.resolve().parent == out.resolve():
            raise UserError(f"{out}: holds the input file {path.name}; write the corpus to another directory")
    raw = {name: empty_table(name) if path is None else read_table(path, name) for name, path in sources.items()}
    raw, ids = encode_ids(raw, {name: str(path or name) for name, path in sources.items()})
    tables = {}
    for name, path in sources.items():
        if path is None:
            tables[name] = raw[name]
            continue
        tables[name], dropped = check_values(name, conform(name, raw[name], str(path)), str(path))
        if dropped:
            typer.echo(f"{path}: dropped {dropped} row(s) repeating an earlier row")
    for space, keys in ids.keys.items():
        typer.echo(f"{len(keys)} {space} ids are text: mapped to integers, kept in the corpus's ids table "
                   "(reports and servers show yours)")
    meta = {"source": "import", "files": {name: str(p) for name, p in sources.items() if p is not None}}
    corpus = Corpus(**tables, meta=meta, ids=ids)
    corpus.check_references()
    corpus.save(out, fmt.value)
    typer.echo(f"wrote {_counts_line(corpus)} to {out} ({fmt.value})")


@app.command("movielens")
def movielens(
    out: Annotated[Path, typer.Option(help="Directory to write the Corpus to.")],
    force: Annotated[bool, typer.Option("--force", help="Replace the corpus in a non-empty --out.")] = False,
) -> None:
    """Build the MovieLens-100K Corpus from the installed recbole package."""
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
        ("user ids", ", ".join(f"{n} {space} ids mapped" for space, n in summary.get("user_ids", {}).items())
         or "integers, as imported"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


#: `data build`'s training-injection options (docs/injection.md).
InjectShare = Annotated[float, typer.Option("--inject-share", min=0.0, max=1.0, help="Share of the training requests "
                                            "in which one candidate's text ends with an instruction-like string, the "
                                            "label unchanged, so the fine-tune learns to ignore such text (`recbrew "
                                            "bench injection` measures it).")]
InjectMemberShare = Annotated[float, typer.Option("--inject-member-share", min=0.0, max=1.0, help="Share of the "
                                                  "training requests in which the member's own title and headline are "
                                                  "replaced by an instruction-like string, the label unchanged.")]


@app.command("build")
def build(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus folder (a generated world or `data import` output).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write text/, structured/ and manifest.json.")],
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help="Comma-separated task names (default: all; "
                                                    "repeatable).")] = None,
    test_days: Annotated[float | None, typer.Option("--test-days", help="--split time: days at the end of the log "
                                                    "used for test [default: 7].")] = None,
    gap_days: Annotated[float, typer.Option("--gap-days", help="Days between the train cutoff and the test start.")] = 1.0,
    max_train: Annotated[int, typer.Option("--max-train", help="Requests per task in train (sampled).")] = 400,
    max_test: Annotated[int, typer.Option("--max-test", help="Requests per task in test (sampled).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of every sampling step.")] = 0,
    style: Annotated[str | None, typer.Option(help="Render every task in this style (default: each task's own).")] = None,
    tokenizer: Annotated[str, typer.Option(help="Tokenizer for the token budget: 'smollm2', a folder, or 'none'.")] = "smollm2",
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Override every task's token budget.")] = None,
    max_candidates: Annotated[int, typer.Option("--max-candidates", min=1,
                                                help="Candidates kept per request (the slate's first ones).")] = 20,
    burn_in_days: Annotated[float, typer.Option("--burn-in-days", help="Days at the log's start that only feed "
                                                "histories (no requests from them).")] = 0.0,
    split: Annotated[str, typer.Option("--split", help="time (by days), order (by the interactions' record order) "
                                       "or leave-last (each member's last request is test, the one before "
                                       "validation).")] = "time",
    split_scope: Annotated[str, typer.Option("--split-scope", help="global (one boundary for the log) or member "
                                             "(each member's own sequence; leave-last is always per member).")] = "global",
    test_fraction: Annotated[float | None, typer.Option("--test-fraction", help="--split order: the last fraction "
                                                        "of (each member's) requests that is test [default: 0.2]; "
                                                        "--split time: the last fraction of the log's time range "
                                                        "(instead of --test-days).")] = None,
    val_days: Annotated[float | None, typer.Option("--val-days", help="Validation split: the last D days before the "
                                                   "cutoff (--split time).")] = None,
    val_fraction: Annotated[float | None, typer.Option("--val-fraction", help="Validation split: a seeded fraction "
                                                       "of the training requests (global scope) or of the members "
                                                       "(member scope: their last training request); with "
                                                       "--val-in-order the last fraction of them.")] = None,
    val_in_order: Annotated[bool, typer.Option("--val-in-order", help="--val-fraction takes the latest training "
                                               "requests (by record for order, by time for time; per member with "
                                               "--split-scope member), not a seeded draw.")] = False,
    min_position: Annotated[int, typer.Option("--min-position", min=0, help="Targets only from a member's N-th "
                                              "action on, counted from 0 (at least N earlier actions); the "
                                              "history still shows the earlier ones.")] = 0,
    last: Annotated[int | None, typer.Option("--last", min=1, help="Only the last K labelled records (after "
                                             "--min-position) become requests, then the split divides them.")] = None,
    max_val: Annotated[int, typer.Option("--max-val", help="Requests per task in validation (sampled).")] = 200,
    one_target: Annotated[bool, typer.Option("--one-target", help="One target per request: each labelled "
                                             "impression its own request, with the history before it.")] = False,
    history: Annotated[str, typer.Option("--history", help="all (everything before the request) or last:N (the "
                                         "last N interactions before it, not bounded by the day).")] = "all",
    inject_share: InjectShare = 0.0,
    inject_member_share: InjectMemberShare = 0.0,
    tasks_dir: Annotated[Path | None, typer.Option("--tasks-dir", help="Your task folder.")] = None,
    prompts_dir: Annotated[Path | None, typer.Option("--prompts-dir", help="Your templates folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    engine: Engine = "local",
    address: Address = None,
    workers: Workers = None,
) -> None:
    """Build examples: split by time, record order or leave-last (optionally a validation split), real negatives,
    rendered prompts and a structured-feature view. docs/examples-format.md describes the folder. With --engine ray
    the members' requests are rendered by Ray tasks, one share of the members each: the folder is the same."""
    cfg = _build_config(tasks=tasks, test_days=test_days, gap_days=gap_days, max_train=max_train, max_test=max_test,
                        seed=seed, style=style, tokenizer=tokenizer, max_tokens=max_tokens, max_candidates=max_candidates,
                        burn_in_days=burn_in_days, split=split, split_scope=split_scope, test_fraction=test_fraction,
                        val_days=val_days, val_fraction=val_fraction, val_in_order=val_in_order, min_position=min_position,
                        last=last, max_val=max_val, one_target=one_target, history=history, inject_share=inject_share,
                        inject_member_share=inject_member_share)
    _write_examples(corpus, out, cfg, tasks_dir=tasks_dir, prompts_dir=prompts_dir, force=force, progress=progress,
                    engine=engine, address=address, workers=workers)


def _selection(*, val_in_order: bool, min_position: int, last: int | None, inject_share: float,
               inject_member_share: float) -> dict:
    """BuildConfig fields of the target selection, in-order validation and injection options that were asked for."""
    from dataclasses import fields

    # Target selection and in-order validation are passed only when asked for: every other protocol builds
    # with a BuildConfig that lacks their fields.
    flags = {"val_in_order": ("--val-in-order", val_in_order), "min_position": ("--min-position", min_position),
             "last_records": ("--last", last), "inject_share": ("--inject-share", inject_share),
             "inject_member_share": ("--inject-member-share", inject_member_share)}
    selection = {name: value for name, (_, value) in flags.items() if value}
    missing = sorted(selection.keys() - {f.name for f in fields(BuildConfig)})
    if missing:
        raise UserError(f"{', '.join(flags[n][0] for n in missing)}: recbrew.examples.build.BuildConfig has no "
                        f"field {', '.join(missing)} in this recbrew")
    return selection


def _build_config(*, tasks: list[str] | None, test_days: float | None, gap_days: float, max_train: int, max_test: int,
                  seed: int, style: str | None, tokenizer: str, max_tokens: int | None, max_candidates: int,
                  burn_in_days: float, split: str, split_scope: str, test_fraction: float | None,
                  val_days: float | None, val_fraction: float | None, val_in_order: bool, min_position: int,
                  last: int | None, max_val: int, one_target: bool, history: str, inject_share: float,
                  inject_member_share: float) -> BuildConfig:
    """The BuildConfig of `data build`'s options (leave-last always splits per member)."""
    if test_days is not None and test_fraction is not None and split == "time":
        raise UserError("--test-days and --test-fraction are two ways to size the test part of --split time: pick one")
    selection = _selection(val_in_order=val_in_order, min_position=min_position, last=last, inject_share=inject_share,
                           inject_member_share=inject_member_share)
    return BuildConfig(
        tasks=comma_items(tasks),
        test_days=7.0 if test_days is None else test_days,
        gap_days=gap_days, max_train=max_train, max_test=max_test, seed=seed, style=style, tokenizer=tokenizer,
        max_tokens=max_tokens, max_candidates=max_candidates, burn_in_days=burn_in_days, split=split,
        split_scope="member" if split == "leave-last" else split_scope, test_fraction=test_fraction,
        val_days=val_days, val_fraction=val_fraction, max_val=max_val, one_target=one_target, history=history,
        **selection,
    )


def _write_examples(corpus: Path, out: Path, cfg: BuildConfig, *, tasks_dir: Path | None, prompts_dir: Path | None,
                    force: bool, progress: bool, engine: str, address: str | None, workers: int | None) -> None:
    """Build the examples folder (here, or by Ray tasks with --engine ray) and print each task's counts."""
    if not progress:
        import datasets

        datasets.disable_progress_bars()
    ray_only(engine, address=address, workers=workers)
    manifest = build_examples(corpus, out, cfg, tasks_dir=tasks_dir, prompts_dir=prompts_dir, force=force,
                              progress=progress, engine=engine, address=address, workers=workers)
    _print_built(out, manifest)


def _print_built(out: Path, manifest: dict) -> None:
    splits = manifest["splits"]
    for name, row in manifest["tasks"].items():
        counts = "  ".join(f"{s} {row[s]:5}" for s in splits)
        typer.echo(f"{name:34} {row['split_tag']}  {counts}  candidates {row['candidates']:6}  "
                   f"positives {row['positives']:6}")
    rows = " / ".join(f"{manifest['rows'][s]} {s}" for s in splits)
    if (line := history_line(manifest)) is not None:
        typer.echo(line)
    for key, what in (("injected", "a candidate's text"), ("injected_member", "the member's title and headline")):
        if any(key in row for row in manifest["tasks"].values()):
            count = sum(row.get(key, 0) for row in manifest["tasks"].values())
            typer.echo(f"{count:,} of {manifest['rows']['train']:,} training requests carry an instruction-like "
                       f"string in {what}")
    typer.echo(f"wrote {out} ({rows} requests) in {manifest['seconds']:.1f} s")
