"""The user's own ids: string (or mixed) member and item ids mapped to the int64 ids every stage computes with.

Logs arrive with UUIDs, hashed ids or titles as keys. ``data import`` keeps integer ids as they are; when a
table's key column (``members.member_id``, ``items.item_id``) holds anything else, that id space is *mapped*:
each key gets an int64 id (1, 2, ... in the order of the key table), every column that refers to the space is
translated, and the pairs are kept in the Corpus as the ``ids`` table (``space``, ``id``, ``key``). Reports,
``models score --json`` and the servers translate back, so users only ever see their own ids.

Which columns refer to which space: members ``member_id``, interactions ``member_id``, edges ``src``, items
``ref_id`` and ``author_id`` name members; items ``item_id`` and ``company_id``, members ``company_id`` and
interactions ``item_id`` name items. An edge's ``dst`` names a member for the kinds in :data:`MEMBER_EDGE_KINDS`
and an item for every other kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recbrew.data.schema import is_text_type
from recbrew.errors import SchemaError

MEMBER, ITEM = "member", "item"
SPACES = (MEMBER, ITEM)
#: (table, column) of each space's key: the one place its ids are declared.
KEYS = {MEMBER: ("members", "member_id"), ITEM: ("items", "item_id")}
#: Columns that refer to a space's ids (besides the key itself).
REFERENCES = {
    MEMBER: (("interactions", "member_id"), ("edges", "src"), ("items", "ref_id"), ("items", "author_id")),
    ITEM: (("interactions", "item_id"), ("items", "company_id"), ("members", "company_id")),
}
#: Edge kinds whose ``dst`` is a member; any other kind's ``dst`` is an item (a company followed, say).
MEMBER_EDGE_KINDS = frozenset({"connection", "follows_member"})
#: Every column holding a member or item id (a CSV reader reads them as text, so ``007`` is not 7).
ID_COLUMNS = {(t, c) for pairs in REFERENCES.values() for t, c in pairs} | set(KEYS.values()) | {("edges", "dst")}
#: The longest id key kept (a UUID is 36 characters; a title 100 or so).
MAX_KEY_CHARS = 512

_INTEGER = r"^(0|-?[1-9][0-9]{0,17})$"  # canonical integers that int64 holds: "007" and "1e3" are keys, not ints
_DIGITS = r"^-?[0-9]+$"


@dataclass(frozen=True)
class IdMap:
    """The mapped spaces of a Corpus: ``keys[space][id - 1]`` is the user's key of int id ``id``."""

    keys: Mapping[str, np.ndarray]

    def mapped(self, space: str) -> bool:
        return space in self.keys

    def __bool__(self) -> bool:
        return bool(self.keys)

    # Corpus ids -> the user's ---------------------------------------------------------------------------------
    def user(self, space: str, ident: int | None) -> int | str | None:
        """The user's id of one Corpus id (the id itself in a space that is not mapped)."""
        if ident is None or space not in self.keys:
            return None if ident is None else int(ident)
        keys = self.keys[space]
        return str(keys[ident - 1]) if 1 <= ident <= len(keys) else int(ident)

    def users(self, space: str, ids: Iterable[int]) -> list[int | str]:
        return [self.user(space, int(i)) for i in ids]

    # The user's ids -> Corpus ids -------------------------------------------------------------------------------
    def corpus_id(self, space: str, key: int | str) -> int | None:
        """The Corpus id of one of the user's ids; None when the space has no such id. In a space that is not
        mapped an int is its own id and text is unknown."""
        if space not in self.keys:
            return key if isinstance(key, int) and not isinstance(key, bool) else None
        return self._index(space).get(str(key))

    def from_text(self, space: str, text: str) -> int | str:
        """One of the user's ids that arrived as text (a command line, a rerank document): the text in a mapped
        space; where the space's ids are integers, the integer it spells (other text stays text: no such id)."""
        text = text.strip()
        return int(text) if space not in self.keys and text.isascii() and text.isdigit() else text

    def _index(self, space: str) -> dict[str, int]:
        # Built on first use and kept on the instance (frozen: only its __dict__ can take it).
        cache = self.__dict__.setdefault("_lookup", {})
        if space not in cache:
            cache[space] = {str(k): i + 1 for i, k in enumerate(self.keys[space])}
        return cache[space]

    # The Corpus's ids table ----------------------------------------------------------------------------------
    def to_table(self) -> pa.Table:
        spaces, ids, keys = [], [], []
        for space in SPACES:
            if space in self.keys:
                n = len(self.keys[space])
                spaces += [space] * n
                ids.append(np.arange(1, n + 1, dtype=np.int64))
                keys += [str(k) for k in self.keys[space]]
        return pa.table({"space": pa.array(spaces, pa.string()),
                         "id": pa.array(np.concatenate(ids) if ids else np.zeros(0, np.int64)),
                         "key": pa.array(keys, pa.string())})

    @classmethod
    def from_table(cls, tbl: pa.Table | None, source: str = "ids table") -> IdMap:
        if tbl is None or tbl.num_rows == 0:
            return cls({})
        missing = {"space", "id", "key"} - set(tbl.column_names)
        if missing:
            raise SchemaError(f"{source}: missing column(s) {', '.join(sorted(missing))} (an ids table has space, "
                              "id, key)")
        space = np.asarray(tbl.column("space").to_pylist(), dtype=object)
        ident = tbl.column("id").to_numpy()
        key = np.asarray(tbl.column("key").to_pylist(), dtype=object)
        unknown = sorted(set(space.tolist()) - set(SPACES))
        if unknown:
            raise SchemaError(f"{source}: space {unknown[0]!r} (an id space is member or item)")
        keys = {}
        for s in (s for s in SPACES if s in set(space.tolist())):
            rows = np.flatnonzero(space == s)
            order = np.argsort(ident[rows], kind="stable")
            if not np.array_equal(ident[rows][order], np.arange(1, len(rows) + 1)):
                raise SchemaError(f"{source}: the {s} ids are not 1..{len(rows)}")
            keys[s] = key[rows][order]
        return cls(keys)


