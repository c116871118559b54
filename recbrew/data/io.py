"""Reading, validating and writing Corpus tables (Parquet, newline-delimited JSON, CSV).

:func:`conform` is the one gate every table passes through: it checks the required columns,
casts declared columns to their schema types and orders the columns. Writers go through a temp
file in the target's directory and a rename, so a failed write never leaves a half-written file.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from recbrew.data.schema import I64, STR, STR_LIST, TABLES
from recbrew.errors import SchemaError, UserError

#: File extension -> format name. ``.json`` is read as newline-delimited JSON too.
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
#: Format name -> the extension its writer uses.
EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv"}

#: int64 columns holding epoch seconds; they also accept ISO-8601 strings and Arrow timestamps.
EPOCH_COLUMNS = frozenset({"timestamp", "joined_at", "created_at"})
#: Id columns that must be unique within their table.
UNIQUE_KEYS = {"members": "member_id", "items": "item_id"}

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


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
        if _is_string(col.type):
            try:
                return col.cast(want, safe=True)  # digits: already epoch seconds
            except _ARROW_ERRORS:
                return _parse_iso(col, name, source)
    if want.equals(STR_LIST) and _is_string(col.type):
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


def _is_string(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


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
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "jsonl":
            return pjson.read_json(path)
        return pcsv.read_csv(
            path,
            # Quoted cells may hold line breaks (the writer keeps them as they are).
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=_csv_convert_options(table),
        )
    except _ARROW_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read as {fmt}: {reason}") from None


def _csv_convert_options(table: str | None) -> pcsv.ConvertOptions:
    text_columns = {}
    if table is not None:
        text_columns = {
            c.name: STR for c in TABLES[table].columns if c.type.equals(STR) or c.type.equals(STR_LIST)
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

    Interrupting a long job (Ctrl-C included) therefore never leaves a half-written ``out``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
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
