"""Speed of prompt rendering + tokenization and of example building, on one core."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from recbrew.data.corpus import Corpus
from recbrew.examples.build import BuildConfig, build_examples
from recbrew.examples.requests import SplitPlan, build_requests, time_range
from recbrew.models.tokenizers import load_tokenizer
from recbrew.tasks import load_catalog
from recbrew.verbalize.context import CorpusView
from recbrew.verbalize.environment import make_environment
from recbrew.verbalize.render import Renderer


class _Clock:
    """Wall and process CPU seconds of a block; CPU/wall above 1 would mean more than one core worked."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.cores = self.cpu / self.wall


def _with_budget(task, max_tokens: int):
    """The task with its history budget set to ``max_tokens`` prompt tokens."""
    return task.model_copy(update={"history": task.history.model_copy(update={"max_tokens": max_tokens})})


def _richest_contexts(world: Path, task, requests: int, seed: int) -> tuple[list, float]:
    """The Corpus lookups (member, candidates, history, network) of the ``requests`` requests with the richest
    histories, and the seconds those lookups took."""
    corpus = Corpus.load(world)
    view = CorpusView(corpus)
    _, end = time_range(corpus)
    req = build_requests(corpus, task, SplitPlan(end + 1, 0, end), seed)
    # The richest histories (most actions before the moment, then the latest) give prompts near
    # the budget, so the history is rendered, counted and often cut as in a real build.
    actions = np.array([view.actions_before(int(m), int(t)) for m, t in zip(req.member_id, req.timestamp,
                                                                               strict=True)])
    order = np.lexsort((-req.timestamp, -actions))[:requests]
    start = time.perf_counter()
    contexts = []
    for i in order:
        m, t = int(req.member_id[i]), int(req.timestamp[i])
        friends = view.connections(m, t)
        cands = [view.candidate(m, int(c), t, task, friends) for c in req.candidates[req.offsets[i]:req.offsets[i + 1]]]
        contexts.append((view.member(m), cands, view.history(m, t, task), view.network(m, t)))
    return contexts, time.perf_counter() - start


def _time_renderers(task, tokenizer, contexts: list) -> tuple[list[int], int, _Clock, _Clock]:
    """Render every candidate alone (naive) and every request's slate with one shared prefix: the naive
    prompts' token counts, the requests whose history was cut, and the two clocks."""
    env = make_environment()
    # Compile every template once (a per-process cost, not a per-prompt one).
    member, cands, history, network = contexts[0]
    Renderer(task, env=env, tokenizer=tokenizer).render(member, cands[:1], history, network=network)

    # Each mode gets a fresh renderer, so neither reuses what the other rendered or counted.
    naive = Renderer(task, env=env, tokenizer=tokenizer)
    tokens = []
    with _Clock() as naive_t:
        for member, cands, history, network in contexts:
            for cand in cands:
                tokens.append(naive.render(member, [cand], history, network=network).max_tokens)

    shared = Renderer(task, env=env, tokenizer=tokenizer)
    cut = 0
    with _Clock() as shared_t:
        for member, cands, history, network in contexts:
            cut += shared.render(member, cands, history, network=network).history_cut > 0
    return tokens, cut, naive_t, shared_t


def _time_build(world: Path, out: Path, catalog, seed: int) -> tuple[dict, _Clock]:
    """Build a small examples folder of four tasks from ``world``: its manifest and the clock."""
    build_tasks = ["feed_like", "jobs_apply", "pymk_connect", "jobs_apply_listwise"]
    with _Clock() as build_t:
        manifest = build_examples(world, out,
                                  BuildConfig(tasks=[t for t in build_tasks if t in catalog], max_train=150,
                                              max_test=50, seed=seed), progress=False)
    return manifest, build_t


def bench_render(members: int = 1000, days: int = 14, requests: int = 200, max_tokens: int = 512,
                 task_name: str = "feed_like", seed: int = 0) -> dict:
    """Candidate prompts/s with a shared prefix vs. one full prompt per candidate, and build rows/s."""
    # One core: the tokenizer's batch encoder would otherwise use every core.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from recbrew.world import WorldConfig, generate_world  # lazy: loads scipy

    tokenizer = load_tokenizer()
    catalog = load_catalog()
    task = _with_budget(catalog[task_name], max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        generate_world(WorldConfig(members=members, days=days, seed=seed), world, progress=False)
        contexts, context_s = _richest_contexts(world, task, requests, seed)
        n_prompts = sum(len(c[1]) for c in contexts)
        tokens, cut, naive_t, shared_t = _time_renderers(task, tokenizer, contexts)
        manifest, build_t = _time_build(world, Path(tmp) / "examples", catalog, seed)
    rows = sum(v["train"] + v["test"] for v in manifest["tasks"].values())
    candidates = sum(v["candidates"] for v in manifest["tasks"].values())
    naive_rate, shared_rate = n_prompts / naive_t.wall, n_prompts / shared_t.wall
    return {
        "benchmark": "render",
        "task": task_name,
        "requests": len(contexts),
        "candidate_prompts": n_prompts,
        "mean_prompt_tokens": round(float(np.mean(tokens)), 1),
        "median_prompt_tokens": float(np.median(tokens)),
        "max_prompt_tokens": int(max(tokens)),
        "budget_tokens": max_tokens,
        "requests_with_history_cut": cut,
        "naive_prompts_per_s": round(naive_rate, 1),
        "shared_prefix_prompts_per_s": round(shared_rate, 1),
        # Per second of this process's CPU time: what one core does when the machine is shared.
        "naive_prompts_per_cpu_s": round(n_prompts / naive_t.cpu, 1),
        "shared_prefix_prompts_per_cpu_s": round(n_prompts / shared_t.cpu, 1),
        "cores_used": round(max(naive_t.cores, shared_t.cores), 2),
        "context_lookups_per_s": round(len(contexts) / context_s, 1),
        "build_requests_per_s": round(rows / build_t.wall, 1),
        "build_candidates_per_s": round(candidates / build_t.wall, 1),
        "ratios": {"shared_prefix_vs_naive": round(shared_rate / naive_rate, 2),
                   "shared_prefix_vs_goal_1000": round(shared_rate / 1000, 2),
                   "shared_prefix_cpu_vs_goal_1000": round(n_prompts / shared_t.cpu / 1000, 2)},
    }
