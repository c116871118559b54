"""The Corpus: members, items, interactions and edges, saved together in one directory.

A saved corpus is a directory holding ``members``, ``items``, ``interactions`` and ``edges``
tables (all in one format: ``.parquet``, ``.jsonl`` or ``.csv``), ``corpus.json`` (free-form
metadata, plus the size and SHA-256 of every table and of the world card under ``checksums``),
``ids`` (the user's string ids, when `data import` mapped any: see `recbrew.data.ids`) and, for a synthetic world,
``world_card.json``. :meth:`Corpus.load` checks the tables against those
checksums before reading them; a directory of tables without ``corpus.json`` or world card (made by
hand) is read unchecked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from recbrew.data.ids import IdMap
from recbrew.data.io import (
    CHECKSUMS,
    CORPUS_MANIFEST,
    EXTENSIONS,
    FORMATS,
    conform,
    empty_table,
    read_table,
    seal_manifest,
    verify_manifest,
    write_table,
)
from recbrew.data.schema import TABLES
from recbrew.errors import ConfigError, IntegrityError, SchemaError, UserError

TABLE_NAMES = tuple(TABLES)
META_FILE = CORPUS_MANIFEST
CARD_FILE = "world_card.json"
#: The table of the user's ids (``ids.parquet``, or .jsonl/.csv beside tables of that format).
IDS_TABLE = "ids"
#: Tables a corpus directory may lack (read as empty).
OPTIONAL_TABLES = frozenset({"edges"})


@dataclass
class Corpus:
    """The four tables every later stage reads, plus metadata and the world card if synthetic."""

    members: pa.Table
    items: pa.Table
    interactions: pa.Table
    edges: pa.Table
    meta: dict = field(default_factory=dict)
    #: The synthetic world's card (``world_card.json``); None for other corpora.
    card: dict | None = None
    #: The user's ids of the spaces `data import` mapped (empty when every id was an integer).
    ids: IdMap = field(default_factory=lambda: IdMap({}))

    @property
    def tables(self) -> dict[str, pa.Table]:
        return {name: getattr(self, name) for name in TABLE_NAMES}

    # ----------------------------------------------------------------------- disk

    @classmethod
    def load(cls, directory: str | os.PathLike, *, tables: list[str] | None = None) -> Corpus:
        """Read and conform a saved corpus; tables left out of ``tables`` come back empty."""
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"{directory}: no such corpus directory")
        wanted = TABLE_NAMES if tables is None else tuple(tables)
        unknown = sorted(set(wanted) - set(TABLE_NAMES))
        if unknown:
            raise ConfigError(f"unknown table(s) {', '.join(unknown)} (tables are: {', '.join(TABLE_NAMES)})")

        has_card = (directory / CARD_FILE).is_file()
        meta = _read_json(directory / META_FILE, _rebuild_hint(None, has_card))
        if meta is not None or has_card:  # written by recbrew: check it before reading it
            _verify(directory, meta, has_card, wanted)
        paths = {name: _table_file(directory, name) if name in wanted else None for name in TABLE_NAMES}
        card = _read_json(directory / CARD_FILE)
        loaded = {
            name: empty_table(name) if path is None else conform(name, read_table(path, name), str(path))
            for name, path in paths.items()
        }
        ids_path = _table_file(directory, IDS_TABLE, optional=True)
        ids = IdMap.from_table(None if ids_path is None else read_table(ids_path), str(ids_path))
        meta = {k: v for k, v in (meta or {}).items() if k != CHECKSUMS}
        return cls(**loaded, meta=meta, card=card, ids=ids)

    def save(self, directory: str | os.PathLike, fmt: str = "parquet") -> Path:
        """Write the corpus to ``directory`` as a whole; on any error the directory is left untouched.

        Everything is written to a sibling temp directory first and only then moved in. Table files
        of another format (and a world card this corpus lacks) are removed so the result is one corpus.
        """
        if fmt not in EXTENSIONS:
            raise ConfigError(f"unknown corpus format '{fmt}' (use one of {', '.join(EXTENSIONS)})")
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise UserError(f"{directory}: exists and is not a directory")
        tables = {name: conform(name, tbl, f"{name} table") for name, tbl in self.tables.items()}
        files = {f"{name}{EXTENSIONS[fmt]}": tbl for name, tbl in tables.items()}
        if self.ids:
            files[f"{IDS_TABLE}{EXTENSIONS[fmt]}"] = self.ids.to_table()

        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
        try:
            for filename, tbl in files.items():
                write_table(tbl, staging / filename)
            if self.card is not None:
                _write_json(staging / CARD_FILE, self.card)
            seal_corpus(staging, self.meta)

            directory.mkdir(exist_ok=True)
            for path in sorted(staging.iterdir()):
                os.replace(path, directory / path.name)
            stale = [directory / f"{name}{ext}" for name in (*TABLE_NAMES, IDS_TABLE) for ext in FORMATS]
            if self.card is None:
                stale.append(directory / CARD_FILE)
            for path in stale:
                if path.name not in files:
                    path.unlink(missing_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    # ----------------------------------------------------------------------- checks and views

    def check_references(self) -> None:
        """Raise SchemaError unless every interaction's member and item, every edge's src (a member) and every
        edge's dst (a member or an item: a followed company, say) exist."""
        member_ids = self.members.column("member_id")
        item_ids = self.items.column("item_id")
        either = pa.chunked_array(member_ids.chunks + item_ids.chunks, type=member_ids.type)
        checks = (
            ("interactions", "member_id", member_ids, "members"),
            ("interactions", "item_id", item_ids, "items"),
            ("edges", "src", member_ids, "members"),
            ("edges", "dst", either, "members and items"),
        )
        for table, column, known, target in checks:
            values = getattr(self, table).column(column)
            unknown = pc.invert(pc.is_in(values, value_set=known.combine_chunks()))
            count = pc.sum(unknown).as_py() or 0
            if count:
                first = values[pc.index(unknown, True).as_py()].as_py()
                raise SchemaError(
                    f"{table}: {count} row(s) have a {column} missing from {target}, first {column} {first}"
                )

    def summary(self) -> dict:
        """Row counts, item types, actions, surfaces, edge kinds and the interactions' time range."""
        return {
            "source": self.meta.get("source") or ("synthetic-world" if self.card is not None else None),
            "rows": {name: tbl.num_rows for name, tbl in self.tables.items()},
            "item_types": _value_counts(self.items, "item_type"),
            "actions": _value_counts(self.interactions, "action"),
            "surfaces": _value_counts(self.interactions, "surface"),
            "edge_kinds": _value_counts(self.edges, "kind"),
            "time_range": _time_range(self.interactions.column("timestamp")),
            "user_ids": {space: len(keys) for space, keys in self.ids.keys.items()},
        }


