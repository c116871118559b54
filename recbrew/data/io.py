"""Reading, validating and writing Corpus tables (Parquet, newline-delimited JSON, CSV).

:func:`conform` is the one gate every table passes through: it checks the required columns,
casts declared columns to their schema types and orders the columns. Writers go through a temp
file in the target's directory and a rename, so a failed write never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from recbrew.data.ids import ID_COLUMNS
from recbrew.data.schema import I64, STR, STR_LIST, TABLES, TRUE_PROB_PREFIX, is_text_type
from recbrew.errors import ConfigError, IntegrityError, SchemaError, UserError

#: File extension -> format name. ``.json`` is read as newline-delimited JSON too.
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
#: Format name -> the extension its writer uses.
EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv"}

#: int64 columns holding epoch seconds; they also accept ISO-8601 strings and Arrow timestamps.
EPOCH_COLUMNS = frozenset({"timestamp", "joined_at", "created_at"})
#: Id columns that must be unique within their table.
UNIQUE_KEYS = {"members": "member_id", "items": "item_id"}

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)

#: The longest row (bytes of one JSON line or CSV record) a text table may hold.
MAX_ROW_BYTES = 512 << 20
#: Epoch-second columns hold times from 1970-01-01 up to (not including) 2100-01-01 UTC.
EPOCH_RANGE = (0, 4_102_444_800)


# --------------------------------------------------------------------------- validation


def conform(table: str, tbl: pa.Table, source: str) -> pa.Table:
    """Check ``tbl`` against the ``table`` schema and cast its declared columns; raise SchemaError.

    Declared columns come first, in schema order, then any extra columns as they were.
    ``source`` (usually the file name) starts every error message.
    """
    schema = TABLES[table]
    names = tbl.column_names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SchemaError(f"{source}: column '{dup}' appears more than once")
    missing = [c.name for c in schema.required if c.name not in names]
    if missing:
        needs = ", ".join(c.name for c in schema.required)
        listed = ", ".join(f"'{m}'" for m in missing)
        noun = "column" if len(missing) == 1 else "columns"
        raise SchemaError(f"{source}: missing required {noun} {listed} ({table} needs: {needs})")

    columns = {}
    for name in names:
        want = schema.type_of(name)
        col = tbl.column(name)
        columns[name] = col if want is None else _coerce(col, want, name, source)

    for col in schema.required:
        values = columns[col.name]
        if values.null_count:
            first = pc.index(pc.is_null(values), True).as_py()
            raise SchemaError(
                f"{source}: required column '{col.name}' has {values.null_count} empty value(s), "
                f"first at row {first + 1}"
            )
    key = UNIQUE_KEYS.get(table)
    if key is not None:
        _check_unique(columns[key], key, table, source)

    declared = [c.name for c in schema.columns if c.name in columns]
    extras = [n for n in names if schema.column(n) is None]
    return pa.table({n: columns[n] for n in declared + extras})


def check_values(table: str, tbl: pa.Table, source: str) -> tuple[pa.Table, int]:
    """Refuse values a conformed ``table`` must not hold; drop rows repeating an earlier row of interactions or
    edges. Returns the table and the number of rows dropped.

    Refused, with a SchemaError naming ``source``, the column and the first row: epoch seconds outside
    1970..2100, a ``p_*`` probability outside [0, 1], a NaN or infinite number in a declared float column, a NUL
    character in text.
    """
    schema = TABLES[table]
    for name, col in zip(tbl.column_names, tbl.columns, strict=True):
        declared = schema.type_of(name)
        if name in EPOCH_COLUMNS and declared is not None and col.type.equals(I64):
            _check_epoch(col, name, source)
        elif declared is not None and pa.types.is_floating(col.type):
            _check_finite(col, name, source, probability=name.startswith(TRUE_PROB_PREFIX))
        if is_text_type(col.type) or (pa.types.is_list(col.type) and is_text_type(col.type.value_type)):
            _check_no_nul(col, name, source)
    if table not in ("interactions", "edges") or tbl.num_rows < 2:
        return tbl, 0
    repeated = _repeated_rows(tbl)
    dropped = int(repeated.sum())
    return (tbl.filter(pa.array(~repeated)), dropped) if dropped else (tbl, 0)


def _first_row(mask: pa.ChunkedArray | pa.Array) -> int | None:
    """Index of the first true value of a boolean array (nulls count as false), None when there is none."""
    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return None
    return pc.index(mask, True).as_py()


def _check_epoch(col: pa.ChunkedArray, name: str, source: str) -> None:
    lo, hi = EPOCH_RANGE
    row = _first_row(pc.or_(pc.less(col, lo), pc.greater_equal(col, hi)))
    if row is None:
        return
    value = col[row].as_py()
    hint = "; in milliseconds? divide by 1000" if lo <= value // 1000 < hi else ""
    raise SchemaError(f"{source}: column '{name}' holds {value} at row {row + 1}, outside 1970-01-01..2100-01-01 "
                      f"in epoch seconds{hint}")


def _check_finite(col: pa.ChunkedArray, name: str, source: str, probability: bool) -> None:
    row = _first_row(pc.invert(pc.is_finite(col)))
    if row is not None:
        raise SchemaError(f"{source}: column '{name}' holds {col[row].as_py():.7g} at row {row + 1}; "
                          "numbers must be finite")
    if probability:
        row = _first_row(pc.or_(pc.less(col, 0), pc.greater(col, 1)))
        if row is not None:
            raise SchemaError(f"{source}: column '{name}' holds {col[row].as_py():.7g} at row {row + 1}; "
                              "a probability is between 0 and 1")


def _check_no_nul(col: pa.ChunkedArray, name: str, source: str) -> None:
    arr = col.combine_chunks()
    if pa.types.is_list(arr.type):
        hits = pc.match_substring(pc.list_flatten(arr), "\x00")
        at = _first_row(hits)
        row = None if at is None else pc.list_parent_indices(arr)[at].as_py()
    else:
        row = _first_row(pc.match_substring(arr, "\x00"))
    if row is not None:
        raise SchemaError(f"{source}: column '{name}' holds a NUL character (\\0) at row {row + 1}; "
                          "text may not contain one")


def _repeated_rows(tbl: pa.Table) -> np.ndarray:
    """True for each row equal, in every column, to an earlier row."""
    keys = {f"c{i}": _to_json_text(col) if pa.types.is_nested(col.type) else col
            for i, col in enumerate(tbl.columns)}
    keyed = pa.table({**keys, "row": pa.array(np.arange(tbl.num_rows))})
    first = keyed.group_by(list(keys), use_threads=False).aggregate([("row", "min")]).column("row_min")
    repeated = np.ones(tbl.num_rows, dtype=bool)
    repeated[first.to_numpy()] = False
    return repeated


def empty_table(table: str) -> pa.Table:
    """A zero-row table with the required columns of ``table``."""
    schema = TABLES[table]
    return schema.arrow_schema([c.name for c in schema.required]).empty_table()


def _coerce(col: pa.ChunkedArray, want: pa.DataType, name: str, source: str) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if col.type.equals(want):
        return col
    if name in EPOCH_COLUMNS and want.equals(I64):
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            return _epoch_seconds(col)
        if is_text_type(col.type):
            try:
                return col.cast(want, safe=True)  # digits: already epoch seconds
            except _ARROW_ERRORS:
                return _parse_iso(col, name, source)
    if want.equals(STR_LIST) and is_text_type(col.type):
        return _parse_string_lists(col, name, source)
    try:
        return col.cast(want, safe=True)
    except _ARROW_ERRORS:
        row = _first_failure(col, lambda part: part.cast(want, safe=True))
        raise _type_error(source, name, want, col, row) from None


def _type_error(source: str, name: str, want: pa.DataType, col: pa.ChunkedArray, row: int) -> SchemaError:
    return SchemaError(
        f"{source}: column '{name}' must be {want} but holds {col.type}; "
        f"cannot convert {col[row].as_py()!r} at row {row + 1}"
    )


def _first_failure(col: pa.Array | pa.ChunkedArray, convert: Callable[..., object]) -> int:
    """Index of the first value ``convert`` rejects, found by bisection over slices."""
    lo, hi = 0, len(col)  # col[:lo] converts; the failure lies in col[lo:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(col.slice(lo, mid - lo))
            lo = mid
        except _ARROW_ERRORS:
            hi = mid
    return lo


def _check_unique(ids: pa.ChunkedArray, key: str, table: str, source: str) -> None:
    values = ids.to_numpy()
    _, first_seen = np.unique(values, return_index=True)
    if len(first_seen) == len(values):
        return
    repeated = np.ones(len(values), dtype=bool)
    repeated[first_seen] = False
    row = int(np.argmax(repeated))
    raise SchemaError(
        f"{source}: duplicate {key} {values[row]} at row {row + 1} "
        f"({key} must be unique in {table}; {int(repeated.sum())} repeated row(s))"
    )


def _epoch_seconds(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dates and timestamps (any unit, any zone) -> int64 seconds since the epoch, floored."""
    if pa.types.is_date(col.type):
        col = col.cast(pa.timestamp("s"))
    # Dropping the zone keeps the stored UTC instants, so flooring happens in UTC.
    utc = col.cast(pa.timestamp(col.type.unit))
    return pc.floor_temporal(utc, unit="second").cast(pa.timestamp("s")).cast(I64)


