"""`recbrew bench ray`: `models score --engine ray` against scoring in this one process, in the same run.

The same real test requests (whole slates) are scored three ways, each warmed up on those requests and then timed
``rounds`` times (median):

- ``single_process``: as `recbrew models score` runs without Ray, one request per call, with every core's
  threads;
- ``single_process_batched``: the same process, in the batches the actors get (what batching alone gives);
- ``ray``: ``workers`` Ray actors of ``worker_cpus`` CPUs each, which get ``batch_size`` requests at a time and
  score them one per call as `models score` does (the actors' start and model load apart, as
  ``startup_seconds``).

Ratios are requests/s against the first two, and ``max_abs_diff`` is the largest score difference from the
single process (in ``dtype``: fp32 for the equality check, ``auto`` for speed).
"""

from __future__ import annotations

import platform
import time

import numpy as np

from recbrew.cluster import ActorScorers, session
from recbrew.examples.folder import Examples
from recbrew.models.precision import cpu_has_bf16
from recbrew.scoring.registry import ScorerOptions, load_scorer


def _median_seconds(fn, rounds: int) -> tuple[float, object]:
    fn()  # warm-up at the same shapes
    times, out = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def _cpu() -> dict:
    name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", errors="replace")
                 if line.startswith("model name")), platform.processor()) if platform.system() == "Linux" else \
        platform.processor()
    return {"cpu": name, "bf16": cpu_has_bf16()}


def bench_ray(model: str, examples: str, requests: int = 64, workers: int = 2, worker_cpus: int | None = None,
              batch_size: int = 16, rounds: int = 3, dtype: str = "auto", address: str | None = None,
              seed: int = 0) -> dict:
    import os

    import torch

    folder = Examples.open(examples)
    catalog = folder.catalog()
    rows = [r for r in folder.requests("test") if r["kind"] != "generative" and r["segments"]]
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in sorted(rng.choice(len(rows), size=min(requests, len(rows)), replace=False))]
    load = ScorerOptions(catalog=catalog, dtype=dtype)
    scorer = load_scorer(model, load)
    n = len(rows)

    def one_by_one():
        return [scorer.score([r])[0] for r in rows]

    def batched():
        return [p for s in range(0, n, batch_size) for p in scorer.score(rows[s:s + batch_size])]

    single_s, single = _median_seconds(one_by_one, rounds)
    batched_s, _ = _median_seconds(batched, rounds)
    threads = torch.get_num_threads()
    with session(address) as ray:
        start = time.perf_counter()
        with ActorScorers(ray, load_scorer, (model, load), workers=workers, worker_cpus=worker_cpus) as pool:
            startup = time.perf_counter() - start
            ray_s, (got, _) = _median_seconds(lambda: pool.answer(rows, range(n), batch_size=batch_size, per_call=1),
                                              rounds)
            actors, cpus = len(pool.actors), pool.actor_cpus
    diff = max(float(np.abs(np.asarray(got[i]) - np.asarray(single[i])).max()) for i in range(n))

    def row(seconds: float, **extra) -> dict:
        return {"seconds": round(seconds, 3), "requests_per_s": round(n / seconds, 2), **extra}

    return {
        "benchmark": "ray_score", "model": model, "examples": str(examples), "requests": n,
        "candidates": sum(len(r["labels"]) for r in rows), "dtype": dtype, "rounds": rounds,
        "batch_size": batch_size, "machine": {**_cpu(), "cores": os.cpu_count()},
        "single_process": row(single_s, threads=threads),
        "single_process_batched": row(batched_s, threads=threads),
        "ray": row(ray_s, workers=actors, worker_cpus=cpus, startup_seconds=round(startup, 2)),
        "speedup_vs_single_process": round(single_s / ray_s, 2),
        "speedup_vs_single_process_batched": round(batched_s / ray_s, 2),
        "max_abs_diff": diff,
    }