def is_corpus_folder(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a Corpus (a members table in any format)."""
    return any((Path(directory) / f"members{ext}").is_file() for ext in FORMATS)


def corpus_files(directory: str | os.PathLike) -> list[Path]:
    """The files a corpus's checksums cover: its tables (any format) and the world card."""
    directory = Path(directory)
    names = [f"{name}{ext}" for name in (*TABLE_NAMES, IDS_TABLE) for ext in FORMATS] + [CARD_FILE]
    return [directory / n for n in names if (directory / n).is_file()]


def seal_corpus(directory: str | os.PathLike, meta: dict | None = None) -> None:
    """Write ``corpus.json``: ``meta`` (default: the one there) plus the checksums of the tables and world card."""
    directory = Path(directory)
    if meta is None:
        meta = _read_json(directory / META_FILE) or {}
    _write_json(directory / META_FILE, seal_manifest(meta, directory, corpus_files(directory)))


def _rebuild_hint(meta: dict | None, has_card: bool) -> str:
    source = (meta or {}).get("source")
    if has_card or source == "synthetic-world":
        return "run `recbrew world generate` again"
    if source == "import":
        return "run `recbrew data import` again"
    if source == "movielens-100k":
        return "run `recbrew data movielens` again"
    return "write the corpus again (`recbrew world generate`, `recbrew data import` or `recbrew data movielens`)"


def _verify(directory: Path, meta: dict | None, has_card: bool, wanted: tuple[str, ...]) -> None:
    """IntegrityError unless the ``wanted`` tables (hashed) and the other files (sizes) are as ``corpus.json``
    records them.

    A text table (CSV, JSONL) that no longer matches but still reads is reported by what is wrong with it, when
    something is (a column lost in an edit by hand, say): that says more than "changed".
    """
    fix = _rebuild_hint(meta, has_card)
    if meta is None:
        raise IntegrityError(f"{directory / META_FILE}: missing, so the corpus cannot be checked (written by an "
                             f"older recbrew, or deleted); {fix}", directory / META_FILE)

    def table_of(name: str) -> str | None:
        path = Path(name)
        return path.stem if path.suffix in FORMATS and path.stem in wanted and path.parent == Path(".") else None

    try:
        verify_manifest(meta, directory, directory / META_FILE, fix,
                        hashed=lambda name: name == CARD_FILE or Path(name).stem == IDS_TABLE
                        or table_of(name) is not None)
    except IntegrityError as exc:
        table = table_of(Path(exc.path).relative_to(directory).as_posix())
        if table is not None and Path(exc.path).suffix != ".parquet" and Path(exc.path).is_file():
            try:
                conform(table, read_table(exc.path, table), str(exc.path))
            except SchemaError:
                raise
            except Exception:  # unreadable: the checksum says it best
                pass
        raise


def _table_file(directory: Path, name: str, optional: bool = False) -> Path | None:
    found = [directory / f"{name}{ext}" for ext in FORMATS if (directory / f"{name}{ext}").is_file()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UserError(f"{directory}: several {name} tables ({names}); keep one")
    if not found:
        if optional or name in OPTIONAL_TABLES:
            return None
        raise UserError(f"{directory}: no {name} table ({name}.parquet, {name}.jsonl or {name}.csv)")
    return found[0]


def _read_json(path: Path, fix: str = "") -> dict | None:
    if not path.is_file():
        return None
    then = f"; {fix}" if fix else ""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"at line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else "(not UTF-8)"
        raise UserError(f"{path}: invalid JSON {where}{then}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object{then}")
    return value


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _value_counts(tbl: pa.Table, column: str) -> dict[str, int]:
    """Counts of a column's non-null values, most frequent first (ties by value)."""
    if column not in tbl.column_names or tbl.num_rows == 0:
        return {}
    counts = pc.value_counts(tbl.column(column).drop_null())
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    return {str(v): int(n) for v, n in sorted(pairs, key=lambda p: (-p[1], str(p[0])))}


def _time_range(timestamps: pa.ChunkedArray) -> dict | None:
    bounds = pc.min_max(timestamps)
    start, end = bounds["min"].as_py(), bounds["max"].as_py()
    if start is None:
        return None
    return {"start": start, "end": end, "start_utc": _iso(start), "end_utc": _iso(end)}


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
