"""Per-candidate scores for the user's own analysis, and a few example rankings for the report, in the user's ids.

``scores.csv`` holds one row per test candidate: ``request_id``, ``task``, ``member_id``, ``item_id``, ``label``
and one column per model (P(positive), empty where a model gave none). Member and item ids are the user's own
(text ids that `data import` mapped are written back as text).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from recbrew.data.ids import ITEM, MEMBER, IdMap
from recbrew.data.io import write_table
from recbrew.eval.table import RequestTable

SCORES_FILE = "scores.csv"
#: How many example rankings the report shows (the first rankable request of each task, up to this many).
EXAMPLE_RANKINGS = 4


def write_scores(path: str | Path, table: RequestTable, scores: Mapping[str, np.ndarray], ids: IdMap) -> Path:
    """Write ``scores.csv`` (atomically) and return its path."""
    per_candidate = table.request
    columns = {
        "request_id": pa.array(table.request_ids[per_candidate].tolist(), pa.string()),
        "task": pa.array(table.task[per_candidate].tolist(), pa.string()),
        "member_id": _id_column(ids, MEMBER, table.member[per_candidate]),
        "item_id": _id_column(ids, ITEM, table.item),
        "label": pa.array(table.labels),
    }
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        columns[name] = pa.array(values, mask=np.isnan(values))
    write_table(pa.table(columns), Path(path))
    return Path(path)


def _id_column(ids: IdMap, space: str, values: np.ndarray) -> pa.Array:
    if not ids.mapped(space):
        return pa.array(values.astype(np.int64))
    return pa.array([str(v) for v in ids.users(space, values)], pa.string())


def example_rankings(table: RequestTable, scores: Mapping[str, np.ndarray], ids: IdMap, k: int) -> list[dict]:
    """One request of each task (up to :data:`EXAMPLE_RANKINGS`; the first with a positive and a negative, else the
    first with candidates): its member, its positives and each model's top-``k`` items, in the user's ids."""
    out, seen = [], set()
    sizes = np.diff(table.offsets)
    positives = np.bincount(table.request, weights=table.labels > 0, minlength=len(table))
    telling = table.rankable & (sizes >= 2) & (positives > 0) & (positives < sizes)
    # requests with a positive and a negative among several candidates first: they show what a ranking does
    for i in np.r_[np.flatnonzero(telling), np.flatnonzero(table.rankable & ~telling)]:
        task = str(table.task[i])
        if task in seen or len(out) >= EXAMPLE_RANKINGS:
            continue
        seen.add(task)
        lo, hi = table.offsets[i], table.offsets[i + 1]
        items = ids.users(ITEM, table.item[lo:hi])
        labels = table.labels[lo:hi]
        tops = {}
        for name, values in scores.items():
            s = np.asarray(values[lo:hi], dtype=np.float64)
            if np.isnan(s).all():
                continue
            order = np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")[:k]
            tops[name] = [items[j] for j in order]
        out.append({"request_id": str(table.request_ids[i]), "task": task,
                    "member": ids.user(MEMBER, int(table.member[i])), "candidates": hi - lo,
                    "positives": [items[j] for j in np.flatnonzero(labels > 0)], "top": tops})
    return out
