"""Users' logs as they are: record-order protocols built in one command, same-second ties in file order, shipped
configs by their path, eval's reference and bootstrap unit, and commands that explain what they need or show."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import fields
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from recbrew.data.corpus import Corpus
from recbrew.errors import ConfigError, UserError
from recbrew.examples.build import BuildConfig, build_examples
from recbrew.examples.protocol import SplitRule
from recbrew.examples.requests import build_requests, time_range

DAY = 86_400
T0 = 19_700 * DAY
DOCS = Path(__file__).resolve().parents[1] / "docs"
#: The target-selection fields `data build` needs on BuildConfig (recbrew/examples/build.py).
SELECTION_FIELDS = {"val_in_order", "min_position", "last_records"}
needs_selection_fields = pytest.mark.skipif(
    not SELECTION_FIELDS <= {f.name for f in fields(BuildConfig)},
    reason="BuildConfig has no val_in_order / min_position / last_records fields")


def _movies_dir() -> Path:
    from recbrew import assets

    return assets.path("configs") / "movielens" / "tasks"


def _movies_task():
    from recbrew.tasks import load_catalog

    return load_catalog(_movies_dir())["movies_like"]


def _save_log(path: Path, rows: list[tuple[int, int, str, int]], members: int) -> Path:
    """A Corpus of ratings: rows (member, item, action, timestamp) in file order."""
    items = sorted({r[1] for r in rows})
    Corpus(pa.table({"member_id": list(range(1, members + 1)), "name": [f"M{m}" for m in range(1, members + 1)]}),
           pa.table({"item_id": items, "item_type": ["movie"] * len(items), "title": [f"MOVIE-{i}" for i in items]}),
           pa.table({"member_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                     "action": [r[2] for r in rows], "surface": ["movies"] * len(rows),
                     "timestamp": [r[3] for r in rows]}),
           pa.table({"src": pa.array([], pa.int64()), "dst": pa.array([], pa.int64()),
                     "kind": pa.array([], pa.string()), "timestamp": pa.array([], pa.int64())})).save(path)
    return path


# A MovieLens-shaped log: 8 members, 240 ratings in file order, three to a second, each a different movie -----------
RATINGS = 240


def _ratings_rows() -> list[tuple[int, int, str, int]]:
    rng = np.random.default_rng(11)
    member = rng.integers(1, 9, RATINGS)
    like = rng.random(RATINGS) < 0.55
    return [(int(member[r]), 1000 + r, "like" if like[r] else "dislike", T0 + (r // 3) * 3600) for r in range(RATINGS)]


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    return _save_log(tmp_path_factory.mktemp("ratings") / "corpus", _ratings_rows(), 8)


def _positions(rows) -> list[int]:
    """Each record's position in its member's sequence (earlier records of the member), by file order."""
    seen: dict[int, int] = {}
    out = []
    for m, *_ in rows:
        out.append(seen.get(m, 0))
        seen[m] = seen.get(m, 0) + 1
    return out


def _rule(corpus_dir, **options) -> SplitRule:
    start, end = time_range(Corpus.load(corpus_dir))
    return SplitRule(start=start, end=end, **options)


def _records(req) -> dict[str, list[int]]:
    return {s: sorted(int(p) for p in req.pos[req.split == s]) for s in ("train", "validation", "test")}


# 1. Split options -------------------------------------------------------------------------------------------------

def test_last_records_from_a_min_position_split_in_order(ratings):
    """Positions >= 10, the last 100 of those records, 80/10/10 in file order: the split a reference computes."""
    rows = _ratings_rows()
    eligible = [r for r, p in enumerate(_positions(rows)) if p >= 10]
    last = eligible[-100:]
    rule = _rule(ratings, rule="order", test_fraction=0.1, val_fraction=0.1111, val_in_order=True,
                 min_position=10, last_records=100)
    req = build_requests(Corpus.load(ratings), _movies_task(), rule, seed=0, one_target=True)
    assert _records(req) == {"train": last[:80], "validation": last[80:90], "test": last[90:]}
    # Without --last: every record from position 10 on; without --min-position: the log's last 100.
    every = build_requests(Corpus.load(ratings), _movies_task(), _rule(ratings, rule="order", min_position=10),
                           seed=0, one_target=True)
    assert sorted(every.pos.tolist()) == eligible
    tail = build_requests(Corpus.load(ratings), _movies_task(), _rule(ratings, rule="order", last_records=100),
                          seed=0, one_target=True)
    assert sorted(tail.pos.tolist()) == list(range(RATINGS - 100, RATINGS))
    # Sessions (a member's ratings of one day) are made of the selected records only.
    sessions = build_requests(Corpus.load(ratings), _movies_task(), _rule(ratings, rule="order", min_position=10),
                              seed=0)
    assert set(sessions.candidates.tolist()) == {1000 + r for r in eligible}


def test_validation_in_order_is_the_latest_training_share(ratings):
    task, corpus = _movies_task(), Corpus.load(ratings)
    rows = _ratings_rows()
    # Global, by time: the last 25% of the training requests (by time, then record) are validation.
    req = build_requests(corpus, task, _rule(ratings, rule="time", test_days=2, gap_days=0, val_fraction=0.25,
                                             val_in_order=True), seed=0, one_target=True)
    got = _records(req)
    train_part = sorted(got["train"] + got["validation"])
    assert got["validation"] == train_part[len(train_part) - round(len(train_part) * 0.25):]
    assert max(got["validation"]) < min(got["test"])
    # Per member: the last half of each member's training records, at least one left in training.
    req = build_requests(corpus, task, _rule(ratings, rule="order", scope="member", test_fraction=0.2,
                                             val_fraction=0.5, val_in_order=True), seed=0, one_target=True)
    got = _records(req)
    for m in range(1, 9):
        mine = [r for r in range(RATINGS) if rows[r][0] == m]
        n_test = min(int(np.floor(len(mine) * 0.2 + 0.5)), len(mine) - 1)
        train_part = mine[:len(mine) - n_test]
        n_val = min(int(np.floor(len(train_part) * 0.5 + 0.5)), len(train_part) - 1)
        assert [r for r in got["validation"] if rows[r][0] == m] == train_part[len(train_part) - n_val:]
        assert [r for r in got["test"] if rows[r][0] == m] == mine[len(mine) - n_test:]
    # The seeded draw stays what it was without --val-in-order.
    drawn = build_requests(corpus, task, _rule(ratings, rule="order", test_fraction=0.2, val_fraction=0.25), seed=0,
                           one_target=True)
    again = build_requests(corpus, task, _rule(ratings, rule="order", test_fraction=0.2, val_fraction=0.25), seed=0,
                           one_target=True)
    assert _records(drawn) == _records(again) and len(_records(drawn)["validation"]) == 48  # 25% of 192
    assert _records(drawn)["validation"] != _records(build_requests(
        corpus, task, _rule(ratings, rule="order", test_fraction=0.2, val_fraction=0.25, val_in_order=True), seed=0,
        one_target=True))["validation"]


def test_min_position_by_time_counts_strictly_earlier_seconds(tmp_path):
    """Under a time split a same-second rating is not "before": three ratings of one second are all position 0."""
    s = T0 + 3600
    rows = [(1, 10, "like", s), (1, 11, "dislike", s), (1, 12, "like", s), (1, 13, "like", s + 3600),
            (2, 14, "like", s), (1, 15, "dislike", s + 7200), (2, 16, "like", s + 7200)]
    log = _save_log(tmp_path / "corpus", rows, 2)
    rule = _rule(log, rule="time", test_days=1 / 24, gap_days=0, min_position=3)
    req = build_requests(Corpus.load(log), _movies_task(), rule, seed=0, one_target=True)
    # Member 1: rows 0-2 have 0 earlier seconds' ratings, row 3 has 3, row 5 has 4; member 2 never reaches 3.
    assert sorted(req.pos.tolist()) == [3, 5]
    order = _rule(log, rule="order", min_position=2)
    req = build_requests(Corpus.load(log), _movies_task(), order, seed=0, one_target=True)
    assert sorted(req.pos.tolist()) == [2, 3, 5]  # by record, rows 0 and 1 come before row 2


def test_time_split_by_fraction_of_the_log(ratings, tmp_path):
    rows = _ratings_rows()
    start, end = rows[0][3], rows[-1][3] + 1
    test_start = int(end - 0.25 * (end - start))
    rule = _rule(ratings, rule="time", test_fraction=0.25, gap_days=0)
    assert (rule.cutoff, rule.test_start) == (test_start, test_start)
    req = build_requests(Corpus.load(ratings), _movies_task(), rule, seed=0, one_target=True)
    assert _records(req)["test"] == [r for r in range(RATINGS) if rows[r][3] >= test_start]
    assert _records(req)["train"] == [r for r in range(RATINGS) if rows[r][3] < test_start]
    # The gap comes before the test part; the manifest records the boundaries.
    gapped = _rule(ratings, rule="time", test_fraction=0.25, gap_days=0.5)
    assert (gapped.test_start, gapped.cutoff) == (test_start, test_start - DAY // 2)
    res = CliRunner().invoke(_data_app(), ["build", "--corpus", str(ratings), "--out", str(tmp_path / "ex"),
                                           "--tasks-dir", str(_movies_dir()), "--tokenizer", "none", "--no-progress",
                                           "--one-target", "--split", "time", "--test-fraction", "0.25",
                                           "--gap-days", "0", "--max-train", "1000", "--max-test", "1000"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "ex" / "manifest.json").read_text())
    assert manifest["split"]["test_start"] == test_start and manifest["config"]["test_fraction"] == 0.25
    assert manifest["rows"]["test"] == len(_records(req)["test"])


@pytest.mark.parametrize(("options", "message"), [
    ({"rule": "leave-last", "scope": "member", "test_fraction": 0.2}, "--test-fraction applies to --split order and time"),
    ({"rule": "time", "scope": "member", "test_fraction": 0.2}, "use --split-scope global"),
    ({"rule": "order", "val_in_order": True}, "give --val-fraction too"),
    ({"rule": "leave-last", "scope": "member", "val_fraction": 0.5, "val_in_order": True}, "--val-in-order applies"),
    ({"rule": "order", "min_position": -1}, "--min-position -1: must be >= 0"),
    ({"rule": "order", "last_records": 0}, "--last 0: must be >= 1"),
    ({"rule": "time", "test_fraction": 0.9, "gap_days": 30}, "too short for the last 0.9 of it as test"),
])
def test_split_option_mistakes_are_one_line_errors(ratings, options, message):
    with pytest.raises(ConfigError) as err:
        _rule(ratings, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def _data_app():
    from recbrew.cli.data import app

    return app


def test_cli_refuses_test_days_with_test_fraction(ratings, tmp_path):
    res = CliRunner().invoke(_data_app(), ["build", "--corpus", str(ratings), "--out", str(tmp_path / "ex"),
                                           "--tokenizer", "none", "--test-days", "2", "--test-fraction", "0.2"])
    assert isinstance(res.exception, UserError)
    assert str(res.exception) == ("--test-days and --test-fraction are two ways to size the test part of "
                                  "--split time: pick one")
    assert not (tmp_path / "ex").exists()


def _docs_command() -> list[str]:
    """The record-order protocol's `data build` command of docs/examples-format.md, as arguments."""
    text = (DOCS / "examples-format.md").read_text()
    block = re.search(r"^(recbrew data build [^\n]*--min-position(?:[^\n]*\\\n)*[^\n]*)$", text, re.M)
    assert block, "docs/examples-format.md: no data build command with --min-position"
    return shlex.split(block.group(1).replace("\\\n", " "))[2:]


