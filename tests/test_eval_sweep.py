"""Scaling sweeps: each point trains, scores and lands on the plot; finished points are reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recbrew.baselines.features import load_rows
from recbrew.errors import ConfigError
from recbrew.eval.check_html import check_html
from recbrew.eval.sweep import Point, SweepConfig, fit_trend, run_sweep

torch.set_num_threads(1)
TASKS = ["feed_like", "jobs_apply", "events_register"]
FAST = ["train.epochs=1", "train.val_fraction=0", "features.history_len=10"]


@pytest.fixture(scope="module")
def examples(tmp_path_factory, small_setup):
    root = small_setup(tmp_path_factory.mktemp("sweep"), TASKS, max_train=80, max_test=20, world=(250, 14, 3),
                       tiny_seed=None)
    return root / "ex"


def test_fit_trend_recovers_a_log_linear_line():
    points = [Point("data", n, f"data-{n}", float(n), auc_T1=0.6 + 0.05 * np.log10(n)) for n in (10, 100, 1000)]
    fit = fit_trend(points, "auc_T1")
    assert fit["slope"] == pytest.approx(0.05) and fit["intercept"] == pytest.approx(0.6) and fit["r2"] == 1.0
    assert fit_trend(points[:1], "auc_T1") is None and fit_trend(points, "auc_T2") is None


def test_sweep_config_rejects_axes_a_family_cannot_sweep(examples, tmp_path):
    with pytest.raises(ConfigError, match="needs a language model"):
        SweepConfig(examples, tmp_path, axis="model", values=["tiny"], family="lirank").check()
    with pytest.raises(ConfigError, match="unknown sweep axis"):
        SweepConfig(examples, tmp_path, axis="width", values=[1]).check()
    with pytest.raises(ConfigError, match="whole numbers"):
        SweepConfig(examples, tmp_path, axis="data", values=["many"]).check()


@pytest.mark.slow
def test_lirank_data_sweep_trains_each_point_and_reuses_finished_ones(examples, tmp_path):
    train_rows = len(load_rows(examples, "train", split_tag="T1"))
    cfg = SweepConfig(examples, tmp_path / "sweep", axis="data", values=[30, 10_000], family="lirank",
                      overrides=FAST, progress=False)
    result = run_sweep(cfg)
    small, full = result.points
    # The cap takes the latest N training requests; a cap above the data takes them all.
    assert small.size == 30 and full.size == train_rows
    assert json.loads((tmp_path / "sweep" / "points" / "data-30" / "model" / "train.json").read_text())[
        "train_requests"] == 30
    for p in result.points:
        report = json.loads((tmp_path / "sweep" / "points" / p.label / "eval" / "report.json").read_text())
        assert p.auc_T1 == report["summary"][p.label]["auc_T1"] and p.auc_T1 is not None
    assert result.fits["T1"]["r2"] == 1.0  # two points: the line goes through both
    doc = json.loads(result.paths["json"].read_text())
    assert [p["label"] for p in doc["points"]] == ["data-30", "data-10000"]
    assert "data:image/png;base64," in result.paths["html"].read_text()
    assert check_html(result.paths["html"]).ok
    assert "trend T1" in result.table()
    saved = tmp_path / "sweep" / "points" / "data-30" / "point.json"
    stamp = saved.stat().st_mtime_ns
    again = run_sweep(cfg)
    assert saved.stat().st_mtime_ns == stamp and again.points[0].auc_T1 == small.auc_T1


@pytest.mark.slow
def test_llm_sweep_point_fine_tunes_through_recbrew_train_and_scores_the_result(examples, tmp_path):
    cfg = SweepConfig(examples, tmp_path / "llm", axis="data", values=[8], family="llm", base_model="tiny",
                      max_steps=2, progress=False)
    (point,) = run_sweep(cfg).points
    assert point.size == 8 and point.train_info["steps"] == 2 and point.train_info["lora"] is False
    assert point.train_info["base_model"].endswith("recbrew-tiny-tiny-seed0")
    report = json.loads((tmp_path / "llm" / "points" / "data-8" / "eval" / "report.json").read_text())
    assert report["meta"]["models"][0]["kind"] == "lm"
    assert point.auc_T1 == report["summary"]["data-8"]["auc_T1"] is not None


def test_llm_sweep_with_a_training_config_counts_labelled_items_and_caps_the_test_set(examples, tmp_path,
                                                                                     shared_tiny):
    """--train-config: every point trains with that recipe (its size sets max_examples); the data axis reads
    labelled items; --max-test scores the first N test requests of each task."""
    tiny = shared_tiny(examples.parent / "world", "tiny", 0)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {tiny}\nlora: false\nmax_steps: 2\nbatch_size: 4\n")
    cfg = SweepConfig(examples, tmp_path / "llm", axis="data", values=[6, 12], family="llm", train_config=str(recipe),
                      max_test=2, progress=False)
    points = run_sweep(cfg).points
    assert [p.train_info["steps"] for p in points] == [2, 2]
    assert points[0].size == points[0].train_info["labelled_items"] < points[1].size
    report = json.loads((tmp_path / "llm" / "points" / "data-6" / "eval" / "report.json").read_text())
    assert report["meta"]["requests"] <= 2 * len(TASKS)