def _parse_iso(col: pa.ChunkedArray, name: str, source: str) -> pa.ChunkedArray:
    """ISO-8601 strings -> epoch seconds; strings without a zone are read as UTC."""
    import pandas as pd

    text = col.to_pandas()
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = (parsed.isna() & text.notna()).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise SchemaError(
            f"{source}: column '{name}' must be epoch seconds or an ISO-8601 time; "
            f"cannot convert {text.iloc[row]!r} at row {row + 1}"
        )
    return _epoch_seconds(pa.chunked_array([pa.Array.from_pandas(parsed)]))


def _parse_string_lists(col: pa.ChunkedArray, name: str, source: str) -> pa.ChunkedArray:
    """CSV cells holding a JSON list (``["a", "b"]``) or ``a|b`` -> list<string>; "" -> []."""
    text = pc.utf8_trim_whitespace(col.cast(STR).combine_chunks())
    is_json = pc.fill_null(pc.starts_with(text, "["), False)
    if not pc.any(is_json).as_py():
        return pa.chunked_array([_split_pipes(text)])
    json_cells = pc.if_else(is_json, text, "null")
    try:
        parsed = _parse_json_lists(json_cells)
    except _ARROW_ERRORS:
        row = _first_failure(json_cells, _parse_json_lists)
        raise SchemaError(
            f"{source}: column '{name}' must be a list of strings (a JSON list or 'a|b'); "
            f"cannot parse {text[row].as_py()!r} at row {row + 1}"
        ) from None
    return pa.chunked_array([pc.if_else(is_json, parsed, _split_pipes(text))])


