"""Classic rankers end to end on a tiny seeded world: train, save, load as Scorers, score, ablate, bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recbrew.baselines import Oracle, Popularity, load_scorer
from recbrew.baselines.ablation import run_ablation
from recbrew.baselines.config import run_config
from recbrew.baselines.features import STORE_FIELDS, load_rows, stable_hash
from recbrew.baselines.metrics import evaluate
from recbrew.baselines.scorer import ModelScorer
from recbrew.baselines.train import train_model
from recbrew.bench.baselines import bench_baselines
from recbrew.cli import main
from recbrew.data.corpus import Corpus
from recbrew.examples.build import BuildConfig, build_examples
from recbrew.scoring.protocol import Scorer, load_requests
from recbrew.world import WorldConfig, generate_world

torch.set_num_threads(1)
TASKS = ["feed_like", "jobs_apply", "jobs_apply_listwise", "notifications_click", "events_register", "jobs_next_title"]
SMALL = ["features.history_len=10", "train.val_fraction=0"]


class Done:
    def __init__(self, code: int, out: str, err: str):
        self.returncode, self.stdout, self.stderr = code, out, err


@pytest.fixture
def run(capsys):
    """The `recbrew` command line, run in this process (as `recbrew.cli:main`)."""
    def call(*args) -> Done:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return Done(code, out.out, out.err)
    return call


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """A small world whose engagement is driven mostly by what the structured view can see."""
    root = tmp_path_factory.mktemp("baselines")
    world = WorldConfig(members=400, days=20, seed=1).with_behaviour(interest=4.0, social=0.0, interest_noise=0.1,
                                                                      drift=0.0)
    generate_world(world, root / "world", progress=False)
    cfg = BuildConfig(tasks=TASKS, test_days=4, gap_days=1, max_train=400, max_test=80, seed=0, tokenizer="none")
    build_examples(root / "world", root / "ex", cfg, progress=False)
    return root / "ex"


@pytest.fixture(scope="module")
def cli_model(examples, tmp_path_factory, cli_code):
    out = tmp_path_factory.mktemp("model") / "dcnv2"
    code = cli_code("baselines", "train", "dcnv2", "--examples", examples, "--out", out, "--no-progress",
                     "train.epochs=2", *SMALL)
    assert code == 0
    return out


def test_cli_train_saves_a_model_that_loads_back_as_a_scorer(cli_model, examples):
    assert sorted(p.name for p in cli_model.iterdir()) == ["checkpoint.pt", "model.pt", "train.json"]
    log = json.loads((cli_model / "train.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2] and log["compression"]["total"]["ratio"] > 1
    scorer = load_scorer(cli_model)
    assert isinstance(scorer, Scorer) and scorer.name == "dcnv2"
    requests = load_requests(examples, "test")  # text + structured views, as eval hands them over
    probs = scorer.score(requests)
    for r, p in zip(requests, probs, strict=True):
        assert len(p) == len(r["candidate_ids"])
        if r["kind"] == "listwise":
            assert p.sum() == pytest.approx(1.0)
    again = load_scorer(cli_model).score(requests)
    assert all(np.array_equal(a, b) for a, b in zip(probs, again, strict=True))


def test_cli_refuses_existing_output_and_resumes_from_the_checkpoint(cli_model, examples, run):
    refused = run("baselines", "train", "dcnv2", "--examples", examples, "--out", cli_model)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--force" in refused.stderr
    unknown = run("baselines", "train", "xgboost", "--examples", examples, "--out", cli_model / "x")
    assert unknown.returncode == 2 and "one of: lirank, ligr, dcnv2" in unknown.stderr
    before = json.loads((cli_model / "train.json").read_text())["epochs"]
    mixed = run("baselines", "train", "dcnv2", "--examples", examples, "--out", cli_model, "--resume",
                "--no-progress", "train.epochs=3", "train.lr=0.1", *SMALL)
    assert mixed.returncode == 2 and "another config" in mixed.stderr
    resumed = run("baselines", "train", "dcnv2", "--examples", examples, "--out", cli_model, "--resume",
                  "--no-progress", "train.epochs=3", *SMALL)
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads((cli_model / "train.json").read_text())["epochs"]
    assert [e["epoch"] for e in after] == [1, 2, 3] and after[:2] == before


def test_score_command_prints_per_task_and_macro_auc(cli_model, examples, run):
    out = run("baselines", "score", "--model", cli_model, "--model", "popularity", "--model", "oracle",
              "--examples", examples)
    assert out.returncode == 0, out.stderr
    assert "macro AUC T1" in out.stdout and "feed_like" in out.stdout and "jobs_next_title" not in out.stdout


def test_rankers_beat_popularity_on_t1_and_stay_below_the_oracle(examples):
    train_rows = load_rows(examples, "train", split_tag="T1")
    test_rows = load_rows(examples, "test")
    assert {r["split_tag"] for r in train_rows} == {"T1"}
    pop = evaluate(Popularity.fit(train_rows), test_rows)["macro_auc"]["T1"]
    oracle = evaluate(Oracle(), test_rows)["macro_auc"]["T1"]
    for name in ("lirank", "ligr"):
        cfg = run_config(name, overrides=["train.epochs=4", *SMALL])
        model, space, _ = train_model(cfg, examples, rows=train_rows, progress=False)
        auc = evaluate(ModelScorer(name, model, space), test_rows)["macro_auc"]
        assert pop + 0.1 < auc["T1"] < oracle, (name, pop, auc, oracle)
        assert auc["T2"] is not None  # scored on T2 tasks it never trained on


def test_item_store_carries_what_the_structured_view_leaves_out(cli_model, examples):
    """Job candidates show no function in the structured view; the item store has it."""
    row = next(r for r in load_rows(examples, "test") if r["task"] == "jobs_apply_listwise")
    assert row["cand_topic"][0] is None
    space = load_scorer(cli_model).space
    items = Corpus.load(examples.parent / "world", tables=["items"]).items
    function = dict(zip(items["item_id"].to_pylist(), items["function"].to_pylist(), strict=True))
    enc = space.encode([row])
    got = enc["cand_store"][0, : len(row["candidate_ids"]), STORE_FIELDS.index("function")]
    want = stable_hash([function[c] for c in row["candidate_ids"]], "function", space.config.cat_buckets)
    np.testing.assert_array_equal(got, want)
    same = [function[c] == row["member_function"] for c in row["candidate_ids"]]
    np.testing.assert_array_equal(enc["cand_match"][0, : len(same), 0], same)


def test_ablation_writes_table_and_reuses_trained_variants(examples, tmp_path):
    overrides = ["train.epochs=1", *SMALL]
    result = run_ablation(examples, tmp_path, overrides=overrides, variants=["lirank", "lirank_no_calibration"],
                          progress=False)
    rows = {r["comparison"]: r for r in result["rows"]}
    assert set(rows) == {"isotonic calibration", "embedding tables"}
    assert rows["embedding tables"]["size_ratio"] == pytest.approx(24 / 64)  # dim 16: 16 codes + 8 bytes vs 64
    assert abs(rows["embedding tables"]["delta_T1"]) < 0.01
    assert rows["isotonic calibration"]["ece_a"] is not None and rows["isotonic calibration"]["ece_b"] is not None
    md = (tmp_path / "ablation.md").read_text()
    assert "| isotonic calibration | off | on |" in md and "size ratio 0.375" in md
    model_file = tmp_path / "models" / "lirank-seed0" / "model.pt"
    stamp = model_file.stat().st_mtime_ns
    again = run_ablation(examples, tmp_path, overrides=overrides, variants=["lirank", "lirank_no_calibration"],
                         progress=False)
    assert model_file.stat().st_mtime_ns == stamp and again["rows"] == result["rows"]
    assert json.loads((tmp_path / "ablation.json").read_text())["rows"] == result["rows"]


def test_bench_reports_training_and_scoring_speed(examples):
    result = bench_baselines(examples, max_train=200, max_test=100)
    json.dumps(result)
    assert set(result["models"]) == {"popularity", "dcnv2", "lirank", "ligr"}
    for m in result["models"].values():
        assert m["train_examples_per_s"] > 0 and m["score_candidates_per_s"] > 0
    assert result["ratios_vs_dcnv2"]["dcnv2"] == {"train_examples_per_s": 1.0, "score_candidates_per_s": 1.0}
