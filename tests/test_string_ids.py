"""Logs with the user's own ids: UUID members and text item ids, from `data import` to reports and served answers.

Text ids are mapped to integers once, at import (recbrew.data.ids), and translated back wherever a user reads ids:
`models score --json`, the eval report and scores.csv, `/v1/rank`, `tasks render --member`.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recbrew.data.corpus import Corpus
from recbrew.data.ids import IdMap, encode_ids
from recbrew.errors import IntegrityError, SchemaError

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "configs" / "movielens" / "tasks"
GENRES = ["Drama", "Comedy", "Action", "Horror"]


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "recbrew.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_log(folder: Path, members: int = 40, items: int = 60, ratings: int = 1400, seed: int = 0) -> dict:
    """A ratings log as it often arrives: UUID member ids, text item ids, each member fond of one genre."""
    rng = np.random.default_rng(seed)
    member_ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(members)]
    item_ids = [f"tt{9_000_000 + 37 * i:07d}" for i in range(items)]
    genre = {it: GENRES[i % len(GENRES)] for i, it in enumerate(item_ids)}
    fond = {m: GENRES[int(rng.integers(len(GENRES)))] for m in member_ids}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "members.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["member_id", "headline", "occupation"])
        w.writerows([m, "a film viewer", "student"] for m in member_ids)
    with open(folder / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "item_type", "title", "genres", "year"])
        w.writerows([it, "movie", f"Film {i}", genre[it], 1980 + i % 30] for i, it in enumerate(item_ids))
    t = 1_500_000_000
    with open(folder / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["member_id", "item_id", "action", "timestamp", "surface"])
        for _ in range(ratings):
            m, it = member_ids[int(rng.integers(members))], item_ids[int(rng.integers(items))]
            liked = rng.random() < (0.85 if genre[it] == fond[m] else 0.2)
            t += int(rng.integers(60, 7200))
            w.writerow([m, it, "like" if liked else "dislike", t, "movies"])
    return {"members": member_ids, "items": item_ids}


def _import(src: Path, out: Path) -> subprocess.CompletedProcess:
    return _cli("data", "import", "--members", src / "members.csv", "--items", src / "items.csv",
                "--interactions", src / "ratings.csv", "--out", out)


# --------------------------------------------------------------------------- import


def test_text_ids_are_mapped_at_import_and_integer_ids_are_left_as_they_are(tmp_path):
    ids = write_log(tmp_path / "log", members=12, items=15, ratings=200)
    done = _import(tmp_path / "log", tmp_path / "corpus")
    assert done.returncode == 0, done.stderr
    assert "12 member ids are text" in done.stdout and "15 item ids are text" in done.stdout
    corpus = Corpus.load(tmp_path / "corpus")
    # Integer ids 1..n in the order of the key tables; every reference translated.
    assert corpus.members.column("member_id").to_pylist() == list(range(1, 13))
    assert corpus.ids.users("member", range(1, 13)) == ids["members"]
    assert corpus.ids.users("item", range(1, 16)) == ids["items"]
    with open(tmp_path / "log" / "ratings.csv") as f:
        rows = list(csv.DictReader(f))
    got = corpus.interactions
    assert corpus.ids.users("member", got.column("member_id").to_pylist()) == [r["member_id"] for r in rows]
    assert corpus.ids.users("item", got.column("item_id").to_pylist()) == [r["item_id"] for r in rows]
    assert corpus.summary()["user_ids"] == {"member": 12, "item": 15}
    # The ids table is part of the corpus's checksums.
    table = tmp_path / "corpus" / "ids.parquet"
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="ids.parquet: sha256 does not match"):
        Corpus.load(tmp_path / "corpus")

    # A log with integer ids: no ids table, the ids as they were.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "members.csv").write_text("member_id,headline\n7,a\n3,b\n")
    (plain / "items.csv").write_text("item_id,item_type,title\n10,movie,X\n11,movie,Y\n")
    (plain / "ratings.csv").write_text("member_id,item_id,action,timestamp\n7,11,like,1000\n3,10,dislike,1001\n")
    done = _import(plain, tmp_path / "plain-corpus")
    assert done.returncode == 0 and "ids are text" not in done.stdout
    corpus = Corpus.load(tmp_path / "plain-corpus")
    assert not corpus.ids and not (tmp_path / "plain-corpus" / "ids.parquet").exists()
    assert corpus.interactions.column("member_id").to_pylist() == [7, 3]


def _tables(members, items, interactions, edges=None) -> dict[str, pa.Table]:
    out = {"members": pa.table({"member_id": members}), "items": pa.table(items),
           "interactions": pa.table(interactions)}
    if edges is not None:
        out["edges"] = pa.table(edges)
    return out


SOURCES = {"members": "m.csv", "items": "i.csv", "interactions": "r.csv", "edges": "e.csv"}


def test_every_reference_follows_its_space_and_bad_ids_get_one_line_naming_them():
    tables = _tables(["ann", "bob", "007"],
                     {"item_id": ["acme", "film-1"], "item_type": ["company", "movie"], "title": ["A", "F"],
                      "company_id": [None, "acme"], "author_id": [None, "bob"]},
                     {"member_id": ["bob", "007"], "item_id": ["film-1", "acme"]},
                     {"src": ["ann", "bob"], "dst": ["007", "acme"], "kind": ["connection", "follows_company"]})
    out, ids = encode_ids(tables, SOURCES)
    # "007" is an id of its own (text keys are never read as numbers once a space is mapped).
    assert ids.users("member", [1, 2, 3]) == ["ann", "bob", "007"]
    assert out["interactions"].column("member_id").to_pylist() == [2, 3]
    assert out["items"].column("company_id").to_pylist() == [None, 1]
    assert out["items"].column("author_id").to_pylist() == [None, 2]
    # An edge's dst is a member for a connection and an item for a company followed.
    assert out["edges"].column("dst").to_pylist() == [3, 1]
    assert IdMap.from_table(ids.to_table()).users("item", [1, 2]) == ["acme", "film-1"]
    assert ids.corpus_id("member", "bob") == 2 and ids.corpus_id("member", "zed") is None

    refused = {
        "duplicate": (_tables(["a", "b", "a"], {"item_id": ["x"], "item_type": ["movie"], "title": ["X"]},
                              {"member_id": ["a"], "item_id": ["x"]}),
                      "m.csv: duplicate member_id 'a' at row 3 (member_id must be unique in members; 1 repeated row(s))"),
        "unknown": (_tables(["a"], {"item_id": ["x"], "item_type": ["movie"], "title": ["X"]},
                            {"member_id": ["a", "a"], "item_id": ["x", "y"]}),
                    "r.csv: 1 row(s) have a item_id missing from items, first item_id 'y' at row 2"),
        "integers elsewhere": (_tables([1, 2], {"item_id": ["x"], "item_type": ["movie"], "title": ["X"]},
                                       {"member_id": ["u_1"], "item_id": ["x"]}),
                               "r.csv: member_id 'u_1' at row 1 is not an integer, while members' member_id values "
                               "are; use the same ids in both tables"),
        "edge to a member": (_tables(["a"], {"item_id": [5], "item_type": ["movie"], "title": ["X"]},
                                     {"member_id": ["a"], "item_id": [5]},
                                     {"src": ["a", "a"], "dst": ["5", "b"], "kind": ["follows_company", "connection"]}),
                             "e.csv: 1 row(s) have a dst missing from members, first dst 'b' at row 2"),
        "empty key": (_tables(["a", ""], {"item_id": ["x"], "item_type": ["movie"], "title": ["X"]},
                              {"member_id": ["a"], "item_id": ["x"]}),
                      "m.csv: member_id '' at row 2: an id is 1 to 512 characters"),
    }
    for name, (tables, message) in refused.items():
        with pytest.raises(SchemaError) as err:
            encode_ids(tables, SOURCES)
        assert str(err.value) == message, name


def test_a_corpus_with_text_ids_round_trips_in_every_format(tmp_path):
    tables = _tables(["ann", "bob"], {"item_id": ["x", "y"], "item_type": ["movie"] * 2, "title": ["X", "Y"]},
                     {"member_id": ["bob"], "item_id": ["y"], "action": ["like"], "timestamp": [5]})
    out, ids = encode_ids(tables, SOURCES)
    from recbrew.data.io import conform, empty_table

    corpus = Corpus(**{n: conform(n, t, n) for n, t in out.items()}, edges=empty_table("edges"), ids=ids)
    for fmt in ("parquet", "jsonl", "csv"):
        corpus.save(tmp_path / fmt, fmt)
        back = Corpus.load(tmp_path / fmt)
        assert back.ids.users("member", [1, 2]) == ["ann", "bob"] and back.ids.users("item", [2]) == ["y"], fmt
    # Saved again in another format into the same folder: one ids table, in that format.
    corpus.save(tmp_path / "csv", "parquet")
    assert sorted(p.name for p in (tmp_path / "csv").glob("ids.*")) == ["ids.parquet"]


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("string-ids")
    ids = write_log(root / "log")
    assert _import(root / "log", root / "corpus").returncode == 0
    build_examples(root / "corpus", root / "ex", BuildConfig(tasks=["movies_like"], split="time", test_fraction=0.2,
                                                             max_train=160, max_test=40, tokenizer="none"),
                   tasks_dir=TASKS, progress=False)
    build_tiny(root / "corpus", root / "tiny", "tiny", seed=0)
    return root, ids


@pytest.mark.slow
def test_uuid_logs_build_train_score_evaluate_and_serve_in_the_users_ids(flow, quick_lirank):
    from fastapi.testclient import TestClient

    from recbrew.examples.folder import Examples
    from recbrew.models.loading import load_model
    from recbrew.scoring import load_requests
    from recbrew.scoring.hf import HFScorer
    from recbrew.serve.app import create_app
    from recbrew.serve.ranker import RankService
    from recbrew.verbalize.collab import load_models

    root, ids = flow
    members, items = set(ids["members"]), set(ids["items"])
    train = _cli("train", "--config", "tiny", f"model={root / 'tiny'}", f"examples={root / 'ex'}",
                 f"out={root / 'run'}", "max_steps=4", "save_steps=100", "eval_steps=0", "logging_steps=1",
                 "batch_size=4", "eval_requests=8")
    assert train.returncode == 0, train.stdout + train.stderr
    model = root / "run" / "final"

    scored = _cli("models", "score", "--examples", root / "ex", "--model", model, "--json")
    assert scored.returncode == 0, scored.stderr
    requests = json.loads(scored.stdout[scored.stdout.index("{"):])["requests"]
    assert requests and {r["member_id"] for r in requests} <= members
    assert all(set(r["item_ids"]) <= items and len(r["scores"]) == len(r["item_ids"]) for r in requests)

    lirank = quick_lirank(root / "ex", root / "lirank")
    done = _cli("eval", "--models", f"popularity,lirank={root / 'lirank'},llm={model}", "--examples", root / "ex",
                "--out", root / "eval", "--bootstrap", "50", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    report = (root / "eval" / "report.md").read_text()
    shown = json.loads((root / "eval" / "report.json").read_text())["rankings"][0]
    assert shown["member"] in members and shown["member"] in report
    assert set(shown["top"]["llm"]) <= items and ", ".join(shown["top"]["llm"]) in report
    with open(root / "eval" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r["item_ids"]) for r in requests)
    assert {r["member_id"] for r in rows} <= members and {r["item_id"] for r in rows} <= items
    by_pair = {name: {(r["request_id"], r["item_id"]): float(r[name]) for r in rows} for name in ("llm", "lirank")}
    for r in requests:  # eval and `models score` give each candidate the same score, under the same ids
        for item, p in zip(r["item_ids"], r["scores"], strict=True):
            assert by_pair["llm"][(r["request_id"], item)] == pytest.approx(p, abs=1e-4)

    # Served: the request names the user's ids, and so does the answer; scores as in eval.
    test_rows = [r for r in load_requests(root / "ex", "test") if len(r["candidate_ids"]) > 1]
    row = test_rows[0]
    mapped = next(r for r in requests if r["request_id"] == row["request_id"])
    body = {"task": "movies_like", "member": mapped["member_id"], "candidates": mapped["item_ids"],
            "at": row["timestamp"]}
    lm, tok = load_model(str(model), device="cpu", dtype="auto")  # as `models score` loads it
    catalog = Examples.open(root / "ex").catalog()
    rating_models = load_models(root / "ex", catalog)  # `movies_like` declares stats.collab
    for scorer, expected in ((HFScorer(lm, tok, mode="multi", name="llm", catalog=catalog), mapped["scores"]),
                             (lirank, [by_pair["lirank"][(row["request_id"], it)] for it in mapped["item_ids"]])):
        with TestClient(create_app(RankService(tokenizer=root / "tiny", corpus_dir=root / "corpus",
                                               tasks_dir=TASKS, scorer=scorer, collab=rating_models))) as client:
            resp = client.post("/v1/rank", json=body)
            assert resp.status_code == 200, resp.text
            served = {r["candidate"]: r["score"] for r in resp.json()["results"]}
            assert set(served) == set(mapped["item_ids"])
            np.testing.assert_allclose([served[i] for i in mapped["item_ids"]], expected, atol=1e-4)
            unknown = client.post("/v1/rank", json={**body, "member": "not-a-member"})
            assert unknown.status_code == 404
            assert unknown.json()["error"]["message"] == "unknown member 'not-a-member'"
            assert client.post("/v1/rank", json={**body, "candidates": ["tt0000000"]}).status_code == 404
            assert client.post("/v1/rank", json=body).status_code == 200

    rendered = _cli("tasks", "render", "movies_like", "--corpus", root / "corpus", "--tasks-dir", TASKS,
                    "--member", mapped["member_id"], "--tokenizer", root / "tiny")
    assert rendered.returncode == 0, rendered.stderr
    assert "liked the following movies" in rendered.stdout


def test_the_serve_bench_takes_its_requests_from_examples_in_the_users_ids(flow):
    from recbrew.bench.serve import _example_requests, _same_rankings

    root, ids = flow
    bodies = _example_requests(root / "ex", 5)
    assert len(bodies) == 5 and {b["task"] for b in bodies} == {"movies_like"}
    assert all(b["member"] in ids["members"] and set(b["candidates"]) <= set(ids["items"]) for b in bodies)
    sizes = [len(b["candidates"]) for b in bodies]
    assert sizes == sorted(sizes, key=lambda n: n < 2)  # slates of several candidates first

    def answer(*ranked):
        return {"results": [{"candidate": c, "index": "ab".index(c), "score": s} for c, s in ranked]}

    before = [answer(("a", 0.9), ("b", 0.5))]
    assert _same_rankings(before, [answer(("a", 0.9), ("b", 0.5))]) == {"rankings_identical": True,
                                                                         "max_score_change": 0.0}
    assert _same_rankings(before, [answer(("b", 0.95), ("a", 0.9))]) == {"rankings_identical": False,
                                                                          "max_score_change": 0.45}
