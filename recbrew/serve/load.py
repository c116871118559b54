"""A bounded load test: N concurrent clients post requests for T seconds; latency percentiles and errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import numpy as np


async def _run(url: str, make_body: Callable[[int], dict], clients: int, seconds: float, headers: dict) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    candidates = 0
    deadline = time.monotonic() + seconds

    async def worker(wid: int, client: httpx.AsyncClient) -> None:
        nonlocal candidates
        n = 0
        while time.monotonic() < deadline:
            body = make_body(wid * 1_000_003 + n)
            n += 1
            start = time.perf_counter()
            try:
                resp = await client.post(url, json=body, headers=headers, timeout=300)
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - start)
            if resp.status_code != 200:
                errors.append(f"{resp.status_code}: {resp.text[:200]}")
            else:
                candidates += len(resp.json().get("results", []))

    began = time.perf_counter()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(worker(i, client) for i in range(clients)))
    wall = time.perf_counter() - began
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {"clients": clients, "seconds": round(wall, 2), "requests": len(latencies), "errors": len(errors),
            "first_errors": errors[:3], "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1),
            "requests_per_s": round(len(latencies) / wall, 2), "candidates_per_s": round(candidates / wall, 2)}


def run_load(url: str, make_body: Callable[[int], dict], clients: int = 32, seconds: float = 30.0,
             headers: dict | None = None) -> dict:
    """Post ``make_body(i)`` from ``clients`` concurrent clients for ``seconds``; always stops on its own."""
    return asyncio.run(_run(url, make_body, clients, seconds, headers or {}))