# --------------------------------------------------------------------------- import


def encode_ids(tables: dict[str, pa.Table], sources: Mapping[str, str]) -> tuple[dict[str, pa.Table], IdMap]:
    """Map the spaces whose key column holds text that is not a canonical integer; translate their references.

    ``tables`` are as read (before :func:`~recbrew.data.io.conform`); ``sources`` names each table's file for
    errors. Spaces with integer keys are left as they are, so integer logs import exactly as before. A reference
    to a key the space lacks, or a repeated key, raises SchemaError naming the user's id.
    """
    keys = {}
    for space, (table, column) in KEYS.items():
        tbl = tables.get(table)
        if tbl is None or column not in tbl.column_names:
            continue  # conform reports the missing column
        col = _dense(tbl.column(column))
        if not is_text_type(col.type) or _all_integers(col):
            continue
        text = _text(col)
        _check_keys(text, column, table, sources[table])
        keys[space] = np.asarray(text.to_pylist(), dtype=object)
    ids = IdMap(keys)
    out = dict(tables)
    for space in SPACES:
        key_table, key_column = KEYS[space]
        for table, column in ((key_table, key_column), *REFERENCES[space]):
            tbl = out.get(table)
            if tbl is None or column not in tbl.column_names:
                continue
            if not ids.mapped(space):  # left to conform, once it is clear the ids are integers
                _check_integers(_dense(tbl.column(column)), column, space, sources.get(table, table))
                continue
            rows = np.arange(tbl.num_rows)
            mapped = _translate(ids, space, _text(_dense(tbl.column(column))), rows, column, sources.get(table, table))
            out[table] = tbl.set_column(tbl.column_names.index(column), column, mapped)
    edges = out.get("edges")
    if ids and edges is not None and {"dst", "kind"} <= set(edges.column_names):
        out["edges"] = edges.set_column(edges.column_names.index("dst"), "dst",
                                        _edge_targets(ids, edges, sources.get("edges", "edges")))
    return out, ids


