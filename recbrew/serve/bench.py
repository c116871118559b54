"""Ranked candidates/s through the served stack (prefix caching on vs off) vs the HF multi-item scorer."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np

from recbrew.serve.launch import start_serve, stop_serve

KEY = "bench"


def _requests(world: Path, k: int, members: int) -> list[dict]:
    """feed_like requests for the members with the longest like histories, each over the same k recent posts."""
    import pyarrow.compute as pc

    from recbrew.data.corpus import Corpus

    corpus = Corpus.load(world)
    inter = corpus.interactions
    likes = inter.filter(pc.equal(inter["action"], "like"))
    counts = likes.group_by("member_id").aggregate([("item_id", "count")]).sort_by([("item_id_count", "descending")])
    who = counts["member_id"].to_pylist()[:members]
    items = corpus.items.filter(pc.equal(corpus.items["item_type"], "post")).sort_by([("created_at", "descending")])
    posts = items["item_id"].to_pylist()[:k]
    at = int(pc.max(inter["timestamp"]).as_py()) + 1
    return [{"task": "feed_like", "member": int(m), "candidates": posts, "at": at, "max_tokens": 1400} for m in who]


def bench_serve(model: str = "smollm2", world: str = "runs/quickstart/world", k: int = 50, members: int = 3,
                load_clients: int = 32, load_seconds: float = 30.0) -> dict:
    """Cache on vs off vs HF multi-item; with ``load_seconds`` > 0, also a load test on the cache-on server."""
    world_dir = Path(world)
    bodies = _requests(world_dir, k, members)
    result: dict = {"benchmark": "serve", "model": model, "candidates_per_request": k, "requests": len(bodies),
                    "runs": {}}
    prompt_tokens = []
    for caching in (True, False):
        proc, url = start_serve(model, "--corpus", str(world_dir), "--api-key", KEY, "--max-model-len", "2048",
                                "--prefix-caching" if caching else "--no-prefix-caching")
        try:
            headers = {"Authorization": f"Bearer {KEY}"}
            start = time.perf_counter()
            for body in bodies:
                resp = httpx.post(f"{url}/v1/rank", json=body, headers=headers, timeout=1800)
                resp.raise_for_status()
                prompt_tokens.append(resp.json()["prompt_tokens"])
            seconds = time.perf_counter() - start
            if caching and load_seconds > 0:
                from recbrew.serve.load import run_load

                result["load"] = run_load(f"{url}/v1/rank", lambda i: bodies[i % len(bodies)], load_clients,
                                          load_seconds, headers)
        finally:
            stop_serve(proc)
        result["runs"]["vllm_prefix_cache_on" if caching else "vllm_prefix_cache_off"] = {
            "seconds": round(seconds, 2), "candidates_per_s": round(k * len(bodies) / seconds, 2)}
    result["mean_prompt_tokens"] = round(float(np.mean(prompt_tokens)), 1)
    result["runs"]["hf_multi_item"] = _hf(model, world_dir, bodies, k)
    on, off = result["runs"]["vllm_prefix_cache_on"], result["runs"]["vllm_prefix_cache_off"]
    hf = result["runs"]["hf_multi_item"]
    result["ratios"] = {"cache_on_vs_off": round(on["candidates_per_s"] / off["candidates_per_s"], 2),
                        "vllm_cache_on_vs_hf_multi": round(on["candidates_per_s"] / hf["candidates_per_s"], 2)}
    return result


def _hf(model: str, world: Path, bodies: list[dict], k: int) -> dict:
    from recbrew.models.loading import load_model, resolve
    from recbrew.scoring.hf import HFScorer
    from recbrew.serve.protocol import RankRequest
    from recbrew.serve.ranker import RankService

    svc = RankService(engine_url="", engine_key="", served_model="", model_dir=resolve(model), corpus_dir=world)
    lm, tok = load_model(model, device="cpu")
    scorer = HFScorer(lm, tok, mode="multi")
    rows = []
    for body in bodies:
        task, p = svc.prompt(RankRequest(**body))
        rows.append({"prefix": p.prefix, "segments": p.segments, "task": task.name, "kind": task.kind.value})
    start = time.perf_counter()
    scorer.score(rows)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "candidates_per_s": round(k * len(rows) / seconds, 2)}
