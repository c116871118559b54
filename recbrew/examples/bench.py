"""Speed of prompt rendering + tokenization and of example building, on one core."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_render(members: int = 1000, days: int = 14, requests: int = 200, max_tokens: int = 512,
                 task_name: str = "feed_like", seed: int = 0) -> dict:
    """Candidate prompts/s with a shared prefix vs. one full prompt per candidate, and build rows/s."""
    # One core: the tokenizer's batch encoder would otherwise use every core.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from recbrew.data.corpus import Corpus
    from recbrew.examples.build import BuildConfig, build_examples
    from recbrew.examples.requests import SplitPlan, build_requests, time_range
    from recbrew.models.tokenizers import load_tokenizer
    from recbrew.tasks import load_catalog
    from recbrew.verbalize.context import CorpusView
    from recbrew.verbalize.render import Renderer
    from recbrew.world import WorldConfig, generate_world

    tokenizer = load_tokenizer()
    catalog = load_catalog()
    task = catalog[task_name]
    task = task.model_copy(update={"history": task.history.model_copy(update={"max_tokens": max_tokens})})
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        generate_world(WorldConfig(members=members, days=days, seed=seed), world, progress=False)
        corpus = Corpus.load(world)
        view = CorpusView(corpus)
        _, end = time_range(corpus)
        req = build_requests(corpus, task, SplitPlan(end + 1, 0, end), seed)
        # The richest histories: late requests of active members give prompts near the budget.
        order = np.argsort(-req.timestamp, kind="stable")[:requests]
        start = time.perf_counter()
        contexts = []
        for i in order:
            m, t = int(req.member_id[i]), int(req.timestamp[i])
            friends = view.connections(m, t)
            cands = [view.candidate(m, int(c), t, task, friends) for c in req.candidates[req.offsets[i]:req.offsets[i + 1]]]
            contexts.append((view.member(m), cands, view.history(m, t, task), view.network(m, t)))
        context_s = time.perf_counter() - start
        renderer = Renderer(task, tokenizer=tokenizer)
        n_prompts = sum(len(c[1]) for c in contexts)

        start = time.perf_counter()
        tokens = []
        for member, cands, history, network in contexts:
            for cand in cands:
                tokens.append(renderer.render(member, [cand], history, network=network).max_tokens)
        naive_s = time.perf_counter() - start

        start = time.perf_counter()
        for member, cands, history, network in contexts:
            renderer.render(member, cands, history, network=network)
        shared_s = time.perf_counter() - start

        build_tasks = ["feed_like", "jobs_apply", "pymk_connect", "jobs_apply_listwise"]
        start = time.perf_counter()
        manifest = build_examples(world, Path(tmp) / "examples",
                                  BuildConfig(tasks=[t for t in build_tasks if t in catalog], max_train=150,
                                              max_test=50, seed=seed), progress=False)
        build_s = time.perf_counter() - start
    rows = sum(v["train"] + v["test"] for v in manifest["tasks"].values())
    candidates = sum(v["candidates"] for v in manifest["tasks"].values())
    naive_rate, shared_rate = n_prompts / naive_s, n_prompts / shared_s
    return {
        "benchmark": "render",
        "task": task_name,
        "requests": len(contexts),
        "candidate_prompts": n_prompts,
        "mean_prompt_tokens": round(float(np.mean(tokens)), 1),
        "max_prompt_tokens": int(max(tokens)),
        "budget_tokens": max_tokens,
        "naive_prompts_per_s": round(naive_rate, 1),
        "shared_prefix_prompts_per_s": round(shared_rate, 1),
        "context_lookups_per_s": round(len(contexts) / context_s, 1),
        "build_requests_per_s": round(rows / build_s, 1),
        "build_candidates_per_s": round(candidates / build_s, 1),
        "ratios": {"shared_prefix_vs_naive": round(shared_rate / naive_rate, 2),
                   "shared_prefix_vs_goal_1000": round(shared_rate / 1000, 2)},
    }
