"""Scoring speed of the three execution modes over a (history length x candidates) grid.

``bound_tokens`` is the prefix plus every candidate segment once (the tokens any mode must run);
``bound_fraction`` is how close a mode comes to running them at naive's per-token speed.
"""

from __future__ import annotations

import time

import numpy as np


def _requests(tokenizer, examples: str | None, prefix_tokens: int, k: int):
    """One request of about ``prefix_tokens`` of member prefix and ``k`` real candidate segments."""
    from recbrew.scoring import load_requests
    from recbrew.scoring.hf import Encoded

    rows = load_requests(examples, "test", ["feed_like"])
    rows.sort(key=lambda r: -len(r["prefix"]))
    prefix = tokenizer(rows[0]["prefix"], add_special_tokens=False)["input_ids"]
    while len(prefix) < prefix_tokens:  # a longer history: repeat the history part of the prefix
        prefix = prefix + prefix[len(prefix) // 3:]
    prefix = prefix[:prefix_tokens]
    segments = [s for r in rows for s in r["segments"]]
    seg_ids = tokenizer(segments[:k] if len(segments) >= k else (segments * k)[:k], add_special_tokens=False)["input_ids"]
    return Encoded(prefix, seg_ids, [9805, 787], False)


def bench_score(model_name: str = "smollm2", examples: str = "runs/quickstart/examples",
                grid: tuple[tuple[int, int], ...] = ((250, 10), (250, 50), (1000, 10), (1000, 50)),
                modes: tuple[str, ...] = ("naive", "prefix", "multi"), threads: int | None = None) -> dict:
    import torch

    from recbrew.models.loading import load_model
    from recbrew.scoring.hf import HFScorer

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_model(model_name)
    cells = []
    for prefix_tokens, k in grid:
        enc = _requests(tokenizer, examples, prefix_tokens, k)
        enc.label_ids = tokenizer([" yes", " no"], add_special_tokens=False)["input_ids"]
        enc.label_ids = [ids[0] for ids in enc.label_ids]
        bound = len(enc.prefix) + sum(len(s) for s in enc.segments)
        cell = {"prefix_tokens": len(enc.prefix), "candidates": k,
                "mean_segment_tokens": round(float(np.mean([len(s) for s in enc.segments])), 1),
                "bound_tokens": bound, "modes": {}}
        reference = None
        for mode in modes:
            scorer = HFScorer(model, tokenizer, mode=mode, batch_size=16)
            scorer.score_encoded([_small(enc)])  # warm-up on a small request
            start = time.perf_counter()
            probs = scorer.score_encoded([enc])[0]
            seconds = time.perf_counter() - start
            reference = probs if reference is None else reference
            cell["modes"][mode] = {
                "seconds": round(seconds, 3), "candidates_per_s": float(f"{k / seconds:.3g}"),
                "tokens_processed": scorer.tokens_processed,
                "tokens_per_s": round(scorer.tokens_processed / seconds, 1),
                "max_abs_diff_vs_first_mode": float(np.abs(probs - reference).max()),
            }
        naive = cell["modes"].get("naive")
        if naive:
            # The speed-up a mode reaches if it runs the bound tokens at naive's per-token speed.
            cell["bound_speedup"] = round(naive["tokens_processed"] / bound, 2)
            for row in cell["modes"].values():
                # From the times, not the rounded rates (a slow cell has rates like 0.04 candidates/s).
                row["speedup_vs_naive"] = round(naive["seconds"] / row["seconds"], 2)
                # Time the model would take for just the necessary tokens at naive's per-token speed.
                row["bound_fraction"] = round(bound / naive["tokens_per_s"] / row["seconds"], 3)
        cells.append(cell)
    return {"benchmark": "score", "model": model_name, "threads": torch.get_num_threads(), "grid": cells}


def _small(enc):
    from recbrew.scoring.hf import Encoded

    return Encoded(enc.prefix[:32], [s[:8] for s in enc.segments[:2]], enc.label_ids, enc.listwise)
