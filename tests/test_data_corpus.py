"""Corpus save/load round-trips, deterministic Parquet, atomic saves, summary and references."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from recbrew.data import Corpus, conform, empty_table, read_table, write_table
from recbrew.data.io import CORPUS_MANIFEST
from recbrew.data.schema import F32, I32, I64, STR_LIST, TABLES
from recbrew.errors import ConfigError, SchemaError, UserError

FORMATS = ["parquet", "jsonl", "csv"]


def tiny_corpus(seed: int = 0) -> Corpus:
    """Seven members, nine items, forty interactions; nulls, empty strings and awkward text on purpose."""
    rng = np.random.default_rng(seed)
    member_ids = np.arange(1, 8) * 10
    item_ids = np.arange(100, 109)
    members = pa.table(
        {
            "member_id": pa.array(member_ids, I64),
            "name": ["Ada", "", None, 'Bo "B" Lee', "Çelik, Ö.", "a|b", "Eve\nNewline"],
            "skills": pa.array(
                [["python", "sql"], [], None, [""], ["a|b", "c, d"], ["ü"], ['"q"']], STR_LIST
            ),
            "years_experience": pa.array([1, None, 3, 4, 5, 6, 7], I32),
            "open_to_work": [True, None, False, True, False, True, False],
            "joined_at": pa.array(rng.integers(1_500_000_000, 1_600_000_000, 7), I64),
            "hobby": ["chess", "", None, "go", "tea", "run", "ski"],
        }
    )
    items = pa.table(
        {
            "item_id": pa.array(item_ids, I64),
            "item_type": ["job", "post", "post", "ad", "course", "group", "event", "newsletter", "job"],
            "title": [f"Item {i}" for i in item_ids],
            "genres": pa.array([["x"], None, [], ["y", "z"], None, ["x"], [], ["w"], ["v"]], STR_LIST),
            "year": pa.array([2001, None, 2003, 2004, 2005, None, 2007, 2008, 2009], I32),
            "score": rng.random(9),
        }
    )
    n = 40
    interactions = pa.table(
        {
            "member_id": pa.array(rng.choice(member_ids, n), I64),
            "item_id": pa.array(rng.choice(item_ids, n), I64),
            "action": rng.choice(["none", "click", "apply", "like"], n).tolist(),
            "timestamp": pa.array(np.sort(rng.integers(1_600_000_000, 1_700_000_000, n)), I64),
            "surface": [None if i % 7 == 3 else ["feed", "jobs"][i % 2] for i in range(n)],
            "position": pa.array(rng.integers(0, 10, n), I32),
            "rating": pa.array([None if i % 5 == 0 else float(i % 5) for i in range(n)], F32),
            "p_click": pa.array(rng.random(n), F32),
        }
    )
    edges = pa.table(
        {
            "src": pa.array(member_ids[:4], I64),
            "dst": pa.array(member_ids[1:5], I64),
            "kind": ["connection"] * 3 + ["follows_member"],
            "timestamp": pa.array([1_500_000_000, 1_500_000_100, 1_500_000_200, 1_500_000_300], I64),
        }
    )
    return Corpus(
        members, items, interactions, edges, meta={"source": "tiny", "seed": seed}, card={"world": "tiny"}
    )


def file_bytes(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_values_types_lists_and_nulls(tmp_path, fmt):
    corpus = tiny_corpus()
    corpus.save(tmp_path / "c", fmt)
    loaded = Corpus.load(tmp_path / "c")
    for name, tbl in corpus.tables.items():
        expected = conform(name, tbl, name)
        got = loaded.tables[name]
        assert got.schema == expected.schema, name
        assert got.to_pylist() == expected.to_pylist(), name
    assert loaded.meta == {"source": "tiny", "seed": 0}
    assert loaded.card == {"world": "tiny"}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
        [f"{t}.{fmt}" for t in ("members", "items", "interactions", "edges")]
        + ["corpus.json", "world_card.json"]
    )


def test_parquet_bytes_are_deterministic(tmp_path):
    tiny_corpus(seed=3).save(tmp_path / "a")
    tiny_corpus(seed=3).save(tmp_path / "b")
    tiny_corpus(seed=4).save(tmp_path / "c")
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    assert file_bytes(tmp_path / "a")["members.parquet"] != file_bytes(tmp_path / "c")["members.parquet"]

    # Schema metadata (e.g. from pandas) must not leak into the bytes.
    tbl = tiny_corpus().items
    write_table(tbl, tmp_path / "plain.parquet")
    write_table(tbl.replace_schema_metadata({"pandas": "{}"}), tmp_path / "meta.parquet")
    assert (tmp_path / "plain.parquet").read_bytes() == (tmp_path / "meta.parquet").read_bytes()


def test_write_table_leaves_no_half_written_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    target = tmp_path / "t.parquet"
    target.write_bytes(b"old")

    def crash(tbl, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        write_table(tiny_corpus().items, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_save_error_leaves_existing_corpus_untouched(tmp_path):
    out = tmp_path / "c"
    tiny_corpus().save(out)
    before = file_bytes(out)

    dup = tiny_corpus(seed=1)
    dup.members = pa.concat_tables([dup.members, dup.members.slice(0, 1)])
    with pytest.raises(SchemaError, match="duplicate member_id 10"):
        dup.save(out, "csv")

    # Fails after the tables are written: meta that JSON cannot hold.
    late = tiny_corpus(seed=1)
    late.meta = {"bad": object()}
    with pytest.raises(TypeError):
        late.save(out, "jsonl")

    assert file_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no staging directory left behind


def test_save_error_does_not_create_the_directory(tmp_path):
    bad = tiny_corpus()
    bad.interactions = bad.interactions.drop_columns(["action"])
    with pytest.raises(SchemaError, match="missing required column 'action'"):
        bad.save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_other_formats_and_stale_card(tmp_path):
    out = tmp_path / "c"
    (tmp_path / "c").mkdir()
    (out / "notes.txt").write_text("mine")
    tiny_corpus().save(out, "csv")
    plain = tiny_corpus(seed=5)
    plain.card = None
    plain.save(out, "parquet")
    expected = [CORPUS_MANIFEST, *(f"{t}.parquet" for t in TABLES), "notes.txt"]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    loaded = Corpus.load(out)
    assert loaded.card is None
    assert loaded.meta["seed"] == 5


def test_save_rejects_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="unknown corpus format 'xlsx'"):
        tiny_corpus().save(tmp_path / "c", "xlsx")


def test_load_without_edges_gives_empty_edges(tmp_path):
    corpus = tiny_corpus()
    for name in ("members", "items", "interactions"):
        write_table(corpus.tables[name], tmp_path / f"{name}.jsonl")
    loaded = Corpus.load(tmp_path)
    assert loaded.edges.num_rows == 0
    assert loaded.edges.schema == empty_table("edges").schema
    assert loaded.edges.column_names == ["src", "dst", "kind", "timestamp"]
    assert loaded.meta == {} and loaded.card is None


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="no such corpus directory"):
        Corpus.load(tmp_path / "nope")
    corpus = tiny_corpus()
    write_table(corpus.items, tmp_path / "items.parquet")
    write_table(corpus.interactions, tmp_path / "interactions.parquet")
    with pytest.raises(
        UserError, match=r"no members table \(members.parquet, members.jsonl or members.csv\)"
    ):
        Corpus.load(tmp_path)
    write_table(corpus.members, tmp_path / "members.parquet")
    write_table(corpus.members, tmp_path / "members.csv")
    with pytest.raises(UserError, match=r"several members tables \(members.parquet, members.csv\); keep one"):
        Corpus.load(tmp_path)
    with pytest.raises(ConfigError, match="unknown table"):
        Corpus.load(tmp_path, tables=["memberz"])
    (tmp_path / "corpus.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="corpus.json: expected a JSON object"):
        Corpus.load(tmp_path, tables=["items"])


def test_load_subset_of_tables(tmp_path):
    corpus = tiny_corpus()
    corpus.save(tmp_path)
    loaded = Corpus.load(tmp_path, tables=["members", "items"])
    assert loaded.members.num_rows == 7 and loaded.items.num_rows == 9
    assert loaded.interactions.num_rows == 0
    assert loaded.interactions.schema == empty_table("interactions").schema


def test_load_reports_the_bad_file(tmp_path):
    tiny_corpus().save(tmp_path, "csv")
    (tmp_path / "items.csv").write_text("item_id,item_type\n1,job\n")
    with pytest.raises(SchemaError) as err:
        Corpus.load(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'items.csv'}: missing required column 'title' (items needs: item_id, item_type, title)"
    )


def test_summary_counts_match_an_independent_count():
    corpus = tiny_corpus(seed=2)
    summary = corpus.summary()
    inter = corpus.interactions.to_pydict()
    assert summary["source"] == "tiny"
    assert summary["rows"] == {"members": 7, "items": 9, "interactions": 40, "edges": 4}
    assert summary["actions"] == dict(Counter(inter["action"]))
    assert list(summary["actions"].values()) == sorted(summary["actions"].values(), reverse=True)
    assert summary["surfaces"] == dict(Counter(s for s in inter["surface"] if s is not None))
    assert summary["item_types"] == dict(Counter(corpus.items.column("item_type").to_pylist()))
    assert summary["item_types"]["job"] == 2 and summary["item_types"]["post"] == 2
    assert summary["edge_kinds"] == {"connection": 3, "follows_member": 1}
    span = summary["time_range"]
    assert (span["start"], span["end"]) == (min(inter["timestamp"]), max(inter["timestamp"]))
    assert json.loads(json.dumps(summary)) == summary


def test_summary_of_an_empty_corpus():
    corpus = Corpus(*(empty_table(t) for t in ("members", "items", "interactions", "edges")), meta={})
    summary = corpus.summary()
    assert summary["rows"] == {"members": 0, "items": 0, "interactions": 0, "edges": 0}
    assert summary["time_range"] is None
    assert summary["actions"] == {} and summary["surfaces"] == {}


def test_time_range_is_rendered_in_utc():
    corpus = tiny_corpus()
    corpus.interactions = corpus.interactions.slice(0, 2).set_column(
        3, "timestamp", pa.array([0, 1_700_000_000], I64)
    )
    span = corpus.summary()["time_range"]
    assert span == {
        "start": 0,
        "end": 1_700_000_000,
        "start_utc": "1970-01-01T00:00:00Z",
        "end_utc": "2023-11-14T22:13:20Z",
    }


def test_check_references_reports_count_and_first_missing_id():
    corpus = tiny_corpus()
    corpus.check_references()
    ids = corpus.interactions.column("member_id").to_numpy().copy()
    ids[[5, 9]] = [999, 998]
    corpus.interactions = corpus.interactions.set_column(0, "member_id", pa.array(ids, I64))
    with pytest.raises(SchemaError) as err:
        corpus.check_references()
    assert (
        str(err.value) == "interactions: 2 row(s) have a member_id missing from members, first member_id 999"
    )

    corpus = tiny_corpus()
    corpus.edges = corpus.edges.set_column(0, "src", pa.array([10, 20, 30, 5], I64))
    with pytest.raises(SchemaError, match="edges: 1 row"):
        corpus.check_references()


def test_read_table_rejects_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"unknown table format '\.xlsx'"):
        read_table(tmp_path / "members.xlsx")
    with pytest.raises(UserError, match="no such file"):
        read_table(tmp_path / "members.csv")
    with pytest.raises(UserError, match="unknown table format"):
        write_table(tiny_corpus().members, tmp_path / "members.txt")
