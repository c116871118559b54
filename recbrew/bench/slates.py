"""`recbrew bench score --slates N`: the scoring modes on real requests (whole slates) of an examples folder.

Where the grid benchmark builds one synthetic request per cell, this one times the test requests
as they are: their prefixes, slates of 3-20 candidates and listwise questions, in the precision and
depth the eval scores them with (``dtype="auto"``: bf16 where the hardware has it; ``layers``).
Steady state: every mode is warmed up on the same requests, then timed ``rounds`` times (median).

Mode ``vllm`` times the same requests through vLLM's offline engine (`recbrew eval --llm-engine vllm`): one
prompt per candidate, the prefix computed once per request by prefix caching. Its cache is emptied before
every timed round, so a round pays for the prefixes as eval does; the engine's start is reported apart.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from recbrew.bench.score import timed
from recbrew.examples.folder import Examples
from recbrew.models.loading import load_model
from recbrew.models.precision import describe
from recbrew.scoring import load_requests


def bench_slates(model_name: str, examples: str, requests: int = 40, modes: tuple[str, ...] = ("naive", "multi"),
                 layers: int | None = None, rounds: int = 3, seed: int = 0) -> dict:
    import torch

    from recbrew.scoring.hf import HFScorer  # lazy: loads torch

    rows = [r for r in load_requests(examples, "test") if r["kind"] != "generative" and r["segments"]]
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in sorted(rng.choice(len(rows), size=min(requests, len(rows)), replace=False))]
    model, tokenizer = load_model(model_name, dtype="auto", layers=layers, device="cpu"
                                  if not torch.cuda.is_available() else None)
    candidates = sum(len(r["labels"]) for r in rows)
    out = {"benchmark": "score_slates", "model": model_name, "examples": str(examples), "requests": len(rows),
           "candidates": candidates, "dtype": describe(model.dtype), "layers": model.config.num_hidden_layers,
           "threads": torch.get_num_threads(), "rounds": rounds, "modes": {}}
    reference = None
    for mode in modes:
        if mode == "vllm":
            probs, row = _vllm(model_name, examples, rows, rounds, layers)
            flat = np.concatenate([np.atleast_1d(p) for p in probs])
            reference = flat if reference is None else reference
            out["modes"][mode] = {**row, "candidates_per_s": round(candidates / row["seconds"], 1),
                                  "max_abs_diff_vs_first_mode": float(np.abs(flat - reference).max())}
            continue
        scorer = HFScorer(model, tokenizer, mode=mode, batch_size=16)
        encoded = [scorer.encode(r) for r in rows]
        sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        first, seconds, probs = timed(partial(scorer.score_encoded, encoded), rounds, sync)  # same-shape warm-up, then the median
        flat = np.concatenate([np.atleast_1d(p) for p in probs])
        reference = flat if reference is None else reference
        out["modes"][mode] = {"seconds": round(seconds, 3), "first_call_seconds": round(first, 3),
                              "candidates_per_s": round(candidates / seconds, 1),
                              "tokens_processed": scorer.tokens_processed,
                              "max_abs_diff_vs_first_mode": float(np.abs(flat - reference).max())}
    first = out["modes"][modes[0]]
    for row in out["modes"].values():
        row["speedup_vs_" + modes[0]] = round(first["seconds"] / row["seconds"], 2)
        if "tokens_processed" in row and "tokens_processed" in first:
            row["token_ratio_vs_" + modes[0]] = round(first["tokens_processed"] / row["tokens_processed"], 2)
    return out


def _vllm(model_name: str, examples: str, rows: list[dict], rounds: int, layers: int | None) -> tuple[list, dict]:
    """(probabilities, timing row) of the ``vllm`` mode, in eval's precision (``auto``)."""
    from recbrew.serve.vllm_scorer import load_vllm_scorer  # lazy: loads vllm

    start = time.perf_counter()
    scorer = load_vllm_scorer(model_name, catalog=Examples.open(examples).catalog(), layers=layers)
    started = time.perf_counter() - start
    # The prefix cache is emptied before every timed round: each round computes what eval would.
    first, seconds, probs = timed(lambda: scorer.score(rows), rounds, before=scorer.reset_cache)
    return probs, {"seconds": round(seconds, 3), "first_call_seconds": round(first, 3),
                   "engine_start_seconds": round(started, 3)}
