"""Requests of a simulated day in the baselines' structured form, built from the world's state in memory.

A request is one visit: the member, the surface (its task), the candidates in slot order, and the
member's actions before the day (their history). Serving and training use the same features as of
the start of the day, the way a daily batch ranker sees them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recbrew.data.schema import NO_ACTION
from recbrew.examples.build import ITEM_FEATURES, MEMBER_FEATURES
from recbrew.world.config import DAY, WORLD_START

#: Item columns kept from the world's item tables: the structured view's candidate fields and the item store's.
ITEM_COLUMNS = ("item_id", "item_type", "title", "topic", "function", "industry", "location", "seniority", "company",
                "format", "remote", "ref_id", "created_at")
#: History steps kept per member (the ranker reads the last ``history_len`` of them).
HISTORY_KEPT = 50


def task_of(surface: str) -> str:
    """The ranker's task for a surface: any action of the surface."""
    return f"{surface}_engage"


class RowBuilder:
    """Member profiles, item attributes and member histories of a running world, as request columns."""

    def __init__(self, members: pa.Table):
        n = members.num_rows
        self.member_attr = {f: np.array(members[f].to_pylist() if f in members.column_names else [None] * n,
                                        dtype=object) for f in MEMBER_FEATURES}
        self.members = members.select([c for c in ("member_id", "school") if c in members.column_names])
        self.item_attr = {f: np.zeros(0, dtype=object) for f in ITEM_FEATURES}
        self.items: list[pa.Table] = []
        self.history: dict[int, list[tuple[int, str, str, int]]] = {}

    def add_items(self, tables: list[pa.Table]) -> None:
        """New items (ids continue the store's numbering, so the attribute arrays are indexed by item id)."""
        for t in tables:
            t = t.select(list(ITEM_COLUMNS))
            ids = t["item_id"].to_numpy()
            size = max(int(ids.max()) + 1 if len(ids) else 0, len(self.item_attr["item_type"]))
            for f in ITEM_FEATURES:
                col = self.item_attr[f]
                if len(col) < size:
                    col = np.concatenate([col, np.full(size - len(col), None, dtype=object)])
                col[ids] = np.array(t[f].to_pylist(), dtype=object)
                self.item_attr[f] = col
            self.items.append(t)

    def items_table(self) -> pa.Table:
        self.items = [pa.concat_tables(self.items)] if len(self.items) > 1 else self.items
        return self.items[0]

    def add_history(self, interactions: pa.Table) -> None:
        """Fold a day's actions (impressions with an action) into the members' histories, in time order."""
        action = interactions["action"].to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(action != NO_ACTION)
        if not len(rows):
            return
        t = interactions.take(rows).sort_by([("timestamp", "ascending"), ("impression_id", "ascending")])
        for m, i, a, s, ts in zip(t["member_id"].to_pylist(), t["item_id"].to_pylist(), t["action"].to_pylist(),
                                  t["surface"].to_pylist(), t["timestamp"].to_pylist(), strict=True):
            h = self.history.setdefault(m, [])
            h.append((i, a, s, ts))
            if len(h) > 2 * HISTORY_KEPT:
                del h[:-HISTORY_KEPT]

    def columns(self, surface: str, day: int, who: np.ndarray, item: np.ndarray, visit: np.ndarray,
                labels: np.ndarray | None = None) -> dict[str, list]:
        """One request per visit (candidates contiguous per visit, in slot order) as structured columns."""
        n = len(who)
        cols: dict[str, list] = {k: [] for k in (
            "task", "kind", "surface", "member_id", "timestamp", "candidate_ids", "labels", "hist_item_ids",
            "hist_actions", "hist_surfaces", "hist_timestamps", *(f"member_{f}" for f in MEMBER_FEATURES),
            *(f"cand_{f}" for f in ITEM_FEATURES))}
        if n == 0:
            return cols
        starts = np.flatnonzero(np.r_[True, visit[1:] != visit[:-1]])
        ends = np.r_[starts[1:], n]
        members = who[starts]
        task, ts = task_of(surface), WORLD_START + day * DAY
        lab = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        items = item.tolist()
        labs = lab.tolist()
        for s, e, m in zip(starts.tolist(), ends.tolist(), members.tolist(), strict=True):
            h = self.history.get(m, [])[-HISTORY_KEPT:]
            cols["candidate_ids"].append(items[s:e])
            cols["labels"].append(labs[s:e])
            cols["hist_item_ids"].append([x[0] for x in h])
            cols["hist_actions"].append([x[1] for x in h])
            cols["hist_surfaces"].append([x[2] for x in h])
            cols["hist_timestamps"].append([x[3] for x in h])
        v = len(starts)
        cols["task"], cols["kind"], cols["surface"] = [task] * v, ["binary"] * v, [surface] * v
        cols["member_id"], cols["timestamp"] = members.tolist(), [ts] * v
        for f in MEMBER_FEATURES:
            cols[f"member_{f}"] = self.member_attr[f][members].tolist()
        for f in ITEM_FEATURES:
            values = self.item_attr[f][item]
            cols[f"cand_{f}"] = [values[s:e].tolist() for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        return cols


def concat_columns(parts: list[dict[str, list]]) -> dict[str, list]:
    """Several column dicts as one (requests appended)."""
    parts = [p for p in parts if p and p.get("task")]
    if not parts:
        return {}
    return {k: [v for p in parts for v in p[k]] for k in parts[0]}


def sample_requests(days: list[dict[str, list]], fraction: float, seed: int) -> list[dict[str, list]]:
    """A seeded random ``fraction`` of each day's requests (at least one of a non-empty day), in their order."""
    rng = np.random.default_rng(seed)
    out = []
    for cols in days:
        n = len(cols.get("task", ()))
        if not n:
            continue
        keep = np.sort(rng.choice(n, max(1, round(fraction * n)), replace=False)).tolist()
        out.append({k: [v[i] for i in keep] for k, v in cols.items()})
    return out
