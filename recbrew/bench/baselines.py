"""Speed of the classic rankers on CPU: training examples/s and scoring candidates/s.

Each neural ranker trains one epoch on the latest T1 training requests (a training example is
one candidate with its label) and then scores the test split; popularity is fitted and scored
the same way. Ratios are against DCNv2 measured in the same run.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from recbrew import config
from recbrew.baselines.config import run_config
from recbrew.baselines.features import load_rows
from recbrew.baselines.popularity import Popularity
from recbrew.baselines.scorer import ModelScorer
from recbrew.baselines.train import train_model

MODELS = ("dcnv2", "lirank", "ligr")


def _score_speed(scorer, rows: list[dict]) -> dict:
    scorer.score(rows[:16])  # warm-up
    start = time.perf_counter()
    scorer.score(rows)
    seconds = time.perf_counter() - start
    candidates = sum(len(r["candidate_ids"]) for r in rows)
    return {"score_seconds": round(seconds, 3), "score_candidates_per_s": round(candidates / seconds, 1),
            "score_requests_per_s": round(len(rows) / seconds, 1)}


def bench_baselines(examples_dir: str | Path, max_train: int = 2000, max_test: int = 2000, threads: int = 1) -> dict:
    """Training examples/s and scoring candidates/s of every classic ranker (JSON-serializable)."""
    torch.set_num_threads(threads)
    train_rows = sorted(load_rows(examples_dir, "train", split_tag="T1"), key=lambda r: r["timestamp"])[-max_train:]
    test_rows = load_rows(examples_dir, "test")[:max_test]
    result = {"examples": str(examples_dir), "device": "cpu", "threads": threads, "cpu": platform.processor() or
              platform.machine(), "torch": torch.__version__, "train_requests": len(train_rows),
              "train_examples": sum(len(r["candidate_ids"]) for r in train_rows), "test_requests": len(test_rows),
              "test_candidates": sum(len(r["candidate_ids"]) for r in test_rows), "models": {}}
    start = time.perf_counter()
    pop = Popularity.fit(train_rows)
    fit_seconds = time.perf_counter() - start
    result["models"]["popularity"] = {"train_seconds": round(fit_seconds, 3),
                                      "train_examples_per_s": round(result["train_examples"] / fit_seconds, 1),
                                      **_score_speed(pop, test_rows)}
    for name in MODELS:
        cfg = run_config(name, config.shipped_or_none("baselines", name), ["train.epochs=1", "train.val_fraction=0", f"train.threads={threads}"])
        model, space, log = train_model(cfg, examples_dir, None, rows=train_rows, progress=False)
        epoch = log["epochs"][0]
        result["models"][name] = {"parameters": log["parameters"], "train_seconds": epoch["seconds"],
                                  "train_examples_per_s": epoch["candidates_per_s"],
                                  "train_requests_per_s": round(log["train_requests"] / epoch["seconds"], 1),
                                  **_score_speed(ModelScorer(name, model, space), test_rows)}
    base = result["models"]["dcnv2"]
    result["ratios_vs_dcnv2"] = {
        name: {"train_examples_per_s": round(m["train_examples_per_s"] / base["train_examples_per_s"], 3),
               "score_candidates_per_s": round(m["score_candidates_per_s"] / base["score_candidates_per_s"], 3)}
        for name, m in result["models"].items()}
    return result
