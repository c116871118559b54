"""Classic rankers end to end on a tiny seeded world: train, save, load as Scorers, score, ablate, bench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recbrew.baselines import Oracle, Popularity, load_scorer
from recbrew.baselines.ablation import run_ablation
from recbrew.baselines.bench import bench_baselines
from recbrew.baselines.config import run_config
from recbrew.baselines.features import load_rows
from recbrew.baselines.metrics import evaluate
from recbrew.baselines.scorer import ModelScorer
from recbrew.baselines.train import train_model
from recbrew.examples.build import BuildConfig, build_examples
from recbrew.scoring.protocol import Scorer, load_requests
from recbrew.world import WorldConfig, generate_world

torch.set_num_threads(1)
RECBREW = Path(sys.executable).parent / "recbrew"
TASKS = ["feed_like", "jobs_apply", "jobs_apply_listwise", "pymk_connect", "notifications_click", "ads_click",
         "learning_enroll", "events_register", "jobs_next_title"]
SMALL = ["features.history_len=10", "train.batch_size=32"]


def run(*args):
    return subprocess.run([str(RECBREW), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    generate_world(WorldConfig(members=300, days=14, seed=1), root / "world", progress=False)
    cfg = BuildConfig(tasks=TASKS, test_days=4, gap_days=1, max_train=150, max_test=80, seed=0, tokenizer="none")
    build_examples(root / "world", root / "ex", cfg, progress=False)
    return root / "ex"


@pytest.fixture(scope="module")
def cli_model(examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "dcnv2"
    done = run("baselines", "train", "dcnv2", "--examples", examples, "--out", out, "--no-progress",
               "train.epochs=2", *SMALL)
    assert done.returncode == 0, done.stderr
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


def test_cli_refuses_existing_output_and_resumes_from_the_checkpoint(cli_model, examples):
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


def test_score_command_prints_per_task_and_macro_auc(cli_model, examples):
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
        cfg = run_config(name, overrides=["train.epochs=6", *SMALL])
        model, space, _ = train_model(cfg, examples, rows=train_rows, progress=False)
        auc = evaluate(ModelScorer(name, model, space), test_rows)["macro_auc"]
        assert pop + 0.03 < auc["T1"] < oracle, (name, pop, auc, oracle)
        assert auc["T2"] is not None  # scored on T2 tasks it never trained on


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