@needs_selection_fields
def test_docs_record_order_protocol_on_a_log_of_its_shape(ratings, tmp_path):
    """The docs' command, scaled from 10,000 records to 100: exact splits, full 10-item histories in file order."""
    args = _docs_command()
    assert args[:1] == ["build"] and "--val-in-order" in args and "last:10" in args
    scale = {"CORPUS": str(ratings), "ex": str(tmp_path / "ex"), "my_tasks": str(_movies_dir()),
             "10000": "100", "8000": "80", "1000": "10"}
    res = CliRunner().invoke(_data_app(), [scale.get(a, a) for a in args] + ["--tokenizer", "none", "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = _ratings_rows()
    position = _positions(rows)
    last = [r for r in range(RATINGS) if position[r] >= 10][-100:]
    text = datasets.load_from_disk(str(tmp_path / "ex" / "text"))
    structured = datasets.load_from_disk(str(tmp_path / "ex" / "structured"))
    assert {s: text[s]["record"] for s in text} == {"train": last[:80], "validation": last[80:90],
                                                   "test": last[90:]}
    for split in text:
        for r, s in zip(text[split], structured[split], strict=True):
            record = r["record"]
            before = [i for i in range(record) if rows[i][0] == rows[record][0]]
            assert r["member_interactions"] == position[record] >= 10
            assert r["history_length"] == 10 and s["hist_item_ids"] == [1000 + i for i in before[-10:]]
    config = json.loads((tmp_path / "ex" / "manifest.json").read_text())["config"]
    assert (config["min_position"], config["last_records"], config["val_in_order"]) == (10, 100, True)


# 2. Same-second history in file order -----------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["recent_first", "oldest_first"])
@pytest.mark.parametrize("split", ["leave-last", "time"])
def test_same_second_history_follows_file_order(tmp_path, order, split):
    s = T0 + 3600
    # Member 1 rates 12, 10, 11 in that file order within one second, then 13 a day later.
    rows = [(1, 12, "like", s), (1, 10, "like", s), (1, 11, "like", s), (2, 14, "like", s), (1, 13, "like", s + DAY)]
    log = _save_log(tmp_path / "corpus", rows, 2)
    tasks = tmp_path / "tasks" / "movies"
    tasks.mkdir(parents=True)
    spec = (_movies_dir() / "movies" / "movies_like.yaml").read_text()
    (tasks / "movies_like.yaml").write_text(spec.replace("order: recent_first", f"order: {order}"))
    options = {"split": "leave-last"} if split == "leave-last" else {"test_days": 0.5, "gap_days": 0}
    build_examples(log, tmp_path / "ex", BuildConfig(tasks=["movies_like"], tokenizer="none", one_target=True,
                                                     **options), tasks_dir=tasks.parent, progress=False)
    text = datasets.load_from_disk(str(tmp_path / "ex" / "text"))
    prefix = next(r["prefix"] for split_ in text for r in text[split_] if r["record"] == 4)
    shown = re.findall(r"MOVIE-(\d+)", prefix)
    assert shown == (["11", "10", "12"] if order == "recent_first" else ["12", "10", "11"])


def test_same_second_history_in_file_order_in_tasks_render(tmp_path):
    from recbrew.tasks import load_catalog
    from recbrew.verbalize.context import CorpusView

    s = T0 + 3600
    rows = [(1, 12, "like", s), (1, 10, "like", s), (1, 11, "like", s), (1, 13, "like", s + DAY)]
    view = CorpusView(Corpus.load(_save_log(tmp_path / "corpus", rows, 1)))
    task = load_catalog(_movies_dir())["movies_like"]
    assert [e.item["title"] for e in view.history(1, s + DAY, task)] == ["«MOVIE-11»", "«MOVIE-10»", "«MOVIE-12»"]
    oldest = task.model_copy(update={"history": task.history.model_copy(update={"order": "oldest_first"})})
    # Newest second first, its records in file order: the renderer keeps that order among equal times.
    assert [e.item["title"] for e in view.history(1, s + DAY, oldest)] == ["«MOVIE-12»", "«MOVIE-10»", "«MOVIE-11»"]


# 3. Shipped configs by their path under configs/ --------------------------------------------------------------------

def test_shipped_configs_by_path_under_configs(tmp_path):
    from recbrew import assets, config
    from recbrew.baselines.config import run_config

    root = assets.path("configs")
    ml = root / "movielens" / "baselines" / "lirank.yaml"
    for name in ("movielens/lirank", "movielens/baselines/lirank", "movielens/baselines/lirank.yaml"):
        assert config.resolve("baselines", name) == ml
    assert config.resolve("baselines", "lirank") == root / "baselines" / "lirank.yaml"
    assert config.resolve("baselines", Path("movielens/lirank")) == ml
    assert run_config("lirank", "movielens/lirank").to_dict() == run_config("lirank", ml).to_dict()
    assert run_config("lirank", "movielens/lirank").to_dict() != run_config("lirank", "lirank").to_dict()
    names = config.shipped_names("baselines")
    assert names == ["dcnv2", "ligr", "lirank", "movielens/dcnv2", "movielens/ligr", "movielens/lirank"]
    for bad in ("movielens/nope", "../configs/baselines/lirank", "world/default"):
        with pytest.raises(ConfigError) as err:
            config.resolve("baselines", bad)
        assert str(err.value) == (f"baselines config {bad!r}: no such file and not a shipped config "
                                  f"(shipped: {', '.join(names)})")
    # A file of that name in the working folder is still taken first.
    local = tmp_path / "movielens" / "lirank"
    local.parent.mkdir()
    local.write_text("name: lirank\n")
    assert config.resolve("baselines", str(local)) == local


# 4. Eval: the reference, the bootstrap unit, slices that apply ------------------------------------------------------

def test_record_bootstrap_draws_single_candidates():
    from recbrew.eval.compare import CompareConfig, task_samples
    from recbrew.eval.table import RequestTable

    rows = [{"request_id": f"r{i}", "task": "t", "kind": "binary", "split_tag": "T1", "member_id": i // 3,
             "candidate_ids": [10 * i, 10 * i + 1], "labels": [1, 0]} for i in range(12)]
    smp = task_samples(RequestTable.from_requests(rows), CompareConfig(bootstrap=30, unit="record"))["t"]
    assert smp.unit == "record" and smp.counts.shape == (30, 24)
    np.testing.assert_array_equal(smp.unit_of_cand, np.arange(24))
    assert (smp.counts.sum(axis=1) == 24).all() and smp.member_counts.shape == (30, 4)


def test_eval_reference_bootstrap_unit_and_slices_that_apply(ratings, tmp_path):
    from recbrew.cli.eval import app as eval_app

    ex = tmp_path / "ex"
    build_examples(ratings, ex, BuildConfig(tasks=["movies_like"], tokenizer="none", split="order",
                                            one_target=True, test_fraction=0.2, max_train=1000, max_test=1000),
                   tasks_dir=_movies_dir(), progress=False)
    runner = CliRunner()
    base = ["--models", "a=popularity,b=popularity", "--examples", str(ex), "--no-progress", "--no-oracle"]
    res = runner.invoke(eval_app, [*base, "--out", str(tmp_path / "default"), "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    default = json.loads((tmp_path / "default" / "report.json").read_text())
    assert default["paired"]["reference"] == "a"  # the first of two equal baselines
    res = runner.invoke(eval_app, [*base, "--out", str(tmp_path / "chosen"), "--bootstrap", "record:30",
                                   "--reference", "b"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "chosen" / "report.json").read_text())
    assert report["paired"]["reference"] == "b" and report["paired"]["rule"] == "chosen reference"
    assert report["paired"]["rows"]["a"]["delta_T1"] == 0.0 and report["paired"]["rows"]["a"]["ci_T1"] == [0, 0]
    assert (report["config"]["unit"], report["config"]["bootstrap"]) == ("record", 30)
    assert report["tasks"]["movies_like"]["unit"] == "record"
    assert "paired vs b (chosen reference)" in res.output
    # An order split has no time cutoff: that slice has no bucket, and no request is counted in one.
    days = report["slices"]["days_from_cutoff"]
    test_requests = report["tasks"]["movies_like"]["requests"]
    assert days["buckets"] == [] and days["without_value"] == test_requests
    assert days["note"] == "does not apply: no request has a days_from_cutoff value"
    assert sum(b["requests"] for b in report["slices"]["cold_start"]["buckets"]) == test_requests
    bad = runner.invoke(eval_app, [*base, "--out", str(tmp_path / "bad"), "--bootstrap", "session"])
    assert isinstance(bad.exception, UserError) and "--bootstrap 'session'" in str(bad.exception)
    unknown = runner.invoke(eval_app, [*base, "--out", str(tmp_path / "unknown"), "--reference", "c"])
    assert isinstance(unknown.exception, UserError)
    assert str(unknown.exception) == "reference model 'c' is not among the models: a, b"


def test_time_split_slices_keep_days_after_cutoff():
    from recbrew.eval.compare import CompareConfig, compare
    from recbrew.eval.table import RequestTable

    rows = [{"request_id": f"r{i}", "task": "t", "kind": "binary", "split_tag": "T1", "member_id": i,
             "candidate_ids": [2 * i, 2 * i + 1], "labels": [1, 0], "days_from_cutoff": float(i)} for i in range(8)]
    table = RequestTable.from_requests(rows)
    scores = {"m": np.tile([0.8, 0.2], 8)}
    res = compare(table, scores, {"m": None}, CompareConfig(bootstrap=0))
    days = res["slices"]["days_from_cutoff"]
    assert [b["requests"] for b in days["buckets"]] == [3, 2, 2, 1] and days["without_value"] == 0
    assert "note" not in days


# 5. Commands that say what they need and what they show -------------------------------------------------------------

def test_data_import_help_lists_every_column_and_type():
    from recbrew.data.schema import TABLES

    res = CliRunner().invoke(_data_app(), ["import", "--help"], terminal_width=100)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    kinds = {"string": "str", "int64": "int", "int32": "int", "float": "float", "bool": "bool",
             "list<item: string>": "list of str"}
    for table in TABLES.values():
        assert f"{table.name}: " in text
        for c in table.columns:
            assert f"{c.name}{'*' if c.required else ''} ({kinds[str(c.type)]})" in text, (table.name, c.name)
    assert "p_ACTION (float)" in text


def test_tasks_render_says_why_a_group_is_empty(tmp_path):
    from recbrew.cli.tasks import app as tasks_app

    s = T0 + 3600
    # Member 1 liked two movies, then disliked one on day 2: its latest request has no dislike before it.
    rows = [(1, 10, "like", s), (1, 11, "like", s + DAY), (1, 12, "dislike", s + 2 * DAY), (2, 13, "like", s)]
    log = _save_log(tmp_path / "corpus", rows, 2)
    res = CliRunner().invoke(tasks_app, ["render", "movies_like", "--corpus", str(log), "--member", "1",
                                         "--tasks-dir", str(_movies_dir()), "--tokenizer", "none"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "group 'liked the following movies': 2 shown" in lines
    assert ("group 'disliked the following movies': empty: no 'dislike' action on surface 'movies' before the "
            "request time (2023-12-11 01:00:00 UTC); 1 at or after it") in lines
