"""Ranked candidates/s through the served stack (prefix caching on vs off) vs the HF multi-item scorer."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np

from recbrew.data.corpus import Corpus
from recbrew.data.ids import ITEM, MEMBER
from recbrew.examples.folder import Examples
from recbrew.models.loading import load_model, resolve
from recbrew.models.precision import describe
from recbrew.serve.launch import start_serve, stop_serve
from recbrew.serve.protocol import RankRequest

KEY = "bench"


def _requests(world: Path, k: int, members: int) -> list[dict]:
    """feed_like requests for the members with the longest like histories, each over the same k recent posts."""
    import pyarrow.compute as pc

    corpus = Corpus.load(world)
    inter = corpus.interactions
    likes = inter.filter(pc.equal(inter["action"], "like"))
    counts = likes.group_by("member_id").aggregate([("item_id", "count")]).sort_by([("item_id_count", "descending")])
    who = counts["member_id"].to_pylist()[:members]
    items = corpus.items.filter(pc.equal(corpus.items["item_type"], "post")).sort_by([("created_at", "descending")])
    posts = items["item_id"].to_pylist()[:k]
    at = int(pc.max(inter["timestamp"]).as_py()) + 1
    return [{"task": "feed_like", "member": int(m), "candidates": posts, "at": at, "max_tokens": 1400} for m in who]


def _example_requests(examples: Path, members: int) -> list[dict]:
    """The first ``members`` binary test requests of an examples folder (those with several candidates first), as
    `/v1/rank` bodies in the ids of the imported logs."""
    folder = Examples.open(examples)
    ids = folder.ids
    rows = [r for r in folder.requests("test") if r["kind"] == "binary" and r["candidate_ids"]]
    rows.sort(key=lambda r: len(r["candidate_ids"]) < 2)  # requests that rank several candidates first
    return [{"task": r["task"], "member": ids.user(MEMBER, r["member_id"]),
             "candidates": ids.users(ITEM, r["candidate_ids"]), "at": int(r["timestamp"])} for r in rows[:members]]


def _candidates(bodies: list[dict]) -> int:
    return sum(len(b["candidates"]) for b in bodies)


def _rank_all(url: str, bodies: list[dict], headers: dict) -> tuple[list[dict], float]:
    start = time.perf_counter()
    answers = []
    for body in bodies:
        resp = httpx.post(f"{url}/v1/rank", json=body, headers=headers, timeout=1800)
        resp.raise_for_status()
        answers.append(resp.json())
    return answers, time.perf_counter() - start


def _same_rankings(before: list[dict], after: list[dict]) -> dict:
    """Whether every request ranks its candidates in the same order, and the largest score change."""
    order = [[r["candidate"] for r in a["results"]] for a in before] == \
        [[r["candidate"] for r in a["results"]] for a in after]
    change = max((abs(x["score"] - y["score"]) for a, b in zip(before, after, strict=True)
                  for x, y in zip(sorted(a["results"], key=lambda r: r["index"]),
                                  sorted(b["results"], key=lambda r: r["index"]), strict=True)), default=0.0)
    return {"rankings_identical": order, "max_score_change": float(f"{change:.3g}")}


def bench_serve(model: str = "smollm2", world: str = "runs/quickstart/world", k: int = 50, members: int = 3,
                load_clients: int = 32, load_seconds: float = 30.0, examples: str | None = None) -> dict:
    """Cache on vs off vs HF multi-item; with ``load_seconds`` > 0, also a load test on the cache-on server that
    checks every ranking is the same before and after it.

    Requests are feed_like over ``k`` recent posts of ``world`` for the ``members`` with the longest histories, or,
    with ``examples``, the first ``members`` binary test requests of that folder (served with its task specs)."""
    if examples is not None:
        bodies = _example_requests(Path(examples), members)
        source = ["--examples", str(examples)]
        k = round(float(np.mean([len(b["candidates"]) for b in bodies])), 1) if bodies else 0
    else:
        world_dir = Path(world)
        bodies = _requests(world_dir, k, members)
        source = ["--corpus", str(world_dir)]
    result: dict = {"benchmark": "serve", "model": model, "candidates_per_request": k, "requests": len(bodies),
                    "source": examples or world, "runs": {}}
    prompt_tokens = []
    for caching in (True, False):
        proc, url = start_serve(model, *source, "--api-key", KEY, "--max-model-len", "2048",
                                "--prefix-caching" if caching else "--no-prefix-caching")
        try:
            headers = {"Authorization": f"Bearer {KEY}"}
            answers, seconds = _rank_all(url, bodies, headers)
            prompt_tokens += [a["prompt_tokens"] for a in answers]
            if caching and load_seconds > 0:
                from recbrew.serve.load import run_load  # lazy: loads httpx

                result["load"] = run_load(f"{url}/v1/rank", lambda i: bodies[i % len(bodies)], load_clients,
                                          load_seconds, headers)
                result["load"].update(_same_rankings(answers, _rank_all(url, bodies, headers)[0]))
        finally:
            stop_serve(proc)
        result["runs"]["vllm_prefix_cache_on" if caching else "vllm_prefix_cache_off"] = {
            "seconds": round(seconds, 2), "candidates_per_s": round(_candidates(bodies) / seconds, 2)}
    result["mean_prompt_tokens"] = round(float(np.mean(prompt_tokens)), 1)
    result["runs"]["hf_multi_item"] = _hf(model, bodies, examples, None if examples else Path(world))
    on, off = result["runs"]["vllm_prefix_cache_on"], result["runs"]["vllm_prefix_cache_off"]
    hf = result["runs"]["hf_multi_item"]
    result["ratios"] = {"cache_on_vs_off": round(on["candidates_per_s"] / off["candidates_per_s"], 2),
                        "vllm_cache_on_vs_hf_multi": round(on["candidates_per_s"] / hf["candidates_per_s"], 2)}
    return result


def _hf(model: str, bodies: list[dict], examples: str | None, world: Path | None) -> dict:
    from recbrew.scoring.hf import HFScorer  # lazy: loads torch
    from recbrew.serve.ranker import RankService  # lazy: loads httpx

    catalog, style = None, None
    if examples is not None:
        folder = Examples.open(examples)
        catalog, style, world = folder.catalog(), folder.config.get("style"), folder.corpus_dir("the bench reads it")
    svc = RankService(engine_url="", engine_key="", served_model="", tokenizer=resolve(model), corpus_dir=world,
                      catalog=catalog, default_style=style)
    lm, tok = load_model(model, device="cpu", dtype="auto")  # eval's precision (bf16 where the CPU has it)
    scorer = HFScorer(lm, tok, mode="multi", catalog=svc.catalog)
    rows = []
    for body in bodies:
        task, p = svc.prompt(RankRequest(**body))
        rows.append({"prefix": p.prefix, "segments": p.segments, "task": task.name, "kind": task.kind.value})
    scorer.score(rows)  # warm-up at the same shapes
    times = []
    for _ in range(3):
        start = time.perf_counter()
        scorer.score(rows)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {"seconds": round(seconds, 2), "candidates_per_s": round(_candidates(bodies) / seconds, 2),
            "dtype": describe(lm.dtype), "timing": "median of 3 after a warm-up"}