def _translate(ids: IdMap, space: str, text: pa.Array, rows: np.ndarray, column: str, source: str) -> pa.Array:
    """The user's ids (text; ``rows`` are their rows in the file) -> int64 Corpus ids, nulls kept.

    In a mapped space each id is looked up; in one that is not, each must be an integer (as the key table's are).
    Either way an id that does not fit raises SchemaError naming it and its row.
    """
    target = KEYS[space][0]
    if not ids.mapped(space):
        _check_integers(text, column, space, source, rows)
        return pc.utf8_trim_whitespace(text).cast(pa.int64())
    keys = pa.array(list(ids._index(space)), pa.string())
    pos = pc.index_in(text, value_set=keys)
    unknown = pc.and_(pc.is_null(pos), pc.is_valid(text))
    count = pc.sum(unknown).as_py() or 0
    if count:
        at = pc.index(unknown, True).as_py()
        raise SchemaError(f"{source}: {count} row(s) have a {column} missing from {target}, first {column} "
                          f"{text[at].as_py()!r} at row {rows[at] + 1}")
    return pc.add(pos.cast(pa.int64()), 1)


def _edge_targets(ids: IdMap, edges: pa.Table, source: str) -> pa.Array:
    """Each edge's ``dst`` in the space its kind names (members for :data:`MEMBER_EDGE_KINDS`, else items)."""
    kind = _dense(edges.column("kind")).cast(pa.string())
    to_member = pc.fill_null(pc.is_in(kind, value_set=pa.array(sorted(MEMBER_EDGE_KINDS))), False).to_numpy(
        zero_copy_only=False)
    dst = _text(_dense(edges.column("dst")))
    out = np.zeros(len(dst), dtype=np.int64)
    valid = dst.is_valid().to_numpy(zero_copy_only=False)
    for space, rows in ((MEMBER, np.flatnonzero(to_member)), (ITEM, np.flatnonzero(~to_member))):
        if len(rows):
            got = _translate(ids, space, dst.take(pa.array(rows)), rows, "dst", source)
            out[rows] = got.fill_null(0).to_numpy(zero_copy_only=False)
    return pa.array(out, mask=~valid)


def _check_integers(col: pa.Array, column: str, space: str, source: str, rows: np.ndarray | None = None) -> None:
    """SchemaError unless a column referring to a space whose keys are integers holds integers too."""
    if not is_text_type(col.type):
        return
    fits = pc.fill_null(pc.match_substring_regex(pc.utf8_trim_whitespace(col), _DIGITS), True)
    if pc.all(fits).as_py():
        return
    at = pc.index(fits, False).as_py()
    table, key = KEYS[space]
    raise SchemaError(f"{source}: {column} {col[at].as_py()!r} at row {(at if rows is None else rows[at]) + 1} is "
                      f"not an integer, while {table}' {key} values are; use the same ids in both tables")


def _check_keys(text: pa.Array, column: str, table: str, source: str) -> None:
    if text.null_count:
        row = pc.index(pc.is_null(text), True).as_py()
        raise SchemaError(f"{source}: required column '{column}' has {text.null_count} empty value(s), "
                          f"first at row {row + 1}")
    lengths = pc.utf8_length(text)
    bad = pc.or_(pc.equal(lengths, 0), pc.greater(lengths, MAX_KEY_CHARS))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise SchemaError(f"{source}: {column} {text[row].as_py()[:40]!r} at row {row + 1}: an id is 1 to "
                          f"{MAX_KEY_CHARS} characters")
    values = np.asarray(text.to_pylist(), dtype=object)
    _, first = np.unique(values, return_index=True)
    if len(first) != len(values):
        repeated = np.ones(len(values), dtype=bool)
        repeated[first] = False
        row = int(np.argmax(repeated))
        raise SchemaError(f"{source}: duplicate {column} {values[row]!r} at row {row + 1} ({column} must be unique "
                          f"in {table}; {int(repeated.sum())} repeated row(s))")


def _dense(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _text(arr: pa.Array) -> pa.Array:
    """Ids as text: integers in their decimal form, text trimmed of surrounding spaces."""
    if is_text_type(arr.type):
        return pc.utf8_trim_whitespace(arr.cast(pa.string()))
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.string())
    if pa.types.is_floating(arr.type):  # JSON ids written as 3.0
        whole = pc.equal(pc.floor(arr), arr)
        return pc.if_else(whole, arr.cast(pa.int64(), safe=False).cast(pa.string()), arr.cast(pa.string()))
    return arr.cast(pa.string())


def _all_integers(col: pa.Array) -> bool:
    text = pc.utf8_trim_whitespace(col.cast(pa.string())).drop_null()
    return bool(pc.all(pc.match_substring_regex(text, _INTEGER)).as_py() if len(text) else True)
