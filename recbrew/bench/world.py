"""Throughput and memory of world generation, each size measured in its own process."""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = """
import json, resource, sys, tempfile, time
from recbrew.world import WorldConfig, generate_world
members, days, seed = (int(a) for a in sys.argv[1:4])
with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    card = generate_world(WorldConfig(members=members, days=days, seed=seed), tmp + "/world", progress=False)
    seconds = time.perf_counter() - start
print(json.dumps({"members": members, "days": days, "seconds": round(seconds, 3),
                  "impressions": card["sizes"]["interactions"],
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def run_size(members: int, days: int, seed: int = 0) -> dict:
    """Generate one world in a fresh interpreter; returns its time, size and peak RSS."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(members), str(days), str(seed)],
                          capture_output=True, text=True, check=True)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["members_per_s"] = round(members * days / row["seconds"], 1)  # member-days simulated per second
    row["impressions_per_s"] = round(row["impressions"] / row["seconds"], 1)
    return row


def bench_world(members: int, days: int, scale: int, seed: int = 0) -> dict:
    """Time and peak memory at a base size, at ``scale``x the days, and at ``scale``x the members."""
    base = run_size(members, days, seed)
    more_days = run_size(members, days * scale, seed)
    more_members = run_size(members * scale, days, seed)
    return {
        "benchmark": "world",
        "runs": {"base": base, f"days_x{scale}": more_days, f"members_x{scale}": more_members},
        "ratios": {
            "scale": scale,
            # Near-linear time: these stay close to `scale`.
            "time_days": round(more_days["seconds"] / base["seconds"], 2),
            "time_members": round(more_members["seconds"] / base["seconds"], 2),
            # Per-impression cost relative to the base run: close to 1 means linear.
            "impressions_per_s_days": round(more_days["impressions_per_s"] / base["impressions_per_s"], 2),
            "impressions_per_s_members": round(more_members["impressions_per_s"] / base["impressions_per_s"], 2),
            # Flat memory over days: close to 1.
            "peak_rss_days": round(more_days["peak_rss_mib"] / base["peak_rss_mib"], 2),
            "peak_rss_members": round(more_members["peak_rss_mib"] / base["peak_rss_mib"], 2),
        },
    }