def _split_pipes(text: pa.Array) -> pa.Array:
    parts = pc.split_pattern(text, "|")
    trimmed = pa.ListArray.from_arrays(
        parts.offsets, pc.utf8_trim_whitespace(parts.flatten()), mask=parts.is_null()
    )
    empty = pa.scalar([], type=STR_LIST)
    return pc.if_else(pc.equal(text, ""), empty, trimmed)


def _parse_json_lists(text: pa.Array) -> pa.Array:
    # One NDJSON document with a {"v": cell} line per cell lets Arrow's reader parse them all at once.
    lines = pc.binary_join_element_wise('{"v":', text, "}\n", "")
    payload = "".join(lines.to_pylist()).encode()
    parsed = pjson.read_json(
        io.BytesIO(payload),
        read_options=pjson.ReadOptions(block_size=max(len(payload), 1 << 16)),
        parse_options=pjson.ParseOptions(explicit_schema=pa.schema([("v", STR_LIST)])),
    )
    if parsed.num_rows != len(text):  # a cell with a raw line break
        raise pa.ArrowInvalid("line break inside a list cell")
    return parsed.column("v").combine_chunks()


# --------------------------------------------------------------------------- files


def format_of(path: str | os.PathLike) -> str:
    """The format name of a table file, from its extension; UserError for anything else."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise UserError(f"{path}: unknown table format '{path.suffix}' (use one of {known})")
    return fmt


def read_table(path: str | os.PathLike, table: str | None = None) -> pa.Table:
    """Read a .parquet, .jsonl/.json (one object per line) or .csv file into an Arrow table.

    Pass ``table`` to read that table's declared string columns from CSV as text (so ``"007"``
    stays a string); the result still needs :func:`conform`.
    """
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    # Arrow reads text formats in blocks that must each hold whole rows: start at 1 MiB and grow for long rows.
    block = 1 << 20
    while True:
        try:
            return _read(path, fmt, table, block)
        except _ARROW_ERRORS as exc:
            if "straddl" in str(exc) and block < MAX_ROW_BYTES:
                block = min(block * 8, MAX_ROW_BYTES)
                continue
            if "straddl" in str(exc):
                raise UserError(f"{path}: a row is longer than {MAX_ROW_BYTES >> 20} MiB, the most a row may "
                                "hold; keep long text out of the table") from None
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: cannot read as {fmt}: {reason}") from None


def _read(path: Path, fmt: str, table: str | None, block: int) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "jsonl":
        if path.stat().st_size == 0:  # no rows (the writer's empty table); Arrow refuses an empty file
            return empty_table(table) if table is not None else pa.table({})
        return pjson.read_json(path, read_options=pjson.ReadOptions(block_size=block))
    return pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=block),
        # Quoted cells may hold line breaks (the writer keeps them as they are).
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=_csv_convert_options(table),
    )


def _csv_convert_options(table: str | None) -> pcsv.ConvertOptions:
    text_columns = {}
    if table is not None:
        # Ids are read as text too: "007" and "u_1" are the user's ids, which `data import` maps (see data/ids.py).
        text_columns = {
            c.name: STR for c in TABLES[table].columns
            if c.type.equals(STR) or c.type.equals(STR_LIST) or (table, c.name) in ID_COLUMNS
        }
    # An unquoted empty cell is null, a quoted one ("") an empty string: this is what the writer emits.
    return pcsv.ConvertOptions(
        column_types=text_columns, strings_can_be_null=True, quoted_strings_can_be_null=False
    )


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write one file to; renamed over ``path`` when the block ends
    normally, removed when it raises. Readers never see half a file, and an interrupted writer leaves none.

    ``suffix`` ends the temporary name, for writers that insist on an extension (``np.savez``: ``.npz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def build_folder_once(target: Path, build: Callable[[Path], None], done: Callable[[], bool]) -> Path:
    """Build a folder into a per-process temporary sibling and rename it into place, unless ``done()`` says it
    is there already. Several processes (ranks of a distributed run) may race: the first rename wins and the
    others drop their copy. A folder that is there but not ``done()`` (another source, an old format) is replaced.
    """
    if done():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        if done():  # another process finished first
            return target
        shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not done():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_table(tbl: pa.Table, path: str | os.PathLike) -> None:
    """Write ``tbl`` in the format its extension names, atomically (temp file, then rename)."""
    path = Path(path)
    writer = _WRITERS[format_of(path)]
    with atomic_path(path) as tmp:
        writer(tbl, tmp)


def _write_parquet(tbl: pa.Table, path: Path) -> None:
    # Fixed options and no schema metadata: the same table always gives the same bytes.
    pq.write_table(
        tbl.replace_schema_metadata(None),
        path,
        compression="zstd",
        compression_level=3,
        version="2.6",
        use_dictionary=True,
        write_statistics=True,
    )


def _write_jsonl(tbl: pa.Table, path: Path) -> None:
    # Arrow has no JSON writer; json.dumps writes floats in their shortest exact form, so values round-trip.
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for batch in tbl.to_batches(max_chunksize=1 << 16):
            f.writelines(
                json.dumps(row, ensure_ascii=False, default=_json_default) + "\n" for row in batch.to_pylist()
            )


def _json_default(value: object) -> object:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _write_csv(tbl: pa.Table, path: Path) -> None:
    # CSV has no nested values: list (and other nested) columns are written as JSON text.
    columns = [_to_json_text(col) if pa.types.is_nested(col.type) else col for col in tbl.columns]
    pcsv.write_csv(pa.table(columns, names=tbl.column_names), path)


def _to_json_text(col: pa.ChunkedArray) -> pa.Array:
    values = col.to_pylist()
    return pa.array(
        [None if v is None else json.dumps(v, ensure_ascii=False, default=_json_default) for v in values],
        type=STR,
    )


_WRITERS: dict[str, Callable[[pa.Table, Path], None]] = {
    "parquet": _write_parquet,
    "jsonl": _write_jsonl,
    "csv": _write_csv,
}


@contextmanager
def staged_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A sibling folder to write into; on success it replaces ``out`` whole, on any error it vanishes.

    Interrupting a long job (Ctrl-C included) therefore never leaves a half-written ``out``. A data folder
    written this way (an examples folder, a Corpus) gets its checksums recorded before it moves in place
    (:func:`seal_data_folder`).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        seal_data_folder(staging)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- checksums
#
# A data folder recbrew writes whole (an examples folder, a Corpus) records in its manifest (``manifest.json``,
# ``corpus.json``) the size and SHA-256 of each of its files, and the SHA-256 of the manifest itself, so that a
# reader notices a truncated, deleted, damaged or edited file before it uses it.

#: The manifest key of a folder's checksums: ``{"files": {PATH: {"size": int, "sha256": str}}, "sha256": str}``,
#: PATH relative to the folder; ``sha256`` is :func:`manifest_sha256` of the whole manifest.
CHECKSUMS = "checksums"
#: How much a reader checks: ``full`` (sizes and SHA-256, the default) or ``size`` (sizes only, for very large
#: folders). The manifest's own SHA-256 is checked either way.
VERIFY_ENV = "RECBREW_VERIFY"
VERIFY_MODES = ("full", "size")
#: The manifest of an examples folder (every other file of the folder is listed) and of a Corpus.
EXAMPLES_MANIFEST = "manifest.json"
CORPUS_MANIFEST = "corpus.json"

# (resolved path, size, mtime) -> SHA-256, for the files this process has checked: a folder opened again is
# not hashed again.
_CHECKED: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(doc: Mapping) -> str:
    """SHA-256 of a manifest's canonical JSON (sorted keys, no spaces) without its own ``checksums.sha256``."""
    body = dict(doc)
    record = body.get(CHECKSUMS)
    if isinstance(record, Mapping):
        body[CHECKSUMS] = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_manifest(doc: Mapping, root: str | os.PathLike, files: Iterable[str | os.PathLike]) -> dict:
    """``doc`` plus its ``checksums``: the size and SHA-256 of each of ``files`` (under ``root``) and of ``doc``."""
    root = Path(root)
    listed = {}
    for path in sorted(Path(f) for f in files):
        listed[path.relative_to(root).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    body = {k: v for k, v in doc.items() if k != CHECKSUMS}
    sealed = json.loads(json.dumps({**body, CHECKSUMS: {"files": listed}}))  # what a reader will parse
    sealed[CHECKSUMS]["sha256"] = manifest_sha256(sealed)
    return sealed


def seal_data_folder(folder: str | os.PathLike) -> None:
    """Record the checksums of a data folder written whole: an examples folder (its ``manifest.json`` lists every
    other file) or a Corpus (``corpus.json`` lists its tables and world card). Other folders stay as they are."""
    folder = Path(folder)
    manifest = folder / EXAMPLES_MANIFEST
    if manifest.is_file():
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        files = [p for p in folder.rglob("*") if p.is_file() and p != manifest]
        atomic_write_text(manifest, json.dumps(seal_manifest(doc, folder, files), indent=2) + "\n")
        return
    from recbrew.data.corpus import is_corpus_folder, seal_corpus  # corpus.py builds on this module

    if is_corpus_folder(folder):
        seal_corpus(folder)


def verify_mode() -> str:
    """``full`` or ``size``, from the environment variable ``RECBREW_VERIFY`` (default ``full``)."""
    mode = os.environ.get(VERIFY_ENV, "").strip().lower() or "full"
    if mode not in VERIFY_MODES:
        raise ConfigError(f"{VERIFY_ENV}={mode}: use full (sizes and SHA-256, the default) or size (sizes only)")
    return mode


def verify_manifest(doc: Mapping, root: str | os.PathLike, manifest: str | os.PathLike, fix: str,
                    hashed: Callable[[str], bool] | None = None) -> None:
    """IntegrityError naming the first file of ``root`` that is not as ``doc`` (read from ``manifest``) records it.

    Sizes are always checked and the manifest's own SHA-256 too; file contents are hashed unless
    ``RECBREW_VERIFY=size``, and only the files ``hashed(path)`` picks (default: all). ``fix`` ends each message.
    """
    manifest = Path(manifest)
    record = doc.get(CHECKSUMS)
    if not isinstance(record, Mapping) or not isinstance(record.get("files"), Mapping):
        raise IntegrityError(f"{manifest}: records no checksums (written by an older recbrew, or by hand); {fix}",
                             manifest)
    if "sha256" not in record:
        raise IntegrityError(f"{manifest}: its own sha256 is missing (edited by hand?); {fix}", manifest)
    if record["sha256"] != manifest_sha256(doc):
        raise IntegrityError(f"{manifest}: sha256 does not match its content (edited by hand, or damaged); {fix}",
                             manifest)
    full = verify_mode() == "full"
    root = Path(root)
    for name, entry in record["files"].items():
        path = root / name
        if not isinstance(entry, Mapping):
            raise IntegrityError(f"{manifest}: checksums.files.{name} is not a size and sha256; {fix}", manifest)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise IntegrityError(f"{path}: missing (the folder is incomplete); {fix}", path) from None
        if stat.st_size != entry.get("size"):
            raise IntegrityError(f"{path}: {stat.st_size} bytes where {manifest.name} records {entry.get('size')} "
                                 f"(truncated or changed); {fix}", path)
        if not full or (hashed is not None and not hashed(name)):
            continue
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        digest = _CHECKED.get(key) or file_sha256(path)
        if digest != entry.get("sha256"):
            raise IntegrityError(f"{path}: sha256 does not match {manifest.name} (damaged or changed); {fix}", path)
        _CHECKED[key] = digest
