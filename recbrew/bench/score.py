"""Scoring speed of the three execution modes over a (history length x candidates) grid.

Each cell scores ``requests`` requests of about ``prefix_tokens`` of member prefix and ``k`` candidate
segments, all at once (multi mode packs several into one pass). Steady state: every mode is warmed up on
the very requests it is timed on, then timed ``rounds`` (>= 3) times; the median is reported, and the
first call (which includes compilation of kernels for new shapes) apart as ``first_call_seconds``.

``bound_tokens`` is the prefixes plus every candidate segment once (the tokens any mode must run);
``token_bound_speedup`` the speed-up over naive a mode reaches if it runs just those at naive's per-token
speed; ``bound_fraction`` how close a mode comes to that.

The model is loaded in its device's default precision (bf16 on CUDA, fp32 on CPU). Without an examples
folder (or with `random-smollm2`, which has no tokenizer) prefixes and segments are random token ids, with
segments of ``segment_tokens``.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np

from recbrew.models.loading import load_model
from recbrew.models.precision import describe
from recbrew.scoring import load_requests

#: Answer-word ids used for random requests (SmolLM2's " yes" / " no").
RANDOM_LABELS = [9805, 787]


def _requests(tokenizer, examples: str | None, prefix_tokens: int, k: int, count: int, segment_tokens: int,
              vocab: int, seed: int = 0):
    """``count`` requests of about ``prefix_tokens`` of member prefix and ``k`` candidate segments each."""
    from recbrew.scoring.hf import Encoded  # lazy: loads torch

    if tokenizer is None or not examples or not Path(examples).is_dir():
        rng = np.random.default_rng(seed)
        labels = [t % vocab for t in RANDOM_LABELS]
        return [Encoded(rng.integers(100, vocab, prefix_tokens).tolist(),
                        [rng.integers(100, vocab, segment_tokens).tolist() for _ in range(k)], labels, False)
                for _ in range(count)]

    rows = load_requests(examples, "test", ["feed_like"])
    rows.sort(key=lambda r: -len(r["prefix"]))
    labels = [ids[0] for ids in tokenizer([" yes", " no"], add_special_tokens=False)["input_ids"]]
    segments = [s for r in rows for s in r["segments"]]
    seg_ids = tokenizer(segments, add_special_tokens=False)["input_ids"]
    out = []
    for i in range(count):
        prefix = tokenizer(rows[i % len(rows)]["prefix"], add_special_tokens=False)["input_ids"]
        while len(prefix) < prefix_tokens:  # a longer history: repeat the history part of the prefix
            prefix = prefix + prefix[len(prefix) // 3:]
        picked = [seg_ids[(i * k + j) % len(seg_ids)] for j in range(k)]
        out.append(Encoded(prefix[:prefix_tokens], picked, labels, False))
    return out


def timed(run, rounds: int, sync=lambda: None, before=lambda: None) -> tuple[float, float, object]:
    """(first call seconds, median seconds of ``rounds`` (at least 3) calls after it, the last result) of ``run()``.

    The first call is the warm-up at the same shapes (it compiles what needs compiling) and is timed apart;
    ``sync`` runs inside each timing (a device's queue drained), ``before`` outside it (e.g. a cache emptied).
    """
    start = time.perf_counter()
    run()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(max(3, rounds)):
        before()
        start = time.perf_counter()
        result = run()
        sync()
        times.append(time.perf_counter() - start)
    return first, float(np.median(times)), result


def bench_score(model_name: str = "smollm2", examples: str | None = "runs/quickstart/examples",
                grid: tuple[tuple[int, int], ...] = ((250, 10), (250, 50), (1000, 10), (1000, 50)),
                modes: tuple[str, ...] = ("naive", "prefix", "multi"), threads: int | None = None,
                requests: int = 4, rounds: int = 3, segment_tokens: int = 30, dtype=None, batch_size: int = 16,
                layers: int | None = None) -> dict:
    """Candidates/s per mode and cell, with speed-ups against the first mode measured in the same run."""
    import torch

    from recbrew.kernels.dispatch import choose_attention  # lazy: loads triton
    from recbrew.kernels.multi_item_attention import flex_available  # lazy: loads triton
    from recbrew.scoring.hf import HFScorer  # lazy: loads torch

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_model(model_name, dtype=dtype, layers=layers)
    device = model.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cells = []
    for prefix_tokens, k in grid:
        encoded = _requests(tokenizer, examples, prefix_tokens, k, requests, segment_tokens, model.config.vocab_size)
        bound = sum(len(e.prefix) + sum(len(s) for s in e.segments) for e in encoded)
        cell = {"prefix_tokens": len(encoded[0].prefix), "candidates": k, "requests": len(encoded),
                "mean_segment_tokens": round(float(np.mean([len(s) for e in encoded for s in e.segments])), 1),
                "bound_tokens": bound, "modes": {}}
        reference = None
        for mode in modes:
            scorer = HFScorer(model, tokenizer, mode=mode, batch_size=batch_size)
            first, seconds, probs = timed(partial(scorer.score_encoded, encoded), rounds, sync)
            flat = np.concatenate(probs)
            reference = flat if reference is None else reference
            row = {"seconds": round(seconds, 4), "first_call_seconds": round(first, 3),
                   "candidates_per_s": float(f"{k * len(encoded) / seconds:.4g}"),
                   "tokens_processed": scorer.tokens_processed,
                   "tokens_per_s": round(scorer.tokens_processed / seconds, 1),
                   "max_abs_diff_vs_first_mode": float(np.abs(flat - reference).max())}
            if mode == "multi":
                packs = scorer._packs(encoded)
                row["passes"] = len(packs)
                row["attention"] = sorted({_attention_for(choose_attention, flex_available, model, encoded, p)
                                           for p in packs})
            cell["modes"][mode] = row
        _ratios(cell, modes[0])
        cells.append(cell)
    return {"benchmark": "score", "model": model_name, "device": str(device),
            "card": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "dtype": describe(model.dtype), "threads": torch.get_num_threads(), "rounds": max(3, rounds),
            "timing": "median of the timed rounds after a warm-up on the same requests; first_call_seconds apart",
            "grid": cells}


def _attention_for(choose, flex_available, model, encoded, pack) -> str:
    """The multi-item attention implementation a pass of this pack runs on."""
    import torch

    tokens = sum(len(encoded[i].prefix) + sum(len(encoded[i].segments[j]) for j in g) for i, g in pack)
    probe = torch.empty(0, device=model.device)
    return choose(probe, tokens=tokens, flex_ok=flex_available(model.device))


def _ratios(cell: dict, first: str) -> None:
    """Speed-ups against the first mode (naive), and the token bound."""
    base = cell["modes"].get(first)
    if not base:
        return
    # The speed-up a mode reaches if it runs the bound tokens at the first mode's per-token speed.
    cell["token_bound_speedup"] = round(base["tokens_processed"] / cell["bound_tokens"], 2)
    cell["bound_speedup"] = cell["token_bound_speedup"]  # the name older reports used
    for row in cell["modes"].values():
        # From the times, not the rounded rates (a slow cell has rates like 0.04 candidates/s).
        row[f"speedup_vs_{first}"] = round(base["seconds"] / row["seconds"], 2)
        # Time the model would take for just the necessary tokens at the first mode's per-token speed.
        row["bound_fraction"] = round(cell["bound_tokens"] / base["tokens_per_s"] / row["seconds"], 3)
